"""
Review of the POP3 command set (L{gateway.pop3.protocol},
L{gateway.pop3.maildrop}, L{gateway.pop3.logindelay}) against RFC 1939,
RFC 2449, RFC 2595, RFC 5034 and RFC 3206: every command in every state,
argument checking, the USER/PASS/APOP/AUTH sequences, QUIT and the mailbox
lock on every path, UIDL, LOGIN-DELAY.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.portal import build_portal
from gateway.auth.realm import GatewayRealm
from gateway.auth.throttle import Throttle, ThrottleSettings
from gateway.config import Limits, Listener
from gateway.pop3.protocol import POP3Factory
from gateway.protocol import ListenerContext
from gateway.store.maildir import MaildirStore
from gateway.testing import MemoryStore
from tests.pop3_support import BOB, HeldThreads, lock_is_free, stored_messages
from tests.test_auth_protocols import login_answered_after_loss
from tests.test_pop3_transaction import send
from tests.test_protocols import MECHANISMS, TLS, auth_stack, connect, lines

ALICE = "alice@example.edu"  # has an APOP secret ("correct horse")
BOB_LOGIN = b"USER bob@example.edu\r\nPASS battery staple\r\n"
ONE = b"Subject: one\r\n\r\nbody one\r\n.leading dot\r\n"
TWO = b"Subject: two\r\nX: y\r\n\r\nl1\r\nl2\r\nl3\r\n"
THREE = b"Subject: three\r\n\r\nthree\r\n"
NOT_AUTHENTICATED = b"-ERR not authenticated"
NO_SUCH = b"-ERR no such message"
ALREADY = b"-ERR already authenticated"
AUTH_FAILED = b"-ERR [AUTH] authentication failed"
PLAIN_REFUSED = b"-ERR [AUTH] plain-text login refused before TLS; use STLS"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class Client:
    """One POP3 connection over a C{StringTransport}."""

    def __init__(self, proto: Any, t: Any) -> None:
        self.proto, self.t = proto, t

    def __call__(self, data: bytes) -> list[bytes]:
        send(self.proto, self.t, data)
        return lines(self.t)

    @property
    def greeting_timestamp(self) -> bytes:
        return self.proto.apop_timestamp


class Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store: Any = MemoryStore(clock=self.clock)
        for data in (ONE, TWO, THREE):
            self.successResultOf(self.store.deliver([BOB], data))
        self.factory: Any = None

    def client(self, tls: str = "implicit", peer: str = "192.0.2.7",
               limits: Limits | None = None, **kw: Any) -> Client:
        proto, t = connect(POP3Factory, "pop3", tls=tls, clock=self.clock, peer=peer,
                           limits=limits, factory=self.factory, **kw)
        self.factory = proto.factory
        proto.context.extras["store"] = self.store
        if tls == "implicit":
            proto.handshakeCompleted()
        lines(t)
        return Client(proto, t)

    def logged_in(self, **kw: Any) -> Client:
        c = self.client(**kw)
        reply = c(BOB_LOGIN)
        self.assertTrue(reply[-1].startswith(b"+OK logged in"), reply)
        return c

    def lock_is_free(self, account: str = BOB) -> bool:
        return lock_is_free(self.store, account)

    def stored(self) -> list[Any]:
        return stored_messages(self, self.store)


# -- states ---------------------------------------------------------------------------


class StateTests(Base):
    def test_transaction_commands_in_authorization(self) -> None:
        """RFC 1939 section 5: the TRANSACTION commands are refused before
        a login, whatever their arguments."""
        c = self.client()
        commands = [b"STAT", b"LIST", b"LIST 1", b"UIDL", b"UIDL 1", b"RETR 1", b"TOP 1 0",
                    b"DELE 1", b"RSET", b"NOOP"]
        reply = c(b"".join(cmd + b"\r\n" for cmd in commands))
        self.assertEqual(reply, [NOT_AUTHENTICATED] * len(commands))
        self.assertEqual(c.proto.state, "AUTHORIZATION")

    def test_authorization_commands_in_transaction(self) -> None:
        """RFC 1939 section 7, RFC 5034 section 4, RFC 2595 section 4: no
        second login, no STLS once logged in; the session is unchanged."""
        c = self.logged_in()
        timestamp = c.greeting_timestamp
        digest = hashlib.md5(timestamp + b"correct horse").hexdigest().encode()
        reply = c(b"USER alice@example.edu\r\nPASS correct horse\r\nAPOP alice@example.edu "
                  + digest + b"\r\nAUTH PLAIN " + b64(b"\0alice@example.edu\0correct horse")
                  + b"\r\nAUTH\r\nSTLS\r\n")
        self.assertEqual(reply, [ALREADY] * 5 + [b"-ERR STLS only before authentication"])
        self.assertEqual(c.proto.state, "TRANSACTION")
        self.assertEqual(c.proto.account, BOB)
        self.assertIsNone(c.t.tls_started_with)
        self.assertEqual(c(b"STAT\r\n"), [b"+OK 3 %d" % len(ONE + TWO + THREE)])

    def test_capa_and_quit_in_every_state(self) -> None:
        c = self.client()
        self.assertEqual(c(b"CAPA\r\n")[0], b"+OK Capability list follows")
        c(BOB_LOGIN)
        self.assertEqual(c(b"CAPA\r\n")[0], b"+OK Capability list follows")
        self.assertEqual(c(b"QUIT\r\n"), [b"+OK bye"])
        self.assertTrue(c.t.disconnecting)

    def test_pass_without_user(self) -> None:
        c = self.client()
        self.assertEqual(c(b"PASS battery staple\r\n"), [b"-ERR USER first"])
        self.assertEqual(c.proto.auth_failures, 0)

    def test_user_twice_uses_the_last(self) -> None:
        c = self.client()
        reply = c(b"USER alice@example.edu\r\nUSER bob@example.edu\r\nPASS battery staple\r\n")
        self.assertEqual(reply[:2], [b"+OK send PASS"] * 2)
        self.assertTrue(reply[2].startswith(b"+OK logged in"), reply)
        self.assertEqual(c.proto.account, BOB)

    def test_pass_only_after_a_failed_pass_needs_user_again(self) -> None:
        c = self.client()
        reply = c(b"USER bob@example.edu\r\nPASS wrong\r\nPASS battery staple\r\n")
        self.assertEqual(reply, [b"+OK send PASS", AUTH_FAILED, b"-ERR USER first"])

    def test_refused_user_forgets_the_earlier_one(self) -> None:
        """RFC 1939 section 7: PASS only immediately after a successful
        USER.  A refused USER must not leave an earlier name in place."""
        c = self.client()
        reply = c(b"USER bob@example.edu\r\nUSER\r\nPASS battery staple\r\n")
        self.assertEqual(reply, [b"+OK send PASS", b"-ERR USER needs a name",
                                 b"-ERR USER first"])
        self.assertEqual(c.proto.state, "AUTHORIZATION")

    def test_apop_after_user_forgets_the_user(self) -> None:
        """USER then a failed APOP: the USER is not still waiting for a PASS."""
        c = self.client()
        reply = c(b"USER bob@example.edu\r\nAPOP alice@example.edu " + b"0" * 32
                  + b"\r\nPASS battery staple\r\n")
        self.assertEqual(reply, [b"+OK send PASS", AUTH_FAILED, b"-ERR USER first"])
        self.assertEqual(c.proto.state, "AUTHORIZATION")

    def test_auth_during_user_pass_forgets_the_user(self) -> None:
        """USER, then AUTH cancelled with '*': the PASS that follows does
        not complete the abandoned USER."""
        c = self.client()
        reply = c(b"USER bob@example.edu\r\nAUTH PLAIN\r\n")
        self.assertEqual(reply, [b"+OK send PASS", b"+ "])
        reply = c(b"*\r\nPASS battery staple\r\n")
        self.assertEqual(reply, [b"-ERR authentication cancelled", b"-ERR USER first"])
        self.assertEqual(c.proto.state, "AUTHORIZATION")

    def test_noop_rset_stat(self) -> None:
        c = self.logged_in()
        reply = c(b"NOOP\r\nDELE 2\r\nSTAT\r\nRSET\r\nSTAT\r\nLIST 2\r\n")
        self.assertEqual(reply, [b"+OK", b"+OK message 2 deleted",
                                 b"+OK 2 %d" % len(ONE + THREE), b"+OK 3 messages",
                                 b"+OK 3 %d" % len(ONE + TWO + THREE), b"+OK 2 %d" % len(TWO)])

    def test_listings_after_deletions(self) -> None:
        """RFC 1939 section 5: deleted messages are left out of LIST and
        UIDL, and the other messages keep their numbers."""
        c = self.logged_in()
        all_uidl = c(b"UIDL\r\n")[1:-1]
        reply = c(b"DELE 2\r\nLIST\r\nUIDL\r\nSTAT\r\n")
        self.assertEqual(reply[0], b"+OK message 2 deleted")
        self.assertEqual(reply[1:5], [b"+OK 2 messages", b"1 %d" % len(ONE),
                                      b"3 %d" % len(THREE), b"."])
        self.assertEqual(reply[5:9], [b"+OK unique-id listing follows", all_uidl[0],
                                      all_uidl[2], b"."])
        self.assertEqual(reply[9], b"+OK 2 %d" % len(ONE + THREE))

    def test_deleted_message_numbers(self) -> None:
        c = self.logged_in()
        c(b"DELE 1\r\n")
        reply = c(b"LIST 1\r\nUIDL 1\r\nTOP 1 0\r\nRETR 1\r\nDELE 1\r\nLIST 2\r\n")
        self.assertEqual(reply[:5], [NO_SUCH] * 5)
        self.assertEqual(reply[5], b"+OK 2 %d" % len(TWO))

    def test_odd_message_numbers(self) -> None:
        """Only plain decimal numbers of existing messages name a message."""
        c = self.logged_in()
        odd = [b"0", b"-1", b"1e3", b"+1", b"1.0", b"0x1", b"\xd9\xa1", b"1_0",
               b"9" * 200, b"4", b"1 2", b""]
        for verb in (b"LIST", b"UIDL", b"RETR", b"DELE"):
            for number in odd:
                if verb in (b"LIST", b"UIDL") and number == b"":
                    continue  # the whole listing
                reply = c(verb + b" " + number + b"\r\n")
                self.assertEqual(reply, [NO_SUCH], (verb, number))
        for number in odd:
            if number in (b"1 2", b""):
                continue
            self.assertEqual(c(b"TOP " + number + b" 0\r\n"), [NO_SUCH], number)
        self.assertEqual(c(b"STAT\r\n"), [b"+OK 3 %d" % len(ONE + TWO + THREE)])
        # Nothing above was deleted.
        c(b"QUIT\r\n")
        self.assertEqual(len(self.stored()), 3)

    def test_top_line_counts(self) -> None:
        c = self.logged_in()
        self.assertEqual(c(b"TOP 2 0\r\n"), [b"+OK top of message follows", b"Subject: two",
                                            b"X: y", b"", b"."])
        self.assertEqual(c(b"TOP 2 99999999999999999999\r\n"),
                         [b"+OK top of message follows", b"Subject: two", b"X: y", b"",
                          b"l1", b"l2", b"l3", b"."])
        for bad in (b"TOP 2 -1", b"TOP 2 +1", b"TOP 2 1e3", b"TOP 2", b"TOP", b"TOP 2 1 1"):
            self.assertEqual(c(bad + b"\r\n"),
                             [b"-ERR TOP needs a message number and a line count"], bad)

    def test_top_does_not_mark_seen_retr_does(self) -> None:
        c = self.logged_in()
        c(b"TOP 1 0\r\nRETR 2\r\nQUIT\r\n")
        flags = [m.flags for m in self.stored()]
        self.assertNotIn("\\Seen", flags[0])
        self.assertIn("\\Seen", flags[1])

    def test_unknown_commands_count(self) -> None:
        c = self.client(limits=Limits(max_bad_commands=3))
        self.assertEqual(c(b"XYZZY\r\nLAST\r\n"), [b"-ERR unknown command"] * 2)
        self.assertFalse(c.t.disconnecting)
        c(b"RPOP x\r\n")
        self.assertTrue(c.t.disconnecting)


# -- QUIT and the lock --------------------------------------------------------------


class FailingSession:
    """
    A folder session whose C{failing} method fails (a full disk at QUIT):
    with a failed L{Deferred}, or, with C{raising}, at once (a store that
    breaks its interface's promise of a Deferred).
    """

    def __init__(self, session: Any, failing: str, raising: bool) -> None:
        self._session, self._failing, self._raising = session, failing, raising

    def __getattr__(self, name: str) -> Any:
        if name != self._failing:
            return getattr(self._session, name)

        def broken(*a: Any, **kw: Any) -> Deferred[Any]:
            error = OSError(28, "No space left on device")
            if self._raising:
                raise error
            return fail(error)
        return broken


class FailingStore:
    """A L{MemoryStore} whose INBOX sessions fail in C{failing}."""

    def __init__(self, store: MemoryStore, failing: str = "delete", raising: bool = False) -> None:
        self._store, self._failing, self._raising = store, failing, raising

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def open_folder(self, *a: Any, **kw: Any) -> Deferred[Any]:
        return self._store.open_folder(*a, **kw).addCallback(
            FailingSession, self._failing, self._raising)


class DelayedLockStore:
    """A L{MemoryStore} whose lock is granted only when the test says."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.waiting: list[tuple[Deferred[Any], Deferred[Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def lock_pop3(self, account: str) -> Deferred[Any]:
        later: Deferred[Any] = Deferred()
        self.waiting.append((self._store.lock_pop3(account), later))
        return later

    def grant(self) -> None:
        while self.waiting:
            now, later = self.waiting.pop(0)
            now.chainDeferred(later)


class SlowDeleteSession:
    """A folder session whose C{delete} finishes when the test says."""

    def __init__(self, session: Any, pending: list[Any]) -> None:
        self._session, self._pending = session, pending

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def delete(self, uids: Any) -> Deferred[Any]:
        later: Deferred[Any] = Deferred()
        self._pending.append(lambda: self._session.delete(uids).chainDeferred(later))
        return later


class SlowDeleteStore:
    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.pending: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def open_folder(self, *a: Any, **kw: Any) -> Deferred[Any]:
        return self._store.open_folder(*a, **kw).addCallback(SlowDeleteSession, self.pending)


class QuitTests(Base):
    def test_slow_removal_is_not_an_idle_timeout(self) -> None:
        """QUIT's removal is the server's work: however long it takes, the
        client hears +OK once, not an idle timeout first."""
        real = self.store
        self.store = slow = SlowDeleteStore(real)
        c = self.logged_in()
        self.assertEqual(c(b"DELE 1\r\nQUIT\r\n"), [b"+OK message 1 deleted"])
        self.clock.advance(Limits().idle_timeout_pop3 * 2)
        self.assertEqual(lines(c.t), [])
        self.assertFalse(c.t.disconnecting)
        slow.pending.pop()()
        self.assertEqual(lines(c.t), [b"+OK bye"])
        self.assertTrue(c.t.disconnecting)
        self.store = real
        self.assertEqual(len(self.stored()), 2)
        self.assertTrue(self.lock_is_free())

    def test_quit_deletes_all_at_once(self) -> None:
        c = self.logged_in()
        reply = c(b"DELE 1\r\nDELE 3\r\nQUIT\r\n")
        self.assertEqual(reply[-1], b"+OK bye")
        self.assertEqual([len(ONE), len(TWO), len(THREE)][1:2], [m.size for m in self.stored()])
        self.assertTrue(self.lock_is_free())

    def test_quit_in_authorization_deletes_nothing(self) -> None:
        c = self.client()
        self.assertEqual(c(b"USER bob@example.edu\r\nQUIT\r\n"), [b"+OK send PASS", b"+OK bye"])
        self.assertEqual(len(self.stored()), 3)

    def test_failed_delete_at_quit(self, raising: bool = False) -> None:
        """RFC 1939 section 6 and RFC 3206: a failure to remove answers
        -ERR [SYS/TEMP]; the lock is released all the same."""
        real = self.store
        self.store = FailingStore(real, "delete", raising)
        c = self.logged_in()
        reply = c(b"DELE 1\r\nRETR 2\r\nQUIT\r\n")
        self.assertEqual(reply[-1], b"-ERR [SYS/TEMP] some deleted messages not removed")
        self.assertTrue(c.t.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.store = real
        self.assertEqual(len(self.stored()), 3)
        self.assertTrue(self.lock_is_free())
        # A new session gets in at once.
        self.logged_in()

    def test_delete_raising_at_quit(self) -> None:
        """The same when the store raises instead of failing its Deferred:
        the lock used to stay taken (the exception left QUIT before the
        maildrop was closed, and connectionLost found no maildrop)."""
        self.test_failed_delete_at_quit(raising=True)

    def test_seen_flags_failing(self) -> None:
        """
        Marking the retrieved messages \\Seen fails (or raises): the
        deletions stand, QUIT says +OK, the lock is released; a dropped
        connection releases it too.
        """
        real = self.store
        for raising in (False, True):
            self.store = FailingStore(real, "set_flags", raising)
            c = self.logged_in()
            self.assertEqual(c(b"RETR 1\r\nDELE 2\r\nQUIT\r\n")[-1], b"+OK bye")
            c.proto.connectionLost(None)
            self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
            self.store = real
            self.assertTrue(self.lock_is_free())
        self.assertEqual(len(self.stored()), 1)
        self.store = FailingStore(real, "set_flags", True)
        c = self.logged_in()
        c(b"RETR 1\r\n")
        c.proto.connectionLost(None)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.store = real
        self.assertTrue(self.lock_is_free())
        self.assertEqual(self.factory.connections, set())

    def test_lock_released_on_drop_and_timeout(self) -> None:
        c = self.logged_in()
        self.assertFalse(self.lock_is_free())
        c.proto.connectionLost(None)
        self.assertTrue(self.lock_is_free())
        c = self.logged_in()
        self.clock.advance(Limits().idle_timeout_pop3 + 1)
        self.assertTrue(c.t.disconnecting)
        self.assertEqual(lines(c.t), [b"-ERR idle timeout, closing connection"])
        c.proto.connectionLost(None)
        self.assertTrue(self.lock_is_free())
        self.assertEqual(len(self.stored()), 3)

    def test_second_session_in_use(self) -> None:
        first = self.logged_in()
        second = self.client()
        self.assertEqual(second(BOB_LOGIN)[-1], b"-ERR [IN-USE] mailbox in use by another session")
        self.assertIsNone(second.proto.account)
        self.assertEqual(second.proto.state, "AUTHORIZATION")
        first(b"QUIT\r\n")
        self.assertTrue(second(BOB_LOGIN)[-1].startswith(b"+OK logged in"))

    def test_connection_lost_during_login_releases_the_lock(self) -> None:
        """
        A client that goes away (a reset: the transport is not
        "disconnecting") while its maildrop is being locked must not keep
        the lock: the next session would get [IN-USE] for good.  Its login
        is undone too (the realm's logout runs, no LOGIN-DELAY is recorded).
        """
        real = self.store
        self.store = delayed = DelayedLockStore(real)
        c = self.client(limits=Limits(pop3_login_delay=60))
        c(BOB_LOGIN)
        self.assertEqual(len(delayed.waiting), 1)
        c.proto.connectionLost(None)
        delayed.grant()
        self.store = real
        self.assertTrue(self.lock_is_free())
        self.assertIsNone(c.proto.maildrop)
        self.assertIsNone(c.proto.account)
        self.assertIsNone(c.proto.logout)
        self.assertTrue(self.factory.login_delay.allowed(BOB))

    def test_connection_lost_during_password_check(self) -> None:
        """The same when the connection ends before the portal answers: the
        realm's logout runs and nothing is locked."""
        store = self.store
        c = self.client()
        calls = login_answered_after_loss(c.proto, lambda: c(BOB_LOGIN))
        self.assertEqual(calls, ["logout"])
        self.assertIs(store, self.store)
        self.assertTrue(self.lock_is_free())

    def test_maildir_in_use_and_release(self) -> None:
        """The real store's flock: [IN-USE] while held; free after QUIT, a
        dropped connection and an idle timeout."""
        self.threads = HeldThreads()
        self.store = MaildirStore(FilePath(self.mktemp()).path, run_in_thread=self.threads,
                                  clock=self.clock, hostname="test.example")
        self.addCleanup(self.store.close)
        for data in (ONE, TWO):
            self.successResultOf(self.store.deliver([BOB], data))
        for end in ("quit", "drop", "timeout"):
            first = self.logged_in()
            second = self.client()
            self.assertEqual(second(BOB_LOGIN)[-1],
                             b"-ERR [IN-USE] mailbox in use by another session")
            if end == "quit":
                self.assertEqual(first(b"DELE 1\r\nQUIT\r\n")[-1], b"+OK bye")
            elif end == "drop":
                first(b"DELE 1\r\n")
                first.proto.connectionLost(None)
            else:
                first(b"DELE 1\r\n")
                self.clock.advance(Limits().idle_timeout_pop3 + 1)
                self.assertTrue(first.t.disconnecting)
                first.proto.connectionLost(None)
            third = self.client()  # (the second timed out with the first)
            self.assertTrue(third(BOB_LOGIN)[-1].startswith(b"+OK logged in"), end)
            third(b"QUIT\r\n")
            third.proto.connectionLost(None)
        self.assertEqual(len(self.stored()), 1)  # only the QUIT deleted

    def test_maildir_connection_lost_while_locking(self) -> None:
        """As L{test_connection_lost_during_login_releases_the_lock}, with
        the real store's lock taken in its worker thread."""
        self.threads = HeldThreads()
        self.store = MaildirStore(FilePath(self.mktemp()).path, run_in_thread=self.threads,
                                  clock=self.clock, hostname="test.example")
        self.addCleanup(self.store.close)
        self.successResultOf(self.store.deliver([BOB], ONE))
        c = self.client()
        self.threads.hold = True
        c(BOB_LOGIN)
        self.assertTrue(self.threads.held)
        c.proto.connectionLost(None)
        self.threads.release()
        self.assertIsNone(c.proto.maildrop)
        self.assertTrue(self.lock_is_free())

    def test_no_store_undoes_the_login(self) -> None:
        """A listener without a store refuses with [SYS/PERM] and the
        connection is not left half logged in (the SASL list empty, the
        realm's logout pending)."""
        c = self.client()
        del c.proto.context.extras["store"]
        self.assertEqual(c(BOB_LOGIN)[-1], b"-ERR [SYS/PERM] no mail store configured")
        self.assertIsNone(c.proto.account)
        self.assertIsNone(c.proto.logout)
        self.assertEqual(c.proto.state, "AUTHORIZATION")


# -- authentication ----------------------------------------------------------------


def factory_with(clock: Clock, store: Any, settings: ThrottleSettings,
                 limits: Limits | None = None) -> POP3Factory:
    """A POP3S listener with these throttle settings."""
    backend, _ = auth_stack(clock)
    portal = build_portal(GatewayRealm(), backend, Throttle(clock, settings))
    context = ListenerContext(
        listener=Listener("test", "pop3", "tcp:0", "implicit", "main"),
        hostname="mail.example.edu", limits=limits or Limits(), portal=portal, clock=clock,
        tls=TLS,  # type: ignore[arg-type]
        backend=backend, mechanisms=MECHANISMS, extras={"store": store},
    )
    return POP3Factory(context)


#: Failures answered at once, no ban.
LENIENT = ThrottleSettings(free_failures=100, pair_ban_after=100, address_ban_after=100)


class AuthenticationTests(Base):
    def apop(self, c: Client, name: bytes, secret: bytes, transform: Any = None) -> list[bytes]:
        digest = hashlib.md5(c.greeting_timestamp + secret).hexdigest().encode()
        if transform is not None:
            digest = transform(digest)
        return c(b"APOP " + name + b" " + digest + b"\r\n")

    def test_greeting_timestamp_uses_the_listener_clock(self) -> None:
        """RFC 1939 section 7's timestamp: the injected clock's time (house
        style), unique per greeting."""
        c, d = self.client(), self.client()
        self.assertRegex(c.greeting_timestamp,
                         rb"^<1800000000\.[0-9a-f]{16}@mail\.example\.edu>$")
        self.assertNotEqual(c.greeting_timestamp, d.greeting_timestamp)

    def test_apop(self) -> None:
        self.successResultOf(self.store.deliver([ALICE], ONE))
        c = self.client()
        self.assertTrue(self.apop(c, b"alice@example.edu", b"correct horse", bytes.upper)[0]
                        .startswith(b"+OK logged in"))
        self.assertEqual(c.proto.account, ALICE)

    def test_apop_wrong_digests(self) -> None:
        """Upper-case hex is accepted (test_apop); anything else is not."""
        self.factory = factory_with(self.clock, self.store, LENIENT,
                                    Limits(max_auth_failures=10))
        c = self.client()
        for transform in (lambda d: d[:-1], lambda d: d + b"0", lambda d: d[:-1] + b"g",
                          lambda d: b"0" * 32, lambda d: d + b" extra"):
            reply = self.apop(c, b"alice@example.edu", b"correct horse", transform)
            if reply[0] != AUTH_FAILED:
                self.assertEqual(reply, [b"-ERR APOP needs a name and a digest"])
        self.assertEqual(c.proto.state, "AUTHORIZATION")
        self.assertEqual(c(b"APOP alice@example.edu\r\nAPOP\r\n"),
                         [b"-ERR APOP needs a name and a digest"] * 2)

    def test_apop_without_a_secret(self) -> None:
        """bob has no APOP secret: refused like a wrong digest, even with
        the digest of his password."""
        c = self.client()
        self.assertEqual(self.apop(c, b"bob@example.edu", b"battery staple"), [AUTH_FAILED])

    def test_user_pass_before_stls(self) -> None:
        """RFC 2595 section 2.1, RFC 3206 [AUTH]: no password in clear."""
        c = self.client(tls="starttls")
        self.assertEqual(c(BOB_LOGIN), [PLAIN_REFUSED] * 2)
        caps = c(b"CAPA\r\n")
        self.assertNotIn(b"USER", caps)
        self.assertIn(b"STLS", caps)
        self.assertEqual(c(b"AUTH PLAIN " + b64(b"\0bob@example.edu\0battery staple") + b"\r\n"),
                         [b"-ERR [AUTH] plain-text mechanism refused before TLS; use STLS"])
        self.assertEqual(c.proto.auth_failures, 0)
        c(b"STLS\r\n")
        c.proto.handshakeCompleted()
        caps = c(b"CAPA\r\n")
        self.assertIn(b"USER", caps)
        self.assertNotIn(b"STLS", caps)
        self.assertTrue(c(BOB_LOGIN)[-1].startswith(b"+OK logged in"))

    def test_plaintext_allowed_by_configuration(self) -> None:
        c = self.client(tls="none", plaintext_without_tls=True)
        self.assertIn(b"USER", c(b"CAPA\r\n"))
        self.assertTrue(c(BOB_LOGIN)[-1].startswith(b"+OK logged in"))

    def test_max_auth_failures(self) -> None:
        c = self.client(limits=Limits(max_auth_failures=3))
        reply = c(b"USER bob@example.edu\r\nPASS a\r\nAPOP alice@example.edu " + b"0" * 32
                  + b"\r\nAUTH PLAIN " + b64(b"\0bob@example.edu\0c") + b"\r\nCAPA\r\n")
        self.assertEqual(reply, [b"+OK send PASS"] + [AUTH_FAILED] * 3)
        self.assertTrue(c.t.disconnecting)

    def test_cancel_is_not_a_failure(self) -> None:
        """RFC 5034 section 4: '*' cancels; -ERR, not counted."""
        c = self.client(limits=Limits(max_auth_failures=1))
        for _ in range(3):
            self.assertEqual(c(b"AUTH LOGIN\r\n"), [b"+ " + b64(b"Username:")])
            self.assertEqual(c(b"*\r\n"), [b"-ERR authentication cancelled"])
        self.assertFalse(c.t.disconnecting)
        self.assertEqual(c.proto.auth_failures, 0)
        self.assertTrue(c(BOB_LOGIN)[-1].startswith(b"+OK logged in"))

    def test_initial_responses(self) -> None:
        c = self.client(limits=Limits(max_auth_failures=10))
        # '=' is an empty initial response: PLAIN fails on it.
        self.assertEqual(c(b"AUTH PLAIN =\r\n"), [AUTH_FAILED])
        # Not base64.
        self.assertEqual(c(b"AUTH PLAIN !!!\r\n"), [AUTH_FAILED])
        self.assertEqual(c(b"AUTH plain " + b64(b"\0bob@example.edu\0battery staple")
                           + b"\r\n")[0][:14], b"+OK logged in,")

    def test_unknown_mechanism(self) -> None:
        c = self.client()
        for name in (b"X-UNKNOWN", b"APOP", b"\xff"):
            self.assertEqual(c(b"AUTH " + name + b"\r\n"),
                             [b"-ERR unsupported authentication mechanism"], name)
        self.assertEqual(c.proto.auth_failures, 0)

    def sasl_list(self, caps: list[bytes]) -> list[bytes]:
        found = [cap for cap in caps if cap.startswith(b"SASL ")]
        return found[0].split()[1:] if found else []

    def test_capa_sasl_matches_auth(self) -> None:
        """RFC 2449 section 6.3 and RFC 5034: what CAPA lists is what AUTH
        accepts, before and after STLS; nothing else is accepted."""
        c = self.client(tls="starttls")
        for state in ("before", "after"):
            listed = self.sasl_list(c(b"CAPA\r\n"))
            self.assertEqual(c(b"AUTH\r\n"), [b"+OK methods follow"] + listed + [b"."])
            self.assertNotIn(b"APOP", listed)
            for name in [n.encode() for n in MECHANISMS] + [b"EXTERNAL", b"SCRAM-SHA-256-PLUS"]:
                reply = c(b"AUTH " + name + b"\r\n")
                if name in listed:
                    self.assertTrue(reply[0].startswith(b"+ "), (state, name, reply))
                    self.assertEqual(c(b"*\r\n"), [b"-ERR authentication cancelled"])
                else:
                    self.assertEqual(reply[0][:5], b"-ERR ", (state, name, reply))
            if state == "before":
                self.assertNotIn(b"PLAIN", listed)
                c(b"STLS\r\n")
                c.proto.handshakeCompleted()
            else:
                self.assertIn(b"PLAIN", listed)
        self.assertEqual(c.proto.auth_failures, 0)

    def test_capa_in_transaction(self) -> None:
        c = self.logged_in()
        caps = c(b"CAPA\r\n")
        self.assertEqual(self.sasl_list(caps), [])
        self.assertNotIn(b"USER", caps)
        self.assertNotIn(b"STLS", caps)
        for cap in (b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"):
            self.assertIn(cap, caps)

    def test_banned_is_sys_temp(self) -> None:
        """RFC 3206: a throttle ban is a temporary refusal, [SYS/TEMP], not
        [AUTH] and not [IN-USE]; even the right password gets it."""
        # The throttle bans a pair after one failure.
        self.factory = factory_with(self.clock, self.store, ThrottleSettings(
            free_failures=5, pair_ban_after=1, address_ban_after=100))
        c = self.client(limits=None)
        self.assertEqual(c(b"USER bob@example.edu\r\nPASS wrong\r\n")[-1], AUTH_FAILED)
        self.clock.advance(60)
        c = self.client()
        self.assertEqual(c(BOB_LOGIN)[-1],
                         b"-ERR [SYS/TEMP] temporary authentication failure, try again later")
        self.assertEqual(c.proto.state, "AUTHORIZATION")
        self.assertTrue(self.lock_is_free())


# -- UIDL ---------------------------------------------------------------------------------


class UIDLTests(Base):
    def check(self) -> None:
        first = self.logged_in()
        listing = first(b"UIDL\r\n")
        self.assertEqual(listing[0], b"+OK unique-id listing follows")
        self.assertEqual(listing[-1], b".")
        ids = [line.split(b" ", 1)[1] for line in listing[1:-1]]
        self.assertEqual([line.split(b" ")[0] for line in listing[1:-1]],
                         [b"%d" % i for i in range(1, len(ids) + 1)])
        self.assertEqual(len(set(ids)), len(ids))
        for uid in ids:
            self.assertRegex(uid, rb"^[\x21-\x7e]{1,70}$")
        for i, uid in enumerate(ids, 1):
            self.assertEqual(first(b"UIDL %d\r\n" % i), [b"+OK %d " % i + uid])
        # Stable across sessions, flag changes and deletions of others.
        first(b"RETR 2\r\nDELE 1\r\nQUIT\r\n")
        second = self.logged_in()
        again = [line.split(b" ", 1)[1] for line in second(b"UIDL\r\n")[1:-1]]
        self.assertEqual(again, ids[1:])
        second(b"QUIT\r\n")

    def test_memory(self) -> None:
        self.check()

    def test_maildir(self) -> None:
        self.store = MaildirStore(FilePath(self.mktemp()).path, run_in_thread=HeldThreads(),
                                  clock=self.clock, hostname="a-very-long-host-name." * 4
                                  + "example")
        self.addCleanup(self.store.close)
        for data in (ONE, TWO, THREE):
            self.successResultOf(self.store.deliver([BOB], data))
        self.check()


# -- LOGIN-DELAY ------------------------------------------------------------------------


class LoginDelayReviewTests(Base):
    delay = Limits(pop3_login_delay=60)

    def test_refused_logins_are_not_recorded(self) -> None:
        c = self.client(limits=self.delay)
        c(b"USER bob@example.edu\r\nPASS wrong\r\n")
        c(b"AUTH PLAIN " + b64(b"\0bob@example.edu\0wrong") + b"\r\n")
        self.assertTrue(self.factory.login_delay.allowed(BOB))
        # [IN-USE] is not a login either.
        lock = self.successResultOf(self.store.lock_pop3(BOB))
        self.assertIn(b"[IN-USE]", c(BOB_LOGIN)[-1])
        lock()
        self.assertTrue(self.factory.login_delay.allowed(BOB))
        self.assertTrue(c(BOB_LOGIN)[-1].startswith(b"+OK logged in"))
        self.assertFalse(self.factory.login_delay.allowed(BOB))

    def test_per_account_not_per_address(self) -> None:
        self.successResultOf(self.store.deliver([ALICE], ONE))
        c = self.client(limits=self.delay, peer="192.0.2.7")
        c(BOB_LOGIN + b"QUIT\r\n")
        # Another address, the same account (in another case): refused.
        other = self.client(peer="198.51.100.9")
        reply = other(b"USER BOB@example.edu\r\nPASS battery staple\r\n")
        self.assertEqual(reply[-1], b"-ERR [LOGIN-DELAY] logged in too recently, try again later")
        # The same address, another account: in.
        same = self.client(peer="192.0.2.7")
        reply = same(b"USER alice@example.edu\r\nPASS correct horse\r\n")
        self.assertTrue(reply[-1].startswith(b"+OK logged in"), reply)
        self.assertTrue(self.lock_is_free(BOB))
