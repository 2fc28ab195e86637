"""
Tests for L{gateway.auth.throttle}.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.throttle import (
    ALLOWED,
    Throttle,
    ThrottleSettings,
    merge_bans,
    read_bans,
    unban_in_file,
    write_bans,
)

NAT = "192.0.2.10"


def throttle(**settings: object) -> tuple[Throttle, Clock]:
    clock = Clock()
    clock.advance(1_000_000)
    return Throttle(clock, ThrottleSettings(**settings)), clock  # type: ignore[arg-type]


def synchronously(f, *a, **kw):  # type: ignore[no-untyped-def]
    return maybeDeferred(f, *a, **kw)


class DelayTests(SynchronousTestCase):
    def test_defaults_are_safe(self) -> None:
        s = ThrottleSettings()
        self.assertEqual((s.free_failures, s.delay_base, s.delay_cap), (3, 2.0, 15.0))
        self.assertEqual((s.pair_ban_after, s.address_ban_after), (10, 30))
        self.assertEqual((s.pair_ban_seconds, s.window_seconds), (900.0, 3600.0))
        self.assertEqual(s.trusted_networks, ())

    def test_invalid_settings_refused(self) -> None:
        self.assertRaises(ValueError, ThrottleSettings, pair_ban_after=0)
        self.assertRaises(ValueError, ThrottleSettings, delay_cap=-1)

    def test_from_config(self) -> None:
        class Config:
            free_failures, delay_base, delay_cap = 1, 1.0, 4.0
            pair_ban_after, address_ban_after, ban_seconds, window_seconds = 5, 9, 60.0, 600.0

        nets = [ipaddress.ip_network("10.0.0.0/8")]
        s = ThrottleSettings.from_config(Config(), nets)
        self.assertEqual((s.pair_ban_seconds, s.address_ban_seconds, s.window_seconds),
                         (60.0, 60.0, 600.0))
        self.assertEqual(s.trusted_networks, tuple(nets))

    def test_delays_grow_and_cap(self) -> None:
        t, _ = throttle()
        delays = [t.failed(NAT, "alice@example.edu", bytes([i])) for i in range(9)]
        self.assertEqual(delays, [0, 0, 0, 2, 4, 8, 15, 15, 15])

    def test_failures_without_fingerprint_always_count(self) -> None:
        t, _ = throttle()
        delays = [t.failed(NAT, "alice@example.edu") for _ in range(5)]
        self.assertEqual(delays, [0, 0, 0, 2, 4])

    def test_account_count_raises_delay_from_any_address(self) -> None:
        """Guessing one account from many addresses is slowed too."""
        t, _ = throttle()
        for i in range(4):
            t.failed(f"198.51.100.{i}", "alice@example.edu")
        self.assertEqual(t.failed("198.51.100.99", "alice@example.edu"), 4.0)
        self.assertEqual(t.check("198.51.100.99", "alice@example.edu"), ALLOWED)

    def test_window_forgets(self) -> None:
        t, clock = throttle()
        for i in range(5):
            t.failed(NAT, "alice", bytes([i]))
        clock.advance(3601)
        self.assertEqual(t.failed(NAT, "alice", b"new"), 0.0)


class BanTests(SynchronousTestCase):
    def test_pair_ban_before_address_ban(self) -> None:
        t, clock = throttle()
        for i in range(9):
            t.failed(NAT, "alice", bytes([i]))
        self.assertEqual(t.check(NAT, "alice"), ALLOWED)
        t.failed(NAT, "alice", b"tenth")
        verdict = t.check(NAT, "alice")
        self.assertEqual((verdict.allowed, verdict.scope, verdict.retry_after),
                         (False, "pair", 900.0))
        self.assertTrue(t.check(NAT, "bob").allowed)
        # 20 more counted failures on other accounts: the address goes.
        for i in range(20):
            t.failed(NAT, f"user{i % 4}", bytes([i]))
        verdict = t.check(NAT, "bob")
        self.assertEqual((verdict.allowed, verdict.scope), (False, "address"))
        self.assertTrue(t.check("192.0.2.11", "bob").allowed)

    def test_stale_password_phone_counts_once(self) -> None:
        """50 tries of one stale password cannot ban the office's NAT address."""
        t, _ = throttle()
        delays = [t.failed(NAT, "alice", b"old-password-print") for _ in range(50)]
        self.assertEqual(set(delays), {0.0})
        self.assertTrue(t.check(NAT, "alice").allowed)
        for other in ("bob", "carol", "dave"):
            self.assertTrue(t.check(NAT, other).allowed)
            t.succeeded(NAT, other)

    def test_trusted_networks_exempt(self) -> None:
        t, _ = throttle(trusted_networks=(ipaddress.ip_network("10.0.0.0/8"),))
        delays = [t.failed("10.1.2.3", "alice") for _ in range(100)]
        self.assertEqual(set(delays), {0.0})
        self.assertTrue(t.check("10.1.2.3", "alice").allowed)
        self.assertEqual(t.tracked(), 0)
        # The caller's own judgement counts too.
        self.assertEqual([t.failed(NAT, "a", trusted=True) for _ in range(40)][-1], 0.0)
        self.assertTrue(t.check(NAT, "a").allowed)

    def test_bans_expire(self) -> None:
        t, clock = throttle()
        for i in range(10):
            t.failed(NAT, "alice", bytes([i]))
        self.assertFalse(t.check(NAT, "alice").allowed)
        clock.advance(899)
        self.assertEqual(t.check(NAT, "alice").retry_after, 1.0)
        clock.advance(1)
        self.assertTrue(t.check(NAT, "alice").allowed)

    def test_unban_address_and_account(self) -> None:
        t, _ = throttle()
        for i in range(30):
            t.failed(NAT, f"user{i % 3}", bytes([i]))
        self.assertFalse(t.check(NAT, "user0").allowed)
        self.assertEqual(t.unban(NAT), 4)  # the address ban and three pair bans
        self.assertTrue(t.check(NAT, "user0").allowed)
        self.assertEqual(t.failed(NAT, "user0", b"x"), 0.0)  # counters forgotten too
        for i in range(10):
            t.failed("203.0.113.5", "carol", bytes([i]))
        self.assertEqual(t.unban("Carol"), 1)
        self.assertTrue(t.check("203.0.113.5", "carol").allowed)
        self.assertEqual(t.unban("nobody"), 0)

    def test_success_resets_the_pair_only(self) -> None:
        t, _ = throttle()
        for i in range(9):
            t.failed(NAT, "alice", bytes([i]))
            t.failed(NAT, "mallory-target", bytes([i]))
        t.succeeded(NAT, "alice")
        self.assertEqual(t.failed(NAT, "alice", b"typo"), 15.0)  # the address still counts
        t.succeeded(NAT, "alice")
        t.failed(NAT, "mallory-target", b"tenth")
        self.assertFalse(t.check(NAT, "mallory-target").allowed)
        for i in range(9):
            t.failed(NAT, "alice", bytes([100 + i]))
        self.assertTrue(t.check(NAT, "alice").allowed)  # 9, not 19, for the pair

    def test_ipv6_grouped_by_prefix(self) -> None:
        t, _ = throttle()
        for i in range(10):
            t.failed(f"2001:db8:1:2::{i + 1:x}", "alice")
        self.assertFalse(t.check("2001:db8:1:2:ffff::1", "alice").allowed)
        self.assertTrue(t.check("2001:db8:1:3::1", "alice").allowed)
        self.assertEqual(t.address_key("::ffff:192.0.2.1"), "192.0.2.1")

    def test_pruning_keeps_memory_bounded(self) -> None:
        t, clock = throttle(max_tracked=50)
        for i in range(1000):
            t.failed(f"198.51.{i // 250}.{i % 250}", f"user{i}")
        self.assertLessEqual(t.tracked(), 150)
        clock.advance(3601)
        t.prune()
        self.assertEqual(t.tracked(), 0)


