# -*- test-case-name: tests.test_pop3 -*-
"""
The POP3 server protocol.

Written on L{gateway.protocol.LineProtocol} rather than as a subclass of
C{twisted.mail.pop3.POP3}: Twisted's class has no STLS, handles only
one-step AUTH, compares APOP digests as str against bytes, leaks exception
text to clients and logs tracebacks for client errors
(../shared/notes/twisted-mail-gaps.md section 1).  Overriding all of that
would leave little of it; the protocol itself is small.

This module knows the AUTHORIZATION state and the TLS upgrade; the mailbox
commands of the TRANSACTION state come with the store.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from gateway.auth.checkers import APOPCredentials, TemporarilyRefused
from gateway.auth.realm import IAuthenticatedUser
from gateway.auth.sasl.exchange import LoggedIn, Outcome, Refused
from gateway.protocol import ConnectionLimitingFactory, LineProtocol

OK = b"+OK"
ERR = b"-ERR"


class POP3Server(LineProtocol):
    """One POP3 connection."""

    service_name = "pop"

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.state = "AUTHORIZATION"
        self.apop_timestamp = b""
        self.user: bytes | None = None

    def idle_timeout(self) -> float:
        return self.context.limits.idle_timeout_pop3

    # Replies

    def send(self, status: bytes, text: str | bytes = b"") -> None:
        if isinstance(text, str):
            text = text.encode("utf-8")
        self.sendLine(status + (b" " + text if text else b""))

    def reply_shutdown(self) -> None:
        self.send(ERR, "[SYS/TEMP] server shutting down")

    def reply_busy(self) -> None:
        self.send(ERR, "[SYS/TEMP] too many connections, try again later")

    def reply_line_too_long(self) -> None:
        self.send(ERR, "line too long")

    def reply_timeout(self) -> None:
        self.send(ERR, "idle timeout, closing connection")

    def greet(self) -> None:
        # RFC 1939 section 7: the APOP timestamp must be unique per greeting;
        # it comes from the CSPRNG and names no process id.
        self.apop_timestamp = b"<%d.%s@%s>" % (
            int(time.time()),
            secrets.token_hex(8).encode("ascii"),
            self.context.hostname.encode("idna"),
        )
        if self.apop_enabled:
            self.send(OK, b"POP3 server ready " + self.apop_timestamp)
        else:
            self.send(OK, b"POP3 server ready")

    @property
    def apop_enabled(self) -> bool:
        return "APOP" in self.context.mechanisms and self.context.backend is not None

    # Dispatch

    def line_received(self, line: bytes) -> Any:
        verb, _, rest = line.partition(b" ")
        handler = self.handler_for(verb)
        if handler is None:
            if not self.count_bad_command():
                self.send(ERR, "unknown command")
            return None
        return handler(rest)

    def capabilities(self) -> list[bytes]:
        """RFC 2449 section 6: what is true now."""
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.state == "AUTHORIZATION":
            if self.plaintext_allowed and self.context.backend is not None:
                caps.append(b"USER")
            mechanisms = self.offered_mechanisms()
            if mechanisms:
                caps.append(b"SASL " + " ".join(mechanisms).encode("ascii"))
            if self.can_start_tls:
                caps.append(b"STLS")
        caps.append(b"IMPLEMENTATION mailgateway")
        return caps

    def do_CAPA(self, rest: bytes) -> None:
        self.send(OK, "Capability list follows")
        for cap in self.capabilities():
            self.sendLine(cap)
        self.sendLine(b".")

    def do_STLS(self, rest: bytes) -> None:
        # RFC 2595 section 4: only in AUTHORIZATION, never twice.
        if self.state != "AUTHORIZATION":
            self.send(ERR, "STLS only before authentication")
        elif self.encrypted:
            self.send(ERR, "already under TLS")
        elif not self.can_start_tls:
            self.send(ERR, "STLS not available on this listener")
        else:
            self.send(OK, "Begin TLS negotiation")
            self.start_tls()

    def tls_started(self) -> None:
        # RFC 2595 section 4: forget a USER given before the upgrade.
        self.user = None

    # Authentication (RFC 1939 section 7, RFC 5034, RFC 2449 response codes)

    def _in_authorization(self) -> bool:
        if self.state != "AUTHORIZATION":
            self.send(ERR, "already authenticated")
            return False
        return True

    def do_USER(self, rest: bytes) -> None:
        if not self._in_authorization():
            return
        if not self.plaintext_allowed:
            self.send(ERR, "[AUTH] plain-text login refused before TLS; use STLS")
            return
        if not rest.strip() or self.context.backend is None:
            self.send(ERR, "USER needs a name")
            return
        self.user = rest.strip()
        self.send(OK, "send PASS")

    def do_PASS(self, rest: bytes) -> Any:
        if not self._in_authorization():
            return None
        if not self.plaintext_allowed:
            self.send(ERR, "[AUTH] plain-text login refused before TLS; use STLS")
            return None
        if self.user is None:
            self.send(ERR, "USER first")
            return None
        user, self.user = self.user, None
        d = self.login_password(user, rest, IAuthenticatedUser)
        d.addCallback(self._login_finished)
        return self.serialize(d)

    def do_APOP(self, rest: bytes) -> Any:
        if not self._in_authorization():
            return None
        parts = rest.split()
        if not self.apop_enabled or len(parts) != 2:
            self.send(ERR, "APOP needs a name and a digest" if self.apop_enabled
                      else "APOP not available")
            return None
        name, digest = parts
        credentials = APOPCredentials(name, self.apop_timestamp, digest.lower(), self.peer,
                                      self.context.is_trusted(self.peer))
        d = self.context.portal.login(credentials, None, IAuthenticatedUser)

        def ok(result: Any) -> Outcome:
            _, avatar, logout = result
            return LoggedIn(avatar.account, avatar, logout, "APOP")

        def refused(failure: Any) -> Outcome:
            return Refused(temporary=bool(failure.check(TemporarilyRefused)))

        d.addCallbacks(ok, refused).addCallback(self._authenticated)
        d.addCallback(self._login_finished)
        return self.serialize(d)

    def do_AUTH(self, rest: bytes) -> None:
        if not self._in_authorization():
            return
        if not rest.strip():
            # The RFC 1734 listing many clients still ask for.
            self.send(OK, "methods follow")
            for name in self.offered_mechanisms():
                self.sendLine(name.encode("ascii"))
            self.sendLine(b".")
            return
        name, _, initial = rest.strip().partition(b" ")
        refused = self.start_sasl(
            name, initial.strip() or None,
            lambda data: self.sendLine(b"+ " + data),
            self._login_finished, IAuthenticatedUser,
        )
        if refused == "encryption-required":
            self.send(ERR, "[AUTH] plain-text mechanism refused before TLS; use STLS")
        elif refused:
            self.send(ERR, "unsupported authentication mechanism")

    def _login_finished(self, outcome: Outcome) -> None:
        if isinstance(outcome, LoggedIn):
            self.state = "TRANSACTION"
            self.send(OK, "logged in")
            return
        if outcome.temporary:
            self.send(ERR, "[SYS/TEMP] temporary authentication failure, try again later")
        elif outcome.cancelled:
            self.send(ERR, "authentication cancelled")
        else:
            self.send(ERR, "[AUTH] authentication failed")
        if self.too_many_auth_failures:
            self.transport.loseConnection()

    def do_NOOP(self, rest: bytes) -> None:
        if self.state != "TRANSACTION":
            self.send(ERR, "not authenticated")
        else:
            self.send(OK)

    def do_QUIT(self, rest: bytes) -> None:
        self.send(OK, "bye")
        self.transport.loseConnection()


class POP3Factory(ConnectionLimitingFactory):
    protocol_class = POP3Server
