"""
Tests for L{gateway.auth.checkers}.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.auth.checkers import (
    APOPChecker,
    APOPCredentials,
    AuthAttempt,
    PlainPasswordChecker,
    PlainPasswordCredentials,
    SASLOutcomeChecker,
    TemporarilyRefused,
)
from gateway.auth.sasl.base import Failed, Proven
from gateway.auth.throttle import Throttle, ThrottleSettings
from gateway.testing import MemoryAuthBackend

ADDRESS = "192.0.2.7"
TIMESTAMP = b"<1896.697170952@dbc.mtview.ca.us>"
DIGEST = b"c4c9334bac560ecc979e58001b3e22fb"  # RFC 1939 section 7


def backend() -> MemoryAuthBackend:
    b = MemoryAuthBackend()
    b.add_account("alice@example.edu", b"correct horse", iterations=16,
                  may_act_for=("shared@example.edu",))
    b.add_account("mrose@example.edu", b"tanstaaf", legacy=("APOP",), iterations=16)
    b.add_account("bob@example.edu", b"tanstaaf", iterations=16)
    b.add_account("shared@example.edu", b"x", iterations=16)
    return b


class Case(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        # No free failures: every failure is delayed, so the delay is visible.
        self.throttle = Throttle(self.clock, ThrottleSettings(free_failures=0))
        self.backend = backend()
        self.sasl = SASLOutcomeChecker(self.backend, self.throttle)
        self.apop = APOPChecker(self.backend, self.throttle)
        self.plain = PlainPasswordChecker(self.backend, self.throttle)

    def refused_later(self, ds: list[Deferred[Any]]) -> None:
        """Let every delayed refusal in C{ds} happen, and consume it."""
        self.clock.advance(60)
        for d in ds:
            self.failureResultOf(d, UnauthorizedLogin)

    def refused_after(self, d: Deferred[Any], delay: float) -> Any:
        """C{d} fails with UnauthorizedLogin exactly C{delay} seconds later."""
        self.clock.advance(delay - 0.01)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        return self.failureResultOf(d, UnauthorizedLogin)

    def attempt(self, step: Any, address: str = ADDRESS, trusted: bool = False) -> Deferred[Any]:
        return self.sasl.requestAvatarId(AuthAttempt(step, address, trusted))


class SASLOutcomeTests(Case):
    def test_interfaces(self) -> None:
        for checker in (self.sasl, self.apop, self.plain):
            self.assertTrue(verifyObject(ICredentialsChecker, checker))

    def test_proven_gives_account(self) -> None:
        d = self.attempt(Proven("alice@example.edu", "SCRAM-SHA-256"))
        self.assertEqual(self.successResultOf(d), "alice@example.edu")

    def test_proven_with_authzid_gives_authzid(self) -> None:
        d = self.attempt(Proven("alice@example.edu", "PLAIN", authzid="Shared@Example.edu"))
        self.assertEqual(self.successResultOf(d), "shared@example.edu")

    def test_disabled_account_refused(self) -> None:
        self.backend.set_enabled("alice@example.edu", False)
        d = self.attempt(Proven("alice@example.edu", "SCRAM-SHA-256"))
        f = self.refused_after(d, 2.0)
        self.assertNotIsInstance(f.value, TemporarilyRefused)

    def test_failed_refused_only_after_delay(self) -> None:
        d = self.attempt(Failed("wrong proof", "SCRAM-SHA-256", authcid="alice@example.edu"))
        self.refused_after(d, 2.0)
        d = self.attempt(Failed("wrong proof", "SCRAM-SHA-256", authcid="alice@example.edu"))
        self.refused_after(d, 4.0)

    def test_unknown_and_wrong_password_alike(self) -> None:
        outcomes = []
        for name in ("alice@example.edu", "nobody@example.edu"):
            throttle = Throttle(self.clock, ThrottleSettings(free_failures=0))
            checker = PlainPasswordChecker(self.backend, throttle)
            d = checker.requestAvatarId(PlainPasswordCredentials(name, b"guess", ADDRESS))
            f = self.refused_after(d, 2.0)
            outcomes.append((type(f.value), f.getErrorMessage()))
        self.assertEqual(outcomes[0], outcomes[1])

    def test_banned_refused_temporarily(self) -> None:
        failed = [self.attempt(Failed("x", "PLAIN", "alice@example.edu", fingerprint=bytes([i])))
                  for i in range(10)]
        d = self.attempt(Proven("alice@example.edu", "SCRAM-SHA-256"))
        f = self.failureResultOf(d, TemporarilyRefused)
        self.assertEqual(f.value.retry_after, 900.0)
        self.assertEqual(f.value.error.code, 454)
        # Another account behind the same address still logs in.
        d = self.attempt(Proven("shared@example.edu", "SCRAM-SHA-256"))
        self.assertEqual(self.successResultOf(d), "shared@example.edu")
        self.refused_later(failed)

    def test_trusted_not_delayed(self) -> None:
        d = self.attempt(Failed("x", "PLAIN", "alice@example.edu"), trusted=True)
        self.failureResultOf(d, UnauthorizedLogin)

    def test_success_resets(self) -> None:
        self.refused_later([self.attempt(Failed("x", "PLAIN", "alice@example.edu",
                                                fingerprint=bytes([i]))) for i in range(3)])
        self.successResultOf(self.attempt(Proven("alice@example.edu", "PLAIN")))
        self.refused_after(self.attempt(Failed("x", "PLAIN", "alice@example.edu")), 2.0)

    def test_directory_failure_is_temporary_and_not_counted(self) -> None:
        class Broken(MemoryAuthBackend):
            def may_act_as(self, account: str, authzid: str) -> Deferred[bool]:
                return fail(OSError("directory down"))

        checker = SASLOutcomeChecker(Broken(), self.throttle)
        d = checker.requestAvatarId(AuthAttempt(Proven("a@b.c", "PLAIN"), ADDRESS))
        self.failureResultOf(d, TemporarilyRefused)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(self.throttle.tracked(), 0)


class APOPTests(Case):
    def apop_login(self, name: str, digest: bytes = DIGEST) -> Deferred[Any]:
        return self.apop.requestAvatarId(APOPCredentials(name, TIMESTAMP, digest, ADDRESS))

    def test_rfc1939_example(self) -> None:
        self.assertEqual(self.successResultOf(self.apop_login("mrose@example.edu")),
                         "mrose@example.edu")
        self.assertEqual(self.successResultOf(self.apop_login(b"MRose@example.edu",
                                                              DIGEST.upper())),
                         "mrose@example.edu")

    def test_wrong_digest(self) -> None:
        self.refused_after(self.apop_login("mrose@example.edu", b"0" * 32), 2.0)

    def test_account_without_apop_like_wrong_digest(self) -> None:
        """bob has the same password but no APOP secret: refused, identically."""
        outcomes = set()
        for name, digest in (("mrose@example.edu", b"0" * 32), ("bob@example.edu", DIGEST),
                             ("nobody@example.edu", DIGEST)):
            checker = APOPChecker(self.backend, Throttle(self.clock, ThrottleSettings(
                free_failures=0)))
            d = checker.requestAvatarId(APOPCredentials(name, TIMESTAMP, digest, ADDRESS))
            f = self.refused_after(d, 2.0)
            outcomes.add((type(f.value), f.getErrorMessage()))
        self.assertEqual(outcomes, {(UnauthorizedLogin, "Authentication failed")})

    def test_banned(self) -> None:
        failed = [self.apop_login("mrose@example.edu", b"0" * 32) for _ in range(10)]
        self.failureResultOf(self.apop_login("mrose@example.edu"), TemporarilyRefused)
        self.refused_later(failed)


class PlainPasswordTests(Case):
    def login(self, name: str | bytes, password: bytes) -> Deferred[Any]:
        return self.plain.requestAvatarId(PlainPasswordCredentials(name, password, ADDRESS))

    def test_right_password(self) -> None:
        self.assertEqual(self.successResultOf(self.login(b"alice@example.edu", b"correct horse")),
                         "alice@example.edu")

    def test_stale_password_counts_once(self) -> None:
        for _ in range(20):
            d = self.login("alice@example.edu", b"old password")
            self.clock.advance(2.0)
            self.failureResultOf(d, UnauthorizedLogin)
        self.assertTrue(self.throttle.check(ADDRESS, "alice@example.edu").allowed)

    def test_password_not_in_repr(self) -> None:
        self.assertNotIn("secret", repr(PlainPasswordCredentials("a", b"secret", ADDRESS)))

    def test_canonical_names_share_counters(self) -> None:
        checker = PlainPasswordChecker(self.backend, self.throttle,
                                       canonical=lambda n: n.lower() + "@example.edu")
        failed = [checker.requestAvatarId(PlainPasswordCredentials("ALICE", bytes([i]), ADDRESS))
                  for i in range(10)]
        self.assertFalse(self.throttle.check(ADDRESS, "alice@example.edu").allowed)
        self.refused_later(failed)