class PersistenceTests(SynchronousTestCase):
    def banned(self) -> tuple[Throttle, Clock]:
        t, clock = throttle()
        for i in range(30):
            t.failed(NAT, f"user{i % 3}", bytes([i]))
        return t, clock

    def test_round_trip(self) -> None:
        path = FilePath(self.mktemp()).path
        t, clock = self.banned()
        t.save(path)
        self.assertEqual(FilePath(path).getPermissions().shorthand(), "rw-------")
        doc = json.loads(FilePath(path).getContent())
        self.assertEqual(doc["version"], 1)
        self.assertEqual(len(doc["bans"]), 4)
        restarted = Throttle(clock, ThrottleSettings())
        restarted.load(path)
        self.assertEqual(restarted.bans(), t.bans())
        self.assertFalse(restarted.check(NAT, "nobody").allowed)

    def test_expired_bans_not_loaded(self) -> None:
        path = FilePath(self.mktemp()).path
        t, clock = self.banned()
        t.save(path)
        clock.advance(901)
        restarted = Throttle(clock, ThrottleSettings())
        restarted.load(path)
        self.assertEqual(restarted.bans(), {})

    def test_unban_in_file_then_keep_lifts_it(self) -> None:
        path = FilePath(self.mktemp()).path
        t, clock = self.banned()
        loop = t.keep(path, interval=2.0, run_in_thread=synchronously)
        self.addCleanup(loop.stop)
        self.assertEqual(len(read_bans(path)), 4)  # the first sync wrote them
        self.assertEqual(unban_in_file(path, NAT), 4)
        self.assertFalse(t.check(NAT, "user0").allowed)
        clock.advance(2)
        self.assertTrue(t.check(NAT, "user0").allowed)
        # A ban made afterwards reaches the file; the lifted ones stay lifted.
        for i in range(10):
            t.failed("203.0.113.9", "carol", bytes([i]))
        clock.advance(2)
        self.assertEqual(list(read_bans(path)), [("203.0.113.9", "carol")])

    def test_ban_made_during_a_sync_is_kept(self) -> None:
        path = FilePath(self.mktemp()).path
        pending: list[Any] = []

        def later(f: Any, *a: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append((f, a, d))
            return d

        t, clock = self.banned()
        loop = t.keep(path, interval=2.0, run_in_thread=later)
        self.addCleanup(loop.stop)
        for i in range(10):  # banned while the first sync is in its thread
            t.failed("203.0.113.9", "carol", bytes([i]))
        f, a, d = pending.pop()
        d.callback(f(*a))
        self.assertFalse(t.check("203.0.113.9", "carol").allowed)
        self.assertNotIn(("203.0.113.9", "carol"), read_bans(path))
        clock.advance(2)
        f, a, d = pending.pop()
        d.callback(f(*a))
        self.assertIn(("203.0.113.9", "carol"), read_bans(path))

    def test_merge_keeps_both_sides_changes(self) -> None:
        base = {("a", None): 100.0, ("b", None): 100.0}
        mine = {("a", None): 100.0, ("c", None): 100.0}  # b lifted here, c new
        theirs = {("b", None): 100.0, ("d", None): 100.0}  # a lifted there, d new
        self.assertEqual(merge_bans(theirs, mine, base, now=0.0),
                         {("c", None): 100.0, ("d", None): 100.0})

    def test_broken_file_is_not_overwritten(self) -> None:
        fp = FilePath(self.mktemp())
        fp.setContent(b"{not json")
        t, clock = self.banned()
        loop = t.keep(fp.path, run_in_thread=synchronously)
        self.addCleanup(loop.stop)
        self.assertEqual(fp.getContent(), b"{not json")
        self.assertFalse(t.check(NAT, "x").allowed)
        self.assertRaises(ValueError, read_bans, fp.path)

    def test_write_failure_leaves_old_file(self) -> None:
        path = FilePath(self.mktemp()).path
        write_bans(path, {("a", None): 5.0})

        def broken_fsync(fd: int) -> None:
            raise OSError("disk full")

        self.assertRaises(OSError, write_bans, path, {}, fsync=broken_fsync)
        self.assertEqual(read_bans(path), {("a", None): 5.0})
        self.assertEqual(len(FilePath(path).parent().children()), 1)
