"""
Helpers for the IMAP conversation tests: a logged-in connection over a
L{gateway.testing.MemoryStore}, and messages to put in it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from gateway.imap.protocol import IMAPFactory
from tests.test_protocols import connect, lines

ALICE = "alice@example.edu"

SIMPLE = (b"From: Alice <alice@example.edu>\r\n"
          b"To: bob@example.edu\r\n"
          b"Subject: Hello\r\n"
          b"Date: Wed, 17 Jul 1996 02:23:25 -0700\r\n"
          b"Message-ID: <1@example.edu>\r\n"
          b"\r\n"
          b"Hello, world.\r\nSecond line.\r\n")

MULTIPART = (b"From: Bob <bob@example.edu>\r\n"
             b"To: alice@example.edu\r\n"
             b"Subject: Parts\r\n"
             b"MIME-Version: 1.0\r\n"
             b'Content-Type: multipart/mixed; boundary="b1"\r\n'
             b"\r\n"
             b"preamble\r\n"
             b"--b1\r\n"
             b"Content-Type: text/plain; charset=utf-8\r\n"
             b"\r\n"
             b"first part\r\n"
             b"--b1\r\n"
             b"Content-Type: message/rfc822\r\n"
             b"\r\n"
             b"Subject: inner\r\n"
             b"\r\n"
             b"inner body\r\n"
             b"--b1--\r\n")


def logged_in(messages: tuple[bytes, ...] = (), clock: Clock | None = None,
              **kw: Any) -> tuple[Any, Any, Any]:
    """
    An IMAP connection logged in as alice (implicit TLS), with C{messages}
    delivered to her INBOX first.

    @return: C{(protocol, transport, store)}.
    """
    clock = clock or Clock()
    clock.advance(1_000_000_000)
    proto, t = connect(IMAPFactory, "imap", tls="implicit", clock=clock, **kw)
    proto.handshakeCompleted()
    store = proto.context.extras["store"]
    for message in messages:
        store.deliver([ALICE], message)
    proto.dataReceived(b'L LOGIN alice@example.edu "correct horse"\r\n')
    reply = lines(t)
    assert reply[-1].startswith(b"L OK"), reply
    return proto, t, store


def send(proto: Any, t: Any, data: bytes) -> list[bytes]:
    """Feed C{data} (CRLF added) and return the reply lines."""
    proto.dataReceived(data + b"\r\n")
    return lines(t)


def selected(messages: tuple[bytes, ...] = (), readonly: bool = False,
             **kw: Any) -> tuple[Any, Any, Any]:
    proto, t, store = logged_in(messages, **kw)
    reply = send(proto, t, b"S EXAMINE INBOX" if readonly else b"S SELECT INBOX")
    assert reply[-1].startswith(b"S OK"), reply
    return proto, t, store
