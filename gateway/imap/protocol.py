# -*- test-case-name: tests.test_imap -*-
"""
The IMAP server protocol: command assembly (literals, LITERAL+), the
not-authenticated state (CAPABILITY, STARTTLS, LOGIN, AUTHENTICATE with
SASL-IR) and the TLS upgrade.

The wire layer is ours, on L{gateway.protocol.LineProtocol}: Twisted's
C{IMAP4Server} processes commands sent after STARTTLS in the same segment
(command injection), decides LOGINDISABLED and the SASL list wrongly on
implicit-TLS listeners, accepts literals of any size, cannot parse escaped
quotes in LOGIN, and echoes internal error text
(../shared/notes/twisted-mail-gaps.md section 2).  The mailbox commands of
the authenticated state come with the store.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.auth.realm import IAuthenticatedUser
from gateway.auth.sasl.exchange import LoggedIn, Outcome
from gateway.imap.parser import ParseError, literal_at_end, tokenize
from gateway.protocol import ConnectionLimitingFactory, LineProtocol

_TAG = re.compile(rb"^[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c\x7d\x7e]+$")  # RFC 3501 tag
#: Literals before login carry only names and passwords.
PREAUTH_LITERAL_LIMIT = 8192


class IMAPServer(LineProtocol):
    """One IMAP connection."""

    service_name = "imap"

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.state = "NOT-AUTHENTICATED"
        self._pieces: list[bytes | bytearray] = []
        self._tag: bytes | None = None
        self._literal_left = 0
        self._literal: bytearray | None = None

    def idle_timeout(self) -> float:
        if self.state == "NOT-AUTHENTICATED":
            return self.context.limits.idle_timeout_imap_preauth
        return self.context.limits.idle_timeout_imap

    # Replies

    def untagged(self, text: str | bytes) -> None:
        if isinstance(text, str):
            text = text.encode("utf-8")
        self.sendLine(b"* " + text)

    def tagged(self, tag: bytes, status: str, text: str) -> None:
        self.sendLine(tag + b" " + status.encode("ascii") + b" " + text.encode("utf-8"))

    def reply_shutdown(self) -> None:
        self.untagged("BYE [UNAVAILABLE] server shutting down")

    def reply_busy(self) -> None:
        self.untagged("BYE [UNAVAILABLE] too many connections, try again later")

    def reply_line_too_long(self) -> None:
        self.untagged("BYE [TOOBIG] line too long")

    def reply_timeout(self) -> None:
        self.untagged("BYE idle timeout")

    def capabilities(self) -> list[str]:
        caps = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE"]
        if self.state == "NOT-AUTHENTICATED":
            if self.can_start_tls:
                caps.append("STARTTLS")
            if not self.plaintext_allowed or self.context.backend is None:
                caps.append("LOGINDISABLED")
            caps += [f"AUTH={name}" for name in self.offered_mechanisms()]
        return caps

    def greet(self) -> None:
        self.untagged(
            f"OK [CAPABILITY {' '.join(self.capabilities())}] "
            f"{self.context.hostname} IMAP4rev1 ready"
        )

    # Command assembly

    def line_received(self, line: bytes) -> Any:
        if self._tag is None:
            tag, _, rest = line.partition(b" ")
            if not _TAG.match(tag):
                if not self.count_bad_command():
                    self.untagged("BAD invalid tag")
                return None
            self._tag = tag
            line = rest
        announced = literal_at_end(line)
        if announced is None:
            self._pieces.append(line)
            pieces, tag = self._pieces, self._tag
            self._pieces, self._tag = [], None
            return self.dispatch(tag, pieces)
        text, literal = announced
        limit = (PREAUTH_LITERAL_LIMIT if self.state == "NOT-AUTHENTICATED"
                 else self.context.limits.max_message_size)
        tag = self._tag
        if literal.size > limit:
            self._pieces, self._tag = [], None
            if literal.non_synchronizing:
                # RFC 7888 section 4: the data is on its way; close instead
                # of reading it.
                self.untagged("BYE [TOOBIG] literal too large")
                self.transport.loseConnection()
            else:
                self.tagged(tag, "NO", "[TOOBIG] literal too large")
            return None
        self._pieces.append(text)
        if not literal.non_synchronizing:
            self.sendLine(b"+ Ready for literal data")
        self._literal = bytearray()
        self._literal_left = literal.size
        if literal.size == 0:
            self._literal_done(b"")
        else:
            self.setRawMode()
        return None

    def rawDataReceived(self, data: bytes) -> None:
        assert self._literal is not None
        take = data[: self._literal_left]
        self._literal += take
        self._literal_left -= len(take)
        if self._literal_left == 0:
            self._literal_done(data[len(take):])

    def _literal_done(self, rest: bytes) -> None:
        assert self._literal is not None
        self._pieces.append(self._literal)
        self._literal = None
        self.setLineMode(rest)

    def dispatch(self, tag: bytes, pieces: list[bytes | bytearray]) -> Any:
        first = pieces[0] if pieces and isinstance(pieces[0], bytes) else b""
        verb, _, rest = first.partition(b" ")
        handler = self.handler_for(verb)
        if handler is None:
            if not self.count_bad_command():
                self.tagged(tag, "BAD", "unknown command")
            return None
        try:
            args = tokenize([rest, *pieces[1:]])
        except ParseError as e:
            if not self.count_bad_command():
                self.tagged(tag, "BAD", str(e))
            return None
        return handler(tag, args)

    # Any state

    def do_CAPABILITY(self, tag: bytes, args: list[bytes]) -> None:
        self.untagged("CAPABILITY " + " ".join(self.capabilities()))
        self.tagged(tag, "OK", "CAPABILITY completed")

    def do_NOOP(self, tag: bytes, args: list[bytes]) -> None:
        self.tagged(tag, "OK", "NOOP completed")

    def do_LOGOUT(self, tag: bytes, args: list[bytes]) -> None:
        self.untagged("BYE logging out")
        self.tagged(tag, "OK", "LOGOUT completed")
        self.transport.loseConnection()

    # Not authenticated

    def do_STARTTLS(self, tag: bytes, args: list[bytes]) -> None:
        if self.state != "NOT-AUTHENTICATED" or self.encrypted:
            self.tagged(tag, "BAD", "STARTTLS not allowed now (already under TLS or authenticated)")
        elif not self.can_start_tls:
            self.tagged(tag, "BAD", "STARTTLS not available on this listener")
        else:
            self.tagged(tag, "OK", "Begin TLS negotiation now")
            self.start_tls()

    def do_LOGIN(self, tag: bytes, args: list[bytes]) -> Any:
        if self.state != "NOT-AUTHENTICATED":
            self.tagged(tag, "BAD", "already authenticated")
            return None
        if len(args) != 2:
            self.tagged(tag, "BAD", "LOGIN needs a user name and a password")
            return None
        if not self.plaintext_allowed or self.context.backend is None:
            # RFC 3501 section 6.2.3 (LOGINDISABLED), RFC 5530 PRIVACYREQUIRED.
            self.tagged(tag, "NO", "[PRIVACYREQUIRED] LOGIN is disabled before TLS; use STARTTLS")
            return None
        d = self.login_password(args[0], args[1], IAuthenticatedUser)
        d.addCallback(self._login_finished, tag)
        return self.serialize(d)

    def do_AUTHENTICATE(self, tag: bytes, args: list[bytes]) -> None:
        if self.state != "NOT-AUTHENTICATED":
            self.tagged(tag, "BAD", "already authenticated")
            return
        if len(args) not in (1, 2):
            self.tagged(tag, "BAD", "AUTHENTICATE needs a mechanism name")
            return
        refused = self.start_sasl(
            args[0], args[1] if len(args) == 2 else None,
            lambda data: self.sendLine(b"+ " + data),
            lambda outcome: self._login_finished(outcome, tag),
            IAuthenticatedUser,
        )
        if refused == "encryption-required":
            self.tagged(tag, "NO", "[PRIVACYREQUIRED] plain-text mechanism refused before TLS")
        elif refused:
            self.tagged(tag, "NO", "unsupported authentication mechanism")

    def _login_finished(self, outcome: Outcome, tag: bytes) -> None:
        if isinstance(outcome, LoggedIn):
            self.state = "AUTHENTICATED"
            self.setTimeout(self.idle_timeout())
            self.tagged(tag, "OK", f"[CAPABILITY {' '.join(self.capabilities())}] logged in")
            return
        if outcome.temporary:
            self.tagged(tag, "NO", "[UNAVAILABLE] temporary authentication failure, try again later")
        elif outcome.cancelled:
            self.tagged(tag, "BAD", "authentication cancelled")
        elif outcome.malformed:
            self.tagged(tag, "BAD", "invalid base64 in authentication data")
        else:
            self.tagged(tag, "NO", "[AUTHENTICATIONFAILED] authentication failed")
        if self.too_many_auth_failures:
            self.untagged("BYE too many authentication failures")
            self.transport.loseConnection()


class IMAPFactory(ConnectionLimitingFactory):
    protocol_class = IMAPServer
