# -*- test-case-name: tests.test_smtp -*-
"""
The ESMTP server protocol: greeting, EHLO/HELO, STARTTLS and the session
commands that need no mail transaction.

Ours, on L{gateway.protocol.LineProtocol}: Twisted's C{ESMTP} processes
commands pipelined after STARTTLS (CVE-2011-0411), does not reset the session
after the upgrade (RFC 3207 section 4.2), and turns the rest of a message
into commands after an over-long DATA line
(../shared/notes/twisted-mail-gaps.md section 3).
"""

from __future__ import annotations

from typing import Any

from gateway.auth.realm import IAuthenticatedUser
from gateway.auth.sasl.exchange import LoggedIn, Outcome
from gateway.protocol import ConnectionLimitingFactory, LineProtocol


class SMTPServer(LineProtocol):
    """One ESMTP connection."""

    service_name = "smtp"

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.helo: bytes | None = None
        self.esmtp = False

    def idle_timeout(self) -> float:
        return self.context.limits.idle_timeout_smtp

    def reply(self, code: int, enhanced: str | None, text: str, *more: str) -> None:
        """Send a (possibly multi-line) reply with its RFC 3463 code."""
        lines = [text, *more]
        for i, item in enumerate(lines):
            sep = "-" if i < len(lines) - 1 else " "
            prefix = f"{code}{sep}"
            body = f"{enhanced} {item}" if enhanced else item
            self.sendLine((prefix + body).encode("utf-8"))

    def reply_shutdown(self) -> None:
        self.reply(421, "4.3.2", f"{self.context.hostname} shutting down")

    def reply_busy(self) -> None:
        self.reply(421, "4.7.0", f"{self.context.hostname} too many connections, try again later")

    def reply_line_too_long(self) -> None:
        self.reply(500, "5.5.6", "line too long, closing connection")

    def reply_timeout(self) -> None:
        self.reply(421, "4.4.2", f"{self.context.hostname} idle timeout, closing connection")

    def greet(self) -> None:
        self.reply(220, None, f"{self.context.hostname} ESMTP mailgateway")

    def tls_started(self) -> None:
        # RFC 3207 section 4.2: forget everything learnt before TLS.
        self.helo = None
        self.esmtp = False

    def extensions(self) -> list[str]:
        exts = [f"SIZE {self.context.limits.max_message_size}", "ENHANCEDSTATUSCODES"]
        if self.can_start_tls:
            exts.append("STARTTLS")
        mechanisms = self.offered_mechanisms()
        if mechanisms:
            exts.append("AUTH " + " ".join(mechanisms))
        return exts

    def line_received(self, line: bytes) -> Any:
        verb, _, rest = line.partition(b" ")
        handler = self.handler_for(verb)
        if handler is None:
            if not self.count_bad_command():
                self.reply(500, "5.5.2", "command not recognized")
            return None
        return handler(rest.strip())

    def do_EHLO(self, arg: bytes) -> None:
        if not arg:
            self.reply(501, "5.5.4", "EHLO needs a domain or address literal")
            return
        self.helo = arg
        self.esmtp = True
        peer = self.peer
        self.reply(250, None, f"{self.context.hostname} greets {peer}", *self.extensions())

    def do_HELO(self, arg: bytes) -> None:
        if not arg:
            self.reply(501, "5.5.4", "HELO needs a domain")
            return
        self.helo = arg
        self.esmtp = False
        self.reply(250, None, f"{self.context.hostname}")

    def do_STARTTLS(self, arg: bytes) -> None:
        if arg:
            self.reply(501, "5.5.4", "STARTTLS takes no parameters")
        elif self.encrypted:
            self.reply(503, "5.5.1", "already under TLS")
        elif not self.can_start_tls:
            self.reply(502, "5.5.1", "STARTTLS not available on this listener")
        else:
            self.reply(220, "2.0.0", "Ready to start TLS")
            self.start_tls()

    def do_AUTH(self, arg: bytes) -> None:
        # RFC 4954 section 4.
        if not self.esmtp:
            self.reply(503, "5.5.1", "EHLO first")
            return
        if self.account is not None:
            self.reply(503, "5.5.1", "already authenticated")
            return
        if not arg:
            self.reply(501, "5.5.4", "AUTH needs a mechanism name")
            return
        name, _, initial = arg.partition(b" ")
        refused = self.start_sasl(
            name, initial.strip() or None,
            lambda data: self.sendLine(b"334 " + data),
            self._auth_finished, IAuthenticatedUser,
        )
        if refused == "encryption-required":
            self.reply(538, "5.7.11", "encryption required for requested authentication mechanism")
        elif refused:
            self.reply(504, "5.5.4", "unrecognized authentication type")

    def _auth_finished(self, outcome: Outcome) -> None:
        if isinstance(outcome, LoggedIn):
            self.reply(235, "2.7.0", "authentication successful")
            return
        if outcome.temporary:
            self.reply(454, "4.7.0", "temporary authentication failure")
        elif outcome.cancelled:
            self.reply(501, "5.7.0", "authentication cancelled")
        elif outcome.malformed:
            self.reply(501, "5.5.2", "cannot decode response")
        else:
            self.reply(535, "5.7.8", "authentication credentials invalid")
        if self.too_many_auth_failures:
            self.reply(421, "4.7.0", f"{self.context.hostname} too many authentication failures")
            self.transport.loseConnection()

    def do_NOOP(self, arg: bytes) -> None:
        self.reply(250, "2.0.0", "OK")

    def do_RSET(self, arg: bytes) -> None:
        self.reply(250, "2.0.0", "OK")

    def do_QUIT(self, arg: bytes) -> None:
        self.reply(221, "2.0.0", f"{self.context.hostname} closing connection")
        self.transport.loseConnection()


class SMTPFactory(ConnectionLimitingFactory):
    protocol_class = SMTPServer
