"""
What an idle connection keeps in memory (issue 7: under 100 KiB per idle
logged-in IMAP connection; bench/imap_load.py measures it).  Asserted
structurally, never by timing or RSS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import lib
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import TLSProfile
from gateway.tls import ServerTLS
from tests.support import client_context, make_certs, memory_handshake

ALICE = "alice@example.test"


class TLSBufferTests(SynchronousTestCase):
    """OpenSSL keeps a read and a write buffer of about 17 KiB each per
    connection unless the context releases them while idle."""

    def setUp(self) -> None:
        self.certs = make_certs(Path(self.mktemp()).absolute(), "mail.example.edu",
                                "other.example.edu")

    def test_connections_release_their_buffers(self) -> None:
        server = ServerTLS(TLSProfile(name="main", certificate=self.certs.certificate,
                                      private_key=self.certs.key))
        conn = server.serverConnectionForTLS(object())
        # SSL_set_mode adds bits (none here) and returns the connection's
        # mode (pyOpenSSL has no getter and refuses to touch a used context).
        self.assertTrue(lib.SSL_set_mode(conn._ssl, 0) & SSL.MODE_RELEASE_BUFFERS)
        # And a connection so configured still completes a handshake.
        obj = memory_handshake(conn, client_context(self.certs.ca_certificate),
                               "mail.example.edu")
        self.assertIn(obj.version(), ("TLSv1.2", "TLSv1.3"))


class SharedViewTests(SynchronousTestCase):
    """
    A selected session's view of a folder: sessions that open it while it
    does not change share one list of its messages (100,000 messages are
    two lists of 800 KB each per session otherwise), and a change gives
    the changing session a list of its own, never altering what the others
    see before their next sync.
    """

    def setUp(self) -> None:
        from twisted.internet.defer import maybeDeferred
        from twisted.internet.task import Clock

        from gateway.store.maildir import MaildirStore
        clock = Clock()
        clock.advance(1_000_000_000)
        self.store = MaildirStore(self.mktemp(), run_in_thread=maybeDeferred, clock=clock,
                                  hostname="test.example")
        self.addCleanup(self.store.close)
        for i in range(5):
            self.successResultOf(self.store.deliver([ALICE], b"Subject: %d\r\n\r\nbody\r\n" % i))

    def open(self, readonly: bool = False) -> Any:
        return self.successResultOf(self.store.open_folder(ALICE, "INBOX", readonly))

    def test_sessions_share_the_messages(self) -> None:
        first, second, third = self.open(), self.open(), self.open(readonly=True)
        self.assertEqual([m.uid for m in first.messages()], [1, 2, 3, 4, 5])
        self.assertIs(first.messages(), second.messages())
        self.assertIs(first.messages(), third.messages())

    def test_a_change_is_not_shared(self) -> None:
        first, second = self.open(), self.open()
        before = list(second.messages())
        self.successResultOf(first.set_flags([2], ["\\Flagged"], "add"))
        self.assertIn("\\Flagged", first.messages()[1].flags)
        self.assertIsNot(first.messages(), second.messages())
        self.assertEqual(second.messages(), before)  # until it syncs
        changes = self.successResultOf(second.sync())
        self.assertEqual([m.uid for m in changes.flags], [2])
        self.assertIn("\\Flagged", second.messages()[1].flags)
        # A session opened after the change sees it, in a new shared list.
        third = self.open()
        self.assertIn("\\Flagged", third.messages()[1].flags)
        self.assertIsNot(third.messages(), before)

    def test_recent_goes_to_the_first_session(self) -> None:
        first = self.open()
        self.assertEqual(first.recent, frozenset({1, 2, 3, 4, 5}))
        self.assertEqual(self.open().recent, frozenset())
        self.successResultOf(self.store.deliver([ALICE], b"Subject: 6\r\n\r\nbody\r\n"))
        self.successResultOf(first.sync())
        self.assertEqual(first.recent, frozenset({1, 2, 3, 4, 5, 6}))


class SequenceSetTests(SynchronousTestCase):
    """The messages a set names are produced lazily (no set or list of a
    whole big folder per FETCH), still each once and in order."""

    def setUp(self) -> None:
        from tests.imap_support import SIMPLE, selected
        self.proto, self.t, _ = selected((SIMPLE,) * 5)

    def fetched(self, command: bytes) -> list[bytes]:
        from tests.imap_support import send
        reply = send(self.proto, self.t, command)
        self.assertTrue(reply[-1].startswith(b"F OK"), reply)
        return [line.split(b" FETCH ")[0][2:] + b" " + line.split(b"(")[1].split(b")")[0]
                for line in reply[:-1] if b" FETCH (" in line]

    def test_overlapping_and_reversed_ranges(self) -> None:
        self.assertEqual(self.fetched(b"F FETCH 4,1:2,2,5:4,2:1 (UID)"),
                         [b"1 UID 1", b"2 UID 2", b"4 UID 4", b"5 UID 5"])

    def test_uid_ranges_skip_missing_uids(self) -> None:
        from tests.imap_support import send
        send(self.proto, self.t, b"S STORE 3 +FLAGS (\\Deleted)")
        self.assertTrue(send(self.proto, self.t, b"E EXPUNGE")[-1].startswith(b"E OK"))
        self.assertEqual(self.fetched(b"F UID FETCH 2:4,9:20,3 (UID)"),
                         [b"2 UID 2", b"3 UID 4"])
        self.assertEqual(self.fetched(b"F UID FETCH * (UID)"), [b"4 UID 5"])
        self.assertEqual(self.fetched(b"F UID FETCH 3 (UID)"), [])

    def test_a_missing_sequence_number_is_refused_before_any_response(self) -> None:
        from tests.imap_support import send
        reply = send(self.proto, self.t, b"F FETCH 1:2,6 (UID)")
        self.assertEqual(len(reply), 1)
        self.assertTrue(reply[0].startswith(b"F BAD"), reply)
