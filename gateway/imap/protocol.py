# -*- test-case-name: tests.test_imap -*-
"""
The IMAP server protocol: the not-authenticated state and the TLS upgrade.

The wire layer is ours, on L{gateway.protocol.LineProtocol}, for the
pre-authentication state: Twisted's C{IMAP4Server} processes commands sent
after STARTTLS in the same segment (command injection), decides LOGINDISABLED
and the SASL list wrongly on implicit-TLS listeners, and echoes internal error
text (../shared/notes/twisted-mail-gaps.md section 2).  Whether the
authenticated state reuses C{IMAP4Server}'s parser is the IMAP issue's
decision.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.protocol import ConnectionLimitingFactory, LineProtocol

_TAG = re.compile(rb"^[\x21\x23-\x27\x2c-\x5b\x5d-\x7a\x7c\x7e]+$")  # RFC 3501 tag chars


class IMAPServer(LineProtocol):
    """One IMAP connection."""

    service_name = "imap"

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.state = "NOT-AUTHENTICATED"

    def idle_timeout(self) -> float:
        if self.state == "NOT-AUTHENTICATED":
            return self.context.limits.idle_timeout_imap_preauth
        return self.context.limits.idle_timeout_imap

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
            if not self.plaintext_allowed:
                caps.append("LOGINDISABLED")
        return caps

    def greet(self) -> None:
        self.untagged(
            f"OK [CAPABILITY {' '.join(self.capabilities())}] "
            f"{self.context.hostname} IMAP4rev1 ready"
        )

    def line_received(self, line: bytes) -> Any:
        tag, _, rest = line.partition(b" ")
        if not _TAG.match(tag):
            if not self.count_bad_command():
                self.untagged("BAD invalid tag")
            return None
        verb, _, args = rest.partition(b" ")
        try:
            name = verb.decode("ascii").upper()
        except UnicodeDecodeError:
            name = ""
        handler = getattr(self, f"do_{name}", None) if name.isalpha() else None
        if handler is None:
            if not self.count_bad_command():
                self.tagged(tag, "BAD", "unknown command")
            return None
        return handler(tag, args)

    def do_CAPABILITY(self, tag: bytes, args: bytes) -> None:
        self.untagged("CAPABILITY " + " ".join(self.capabilities()))
        self.tagged(tag, "OK", "CAPABILITY completed")

    def do_NOOP(self, tag: bytes, args: bytes) -> None:
        self.tagged(tag, "OK", "NOOP completed")

    def do_LOGOUT(self, tag: bytes, args: bytes) -> None:
        self.untagged("BYE logging out")
        self.tagged(tag, "OK", "LOGOUT completed")
        self.transport.loseConnection()

    def do_STARTTLS(self, tag: bytes, args: bytes) -> None:
        if self.state != "NOT-AUTHENTICATED" or self.encrypted:
            self.tagged(tag, "BAD", "STARTTLS not allowed now (already under TLS or authenticated)")
        elif not self.can_start_tls:
            self.tagged(tag, "BAD", "STARTTLS not available on this listener")
        else:
            self.tagged(tag, "OK", "Begin TLS negotiation now")
            self.start_tls()


class IMAPFactory(ConnectionLimitingFactory):
    protocol_class = IMAPServer
