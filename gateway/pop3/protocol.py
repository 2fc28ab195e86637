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
from typing import Any, Callable

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
        self.send(OK, b"POP3 server ready " + self.apop_timestamp)

    # Dispatch

    def line_received(self, line: bytes) -> Any:
        verb, _, rest = line.partition(b" ")
        try:
            name = verb.decode("ascii").upper()
        except UnicodeDecodeError:
            name = ""
        handler: Callable[[bytes], Any] | None = getattr(self, f"do_{name}", None) if name.isalpha() else None
        if handler is None:
            if not self.count_bad_command():
                self.send(ERR, "unknown command")
            return None
        return handler(rest)

    def capabilities(self) -> list[bytes]:
        """RFC 2449 section 6: what is true now."""
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.state == "AUTHORIZATION":
            if self.plaintext_allowed:
                caps.append(b"USER")
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
