"""RFC 2449 LOGIN-DELAY: CAPA, the [LOGIN-DELAY] refusal, the setting."""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import Limits
from gateway.pop3.logindelay import LoginDelay
from gateway.pop3.protocol import POP3Factory
from gateway.testing import MemoryStore
from tests.support import parse_text
from tests.test_config import IMAPS, ConfigTestMixin
from tests.test_protocols import connect, lines

LOGIN = b"USER bob@example.edu\r\nPASS battery staple\r\n"


class LoginDelayConversationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = MemoryStore(clock=self.clock)
        self.successResultOf(self.store.deliver(["bob@example.edu"], b"Subject: x\r\n\r\nx\r\n"))
        self.factory: Any = None

    def connect(self, delay: int = 60) -> tuple[Any, Any]:
        proto, t = connect(POP3Factory, "pop3", tls="implicit", clock=self.clock,
                           limits=Limits(pop3_login_delay=delay), factory=self.factory)
        self.factory = proto.factory
        proto.context.extras["store"] = self.store
        proto.handshakeCompleted()
        lines(t)
        return proto, t

    def capa(self, proto: Any, t: Any) -> list[bytes]:
        proto.dataReceived(b"CAPA\r\n")
        return lines(t)

    def test_capa(self) -> None:
        proto, t = self.connect(60)
        self.assertIn(b"LOGIN-DELAY 60", self.capa(proto, t))
        proto.dataReceived(LOGIN)
        lines(t)
        self.assertIn(b"LOGIN-DELAY 60", self.capa(proto, t))  # TRANSACTION too

    def test_capa_without_delay(self) -> None:
        proto, t = self.connect(0)
        self.assertFalse([c for c in self.capa(proto, t) if c.startswith(b"LOGIN-DELAY")])

    def test_second_login_too_soon(self) -> None:
        proto, t = self.connect()
        proto.dataReceived(LOGIN + b"QUIT\r\n")
        self.assertTrue(lines(t)[1].startswith(b"+OK logged in"))
        self.clock.advance(59)
        second, t2 = self.connect()
        second.dataReceived(LOGIN)
        self.assertEqual(lines(t2), [b"+OK send PASS",
                                     b"-ERR [LOGIN-DELAY] logged in too recently, try again later"])
        self.assertEqual(second.state, "AUTHORIZATION")
        self.assertIsNone(second.account)
        self.assertIsNone(second.maildrop)
        # Not an authentication failure, and the mailbox is not locked: the
        # same connection gets in once the delay is over.
        self.assertEqual(second.auth_failures, 0)
        self.clock.advance(1)
        second.dataReceived(LOGIN)
        self.assertTrue(lines(t2)[-1].startswith(b"+OK logged in"))

    def test_wrong_password_still_auth(self) -> None:
        proto, t = self.connect()
        proto.dataReceived(LOGIN + b"QUIT\r\n")
        second, t2 = self.connect()
        second.dataReceived(b"USER bob@example.edu\r\nPASS wrong\r\n")
        self.assertEqual(lines(t2)[-1], b"-ERR [AUTH] authentication failed")

    def test_refused_login_does_not_restart_the_delay(self) -> None:
        proto, t = self.connect()
        proto.dataReceived(LOGIN + b"QUIT\r\n")
        self.clock.advance(30)
        second, t2 = self.connect()
        second.dataReceived(LOGIN)
        self.assertIn(b"[LOGIN-DELAY]", lines(t2)[-1])
        self.clock.advance(30)
        second.dataReceived(LOGIN)
        self.assertTrue(lines(t2)[-1].startswith(b"+OK logged in"))

    def test_in_use_is_not_a_login(self) -> None:
        first, t = self.connect(0)
        first.dataReceived(LOGIN)
        lines(t)
        self.factory.login_delay.delay = 60  # (set once the first was in)
        second, t2 = self.connect()
        second.dataReceived(LOGIN)
        self.assertIn(b"[IN-USE]", lines(t2)[-1])
        first.dataReceived(b"QUIT\r\n")
        second.dataReceived(LOGIN)
        self.assertTrue(lines(t2)[-1].startswith(b"+OK logged in"))

    def test_shared_by_the_listeners(self) -> None:
        proto, t = self.connect()
        other = POP3Factory(proto.context)  # another listener, the same service
        self.assertIs(other.login_delay, proto.factory.login_delay)

    def test_sasl_too(self) -> None:
        proto, t = self.connect()
        proto.dataReceived(LOGIN + b"QUIT\r\n")
        second, t2 = self.connect()
        second.dataReceived(b"AUTH PLAIN "
                            + base64.b64encode(b"\0bob@example.edu\0battery staple") + b"\r\n")
        self.assertIn(b"-ERR [LOGIN-DELAY]", lines(t2)[-1])


class LoginDelayTests(SynchronousTestCase):
    def test_off(self) -> None:
        delay = LoginDelay(0, Clock())
        delay.record("a")
        self.assertTrue(delay.allowed("a"))

    def test_per_account(self) -> None:
        clock = Clock()
        delay = LoginDelay(10, clock)
        delay.record("a")
        self.assertFalse(delay.allowed("a"))
        self.assertTrue(delay.allowed("b"))
        clock.advance(10)
        self.assertTrue(delay.allowed("a"))

    def test_clock_set_back(self) -> None:
        clock = Clock()
        clock.advance(100)
        delay = LoginDelay(10, clock)
        delay.record("a")
        clock.rightNow = 50.0
        self.assertTrue(delay.allowed("a"))

    def test_old_entries_pruned(self) -> None:
        clock = Clock()
        delay = LoginDelay(10, clock)
        for i in range(1000):
            delay.record(f"old{i}")
        clock.advance(11)
        for i in range(100):
            delay.record(f"new{i}")
        self.assertEqual(len(delay._last), 100)
        self.assertFalse(delay.allowed("new5"))


class LoginDelayConfigTests(ConfigTestMixin, SynchronousTestCase):
    def test_default_off(self) -> None:
        self.assertEqual(parse_text(self.text(), self.dir).limits.pop3_login_delay, 0)

    def test_set(self) -> None:
        config = parse_text(self.text(IMAPS, "[limits]\npop3_login_delay = 300\n"), self.dir)
        self.assertEqual(config.limits.pop3_login_delay, 300)

    def test_negative_refused(self) -> None:
        self.assertProblem(self.text(IMAPS, "[limits]\npop3_login_delay = -1\n"),
                           "limits.pop3_login_delay", "negative")
