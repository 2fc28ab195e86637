"""
Tests for L{gateway.auth.cache} and its use by L{FileDirectory}: off by
default, successes only, keyed digests, forgotten when the users table
changes or the time is up.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.cache import PasswordCache
from gateway.config import AuthConfig
from tests.support import parse_text
from tests.test_config import ConfigTestMixin
from tests.test_directory import PASSWORD, FileCase, alice


class CountingRunner:
    """A synchronous run_in_thread that counts what it ran, by name."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def __call__(self, f: Any, *a: Any, **kw: Any) -> Deferred[Any]:
        self.ran.append(getattr(f, "__name__", ""))
        return maybeDeferred(f, *a, **kw)

    def derivations(self) -> int:
        return self.ran.count("password_matches")


class DirectoryCacheTests(FileCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.runner = CountingRunner()
        self.cache = PasswordCache(60.0, self.clock)
        self.dir, self.file = self.directory(alice(), run_in_thread=self.runner,
                                             password_cache=self.cache)

    def check(self, password: str = PASSWORD, name: str = "alice@example.edu") -> str | None:
        result: str | None = self.successResultOf(
            self.dir.check_password(name, password.encode()))
        return result

    def test_second_login_skips_the_derivation(self) -> None:
        self.assertEqual(self.check(), "alice@example.edu")
        self.assertEqual(self.check(), "alice@example.edu")
        self.assertEqual(self.check(name="ALICE@example.edu"), "alice@example.edu")
        self.assertEqual((self.runner.derivations(), self.cache.hits), (1, 2))

    def test_failures_are_never_cached(self) -> None:
        self.assertIsNone(self.check("wrong"))
        self.assertIsNone(self.check("wrong"))
        self.assertIsNone(self.check(name="nobody@example.edu"))
        self.assertEqual((self.runner.derivations(), len(self.cache)), (3, 0))
        self.check()
        self.assertIsNone(self.check("wrong"))  # a right password cached does not help
        self.assertEqual(self.runner.derivations(), 5)

    def test_entries_expire(self) -> None:
        self.check()
        self.clock.advance(59)
        self.check()
        self.assertEqual(self.runner.derivations(), 1)
        self.clock.advance(2)
        self.check()
        self.assertEqual(self.runner.derivations(), 2)

    def test_forgotten_when_the_users_table_changes(self) -> None:
        """A reload (the file changed, or the admin command rewrote it)
        empties the cache: a disabled account or a changed password is
        never admitted from it."""
        self.check()
        self.file.save({"alice@example.edu": alice(enabled=False)})
        self.assertTrue(self.successResultOf(self.dir.reload()))
        self.assertIsNone(self.check())
        self.file.save({"alice@example.edu": alice()})
        self.successResultOf(self.dir.reload())
        self.assertEqual(self.check(), "alice@example.edu")
        # the disabled check costs a (dummy) derivation too; none served from the cache
        self.assertEqual(self.runner.derivations(), 3)
        self.assertEqual(self.cache.hits, 0)

    def test_success_computed_under_an_old_table_is_not_kept(self) -> None:
        old = object()
        self.cache.remember(old, "alice@example.edu", b"pw")
        current = object()
        self.assertFalse(self.cache.verified(current, "alice@example.edu", b"pw"))
        self.cache.remember(old, "alice@example.edu", b"pw")  # finished late
        self.assertFalse(self.cache.verified(current, "alice@example.edu", b"pw"))
        self.assertEqual(len(self.cache), 0)

    def test_keeps_no_password(self) -> None:
        self.check()
        [digest] = list(self.cache._entries)
        self.assertEqual(len(digest), 32)
        self.assertNotIn(PASSWORD.encode(), digest)
        other = PasswordCache(60.0, self.clock)  # another process: another key
        self.assertNotEqual(other._digest("alice@example.edu", PASSWORD.encode()), digest)

    def test_bounded(self) -> None:
        cache = PasswordCache(60.0, self.clock, max_entries=3)
        table = object()
        for i in range(5):
            cache.remember(table, "a", b"%d" % i)
        self.assertEqual(len(cache), 3)
        self.assertFalse(cache.verified(table, "a", b"0"))
        self.assertTrue(cache.verified(table, "a", b"4"))

    def test_no_cache_by_default(self) -> None:
        directory, _ = self.directory(alice(), run_in_thread=self.runner)
        self.assertIsNone(directory.password_cache)
        for _ in range(2):
            self.successResultOf(directory.check_password("alice@example.edu",
                                                          PASSWORD.encode()))
        self.assertEqual(self.runner.derivations(), 2)


class ConfigTests(ConfigTestMixin, SynchronousTestCase):
    def test_off_by_default(self) -> None:
        self.assertEqual(AuthConfig().cache_ttl, 0.0)
        self.assertEqual(parse_text(self.text(), self.dir).auth.cache_ttl, 0.0)

    def test_setting(self) -> None:
        config = parse_text(self.text(extra="[auth]\ncache_ttl = 300\n"), self.dir)
        self.assertEqual(config.auth.cache_ttl, 300.0)

    def test_negative_refused(self) -> None:
        self.assertProblem(self.text(extra="[auth]\ncache_ttl = -1\n"), "auth.cache_ttl",
                           "must not be negative")
