# -*- test-case-name: tests.test_throttle -*-
"""
Login throttling that slows guessing without locking out the innocent.

Failed attempts are counted per client address, per claimed account and per
(address, account) pair, in a sliding window (L{ThrottleSettings.window_seconds}).
After L{ThrottleSettings.free_failures} counted failures each further failure
is answered after a delay that doubles up to a cap (like Dovecot's auth
penalty); past L{ThrottleSettings.pair_ban_after} the pair, and past
L{ThrottleSettings.address_ban_after} the whole address, is refused for a while
with a temporary error.  Accounts are never banned (anyone could lock anyone
out); their count only raises the delay of failures against them.

Why the innocent stay in:
  - A failure whose password fingerprint was already counted for that pair in
    the window does not count again: a phone retrying a stale password after a
    password change counts once, so it cannot get an office's NAT address
    banned.
  - A success forgives that pair's failures in all three counters (but not
    other accounts' failures from the same address).
  - Trusted networks are exempt; bans expire by themselves.
  - IPv6 addresses are grouped by prefix (default /64, what one host or site
    usually holds), so an attacker cannot step through its own /64.

Everything here is decision logic on the injected clock; it never sleeps.  The
caller applies the delay L{Throttle.failed} returns (see
L{gateway.auth.checkers}).

Bans may be persisted in a small JSON file (L{BANS_FILENAME} in the state
directory) so a restart does not lift them.  C{mailgateway auth unban} edits
that file (L{unban_in_file}); the gateway merges the file with its own state
every few seconds (L{Throttle.keep}), a three-way merge so that neither side's
change is lost.  File format::

    {"version": 1, "bans": [{"address": "192.0.2.7", "account": null,
                             "until": 1767225600.0}, ...]}

C{account} null is an address ban; otherwise a pair ban.  C{until} is in the
clock's seconds (the reactor's: POSIX time).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from gateway.auth.files import atomic_write, locked
from gateway.config import ThrottleConfig

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
#: C{(address key, account)}; account C{None} is an address ban.
BanKey = tuple[str, Union[str, None]]

BANS_FILENAME = "auth-bans.json"
#: The defaults live once, in the configuration's schema.
_DEFAULTS = ThrottleConfig()
_log = Logger()


@dataclass(frozen=True)
class ThrottleSettings:
    """
    All limits, with safe defaults.  Times are in seconds.

    @ivar free_failures: counted failures answered without delay.
    @ivar delay_base: the first delay; each further failure doubles it.
    @ivar delay_cap: the longest delay.
    @ivar pair_ban_after: counted failures of one (address, account) pair in
        the window that ban the pair.
    @ivar address_ban_after: counted failures from one address (all accounts)
        in the window that ban the address.
    @ivar window_seconds: how long a failure is remembered.
    @ivar trusted_networks: addresses never delayed, counted or banned.
    @ivar ipv6_prefix: IPv6 addresses are counted per network of this length.
    @ivar max_tracked: the most entries kept per table (pairs, addresses,
        accounts, bans); the least recently active are dropped first.
    """

    free_failures: int = _DEFAULTS.free_failures
    delay_base: float = _DEFAULTS.delay_base
    delay_cap: float = _DEFAULTS.delay_cap
    pair_ban_after: int = _DEFAULTS.pair_ban_after
    pair_ban_seconds: float = _DEFAULTS.ban_seconds
    address_ban_after: int = _DEFAULTS.address_ban_after
    address_ban_seconds: float = _DEFAULTS.ban_seconds
    window_seconds: float = _DEFAULTS.window_seconds
    trusted_networks: tuple[Network, ...] = ()
    ipv6_prefix: int = 64
    max_tracked: int = 100_000

    def __post_init__(self) -> None:
        problems = [
            name
            for name in ("pair_ban_after", "address_ban_after", "max_tracked")
            if getattr(self, name) < 1
        ]
        problems += [
            name
            for name in ("delay_base", "delay_cap", "window_seconds", "free_failures")
            if getattr(self, name) < 0
        ]
        if not 0 <= self.ipv6_prefix <= 128:
            problems.append("ipv6_prefix")
        if problems:
            raise ValueError(f"invalid throttle settings: {', '.join(problems)}")

    @classmethod
    def from_config(cls, config: ThrottleConfig,
                    trusted_networks: Iterable[Network] = ()) -> ThrottleSettings:
        """From L{gateway.config.ThrottleConfig} (one C{ban_seconds} for both bans)."""
        return cls(free_failures=config.free_failures, delay_base=config.delay_base,
                   delay_cap=config.delay_cap, pair_ban_after=config.pair_ban_after,
                   pair_ban_seconds=config.ban_seconds, address_ban_after=config.address_ban_after,
                   address_ban_seconds=config.ban_seconds, window_seconds=config.window_seconds,
                   trusted_networks=tuple(trusted_networks))


@dataclass(frozen=True)
class Verdict:
    """
    The answer of L{Throttle.check}.

    @ivar retry_after: seconds until the ban ends (0 when allowed).
    @ivar scope: C{"address"} or C{"pair"} when banned.
    """

    allowed: bool
    retry_after: float = 0.0
    scope: str | None = None


ALLOWED = Verdict(True)


@dataclass
class _Pair:
    failures: deque[float]
    prints: dict[bytes, float] = field(default_factory=dict)


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _address_matches(key: str, target: str) -> bool:
    """Does the address key C{key} fall in (or contain) C{target}?"""
    try:
        mine = ipaddress.ip_network(key, strict=False)
        theirs = ipaddress.ip_network(target.strip("[]"), strict=False)
    except ValueError:
        return key == target
    return mine.version == theirs.version and mine.overlaps(theirs)  # type: ignore[arg-type]


def _is_address(target: str) -> bool:
    try:
        ipaddress.ip_network(target.strip("[]"), strict=False)
    except ValueError:
        return False
    return True


class Throttle:
    """
    The counters, the bans, and the decisions.

    @ivar clock: the L{IReactorTime} all times come from (checkers use it to
        apply delays).
    """

    def __init__(
        self, clock: IReactorTime, settings: ThrottleSettings = ThrottleSettings()
    ) -> None:
        self.clock = clock
        self.settings = settings
        depth = max(settings.pair_ban_after, settings.address_ban_after) + 16
        self._depth = depth
        self._pairs: dict[BanKey, _Pair] = {}
        self._addresses: dict[str, deque[tuple[float, str]]] = {}
        self._accounts: dict[str, deque[tuple[float, str]]] = {}
        self._bans: dict[BanKey, float] = {}
        self._synced: dict[BanKey, float] = {}  # the ban file at the last sync
        self._last_prune = clock.seconds()
        self._last_error: str | None = None

    # -- keys -----------------------------------------------------------

    def address_key(self, address: str) -> str:
        """The key an address is counted under (IPv6 grouped by prefix)."""
        ip = _ip(address)
        if ip is None:
            return address
        if isinstance(ip, ipaddress.IPv6Address) and self.settings.ipv6_prefix < 128:
            net = ipaddress.ip_network(f"{ip}/{self.settings.ipv6_prefix}", strict=False)
            return str(net)
        return str(ip)

    def trusted(self, address: str) -> bool:
        ip = _ip(address)
        return ip is not None and any(ip in net for net in self.settings.trusted_networks)

    @staticmethod
    def _account_key(account: str | None) -> str:
        return (account or "").lower()

    # -- decisions ------------------------------------------------------

    def check(self, address: str, account: str | None, *, trusted: bool = False) -> Verdict:
        """May this address try to log in to this account now?"""
        if trusted or self.trusted(address):
            return ALLOWED
        now = self.clock.seconds()
        key = self.address_key(address)
        for ban, scope in (((key, None), "address"), ((key, self._account_key(account)), "pair")):
            until = self._bans.get(ban)
            if until is None:
                continue
            if until <= now:
                del self._bans[ban]
                continue
            return Verdict(False, until - now, scope)
        return ALLOWED

    def failed(
        self,
        address: str,
        account: str | None,
        fingerprint: bytes | None = None,
        *,
        trusted: bool = False,
    ) -> float:
        """
        Record a failed login.

        @param fingerprint: a digest of the tried password
            (L{gateway.auth.verifiers.password_fingerprint}), or C{None} when
            the mechanism has none; a fingerprint already counted for this pair
            in the window does not count again.
        @return: the delay in seconds to wait before answering.
        """
        if trusted or self.trusted(address):
            return 0.0
        s = self.settings
        now = self.clock.seconds()
        addr, acct = self.address_key(address), self._account_key(account)
        pair = self._touch(self._pairs, (addr, acct), lambda: _Pair(deque(maxlen=self._depth)))
        counted = True
        if fingerprint is not None:
            seen = pair.prints.pop(fingerprint, None)
            counted = seen is None or seen <= now - s.window_seconds
            pair.prints[fingerprint] = now
            while len(pair.prints) > self._depth:
                del pair.prints[next(iter(pair.prints))]
        by_addr = self._touch(self._addresses, addr, lambda: deque(maxlen=self._depth))
        by_acct = self._touch(self._accounts, acct, lambda: deque(maxlen=self._depth))
        if counted:
            pair.failures.append(now)
            by_addr.append((now, acct))
            by_acct.append((now, addr))
        n_pair = self._recent(pair.failures, now, lambda t: t)
        n_addr = self._recent(by_addr, now, lambda e: e[0])
        n_acct = self._recent(by_acct, now, lambda e: e[0])
        if n_pair >= s.pair_ban_after:
            self._bans[(addr, acct)] = now + s.pair_ban_seconds
        if n_addr >= s.address_ban_after:
            self._bans[(addr, None)] = now + s.address_ban_seconds
        self._bound(now)
        return self.delay_for(max(n_pair, n_addr, n_acct))

    def delay_for(self, failures: int) -> float:
        """The delay after C{failures} counted failures."""
        s = self.settings
        extra = failures - s.free_failures
        if extra <= 0:
            return 0.0
        return float(min(s.delay_cap, s.delay_base * 2 ** min(extra - 1, 64)))

    def succeeded(self, address: str, account: str, *, trusted: bool = False) -> None:
        """A login succeeded: forgive this pair's failures everywhere."""
        if trusted or self.trusted(address):
            return
        addr, acct = self.address_key(address), self._account_key(account)
        self._forget(addr, acct)

    def unban(self, target: str) -> int:
        """
        Lift the bans of an address (or network) or of an account, and forget
        its failures.  Bans lifted here are removed from the ban file at the
        next sync.

        @return: the number of bans lifted.
        """
        matching = [k for k in self._bans if _ban_matches(k, target)]
        for k in matching:
            del self._bans[k]
        if _is_address(target):
            for k in [k for k in self._pairs if _address_matches(k[0], target)]:
                self._forget(*k)
            for a in [a for a in self._addresses if _address_matches(a, target)]:
                del self._addresses[a]
        else:
            acct = self._account_key(target)
            for k in [k for k in self._pairs if k[1] == acct]:
                self._forget(*k)
            self._accounts.pop(acct, None)
        return len(matching)

    # -- memory ---------------------------------------------------------

    @staticmethod
    def _touch(table: dict[Any, Any], key: Any, make: Callable[[], Any]) -> Any:
        # Re-insert so dict order is least recently active first.
        value = table.pop(key, None)
        table[key] = make() if value is None else value
        return table[key]

    def _recent(self, entries: deque[Any], now: float, when: Callable[[Any], float]) -> int:
        horizon = now - self.settings.window_seconds
        while entries and when(entries[0]) <= horizon:
            entries.popleft()
        return len(entries)

    def _forget(self, addr: str, acct: str | None) -> None:
        self._pairs.pop((addr, acct), None)
        sides: tuple[tuple[dict[Any, Any], Any, Any], ...] = (
            (self._addresses, addr, acct), (self._accounts, acct, addr))
        for table, key, other in sides:
            entries = table.get(key)
            if entries is not None:
                kept = [e for e in entries if e[1] != other]
                entries.clear()
                entries.extend(kept)

    def _bound(self, now: float) -> None:
        if now - self._last_prune >= min(60.0, self.settings.window_seconds):
            self.prune()
        cap = self.settings.max_tracked
        tables: tuple[dict[Any, Any], ...] = (self._pairs, self._addresses, self._accounts)
        for table in tables:
            while len(table) > cap:
                del table[next(iter(table))]
        if len(self._bans) > cap:
            # Keep address bans and the longest pair bans.
            order = sorted(self._bans, key=lambda k: (k[1] is None, self._bans[k]))
            for k in order[: len(self._bans) - cap]:
                del self._bans[k]

    def prune(self) -> None:
        """Forget expired bans and failures older than the window."""
        now = self.clock.seconds()
        self._last_prune = now
        horizon = now - self.settings.window_seconds
        for k in [k for k, until in self._bans.items() if until <= now]:
            del self._bans[k]
        for k, p in list(self._pairs.items()):
            self._recent(p.failures, now, lambda t: t)
            p.prints = {fp: t for fp, t in p.prints.items() if t > horizon}
            if not p.failures and not p.prints:
                del self._pairs[k]
        for table in (self._addresses, self._accounts):
            for key, entries in list(table.items()):
                if not self._recent(entries, now, lambda e: e[0]):
                    del table[key]

    def tracked(self) -> int:
        """How many entries the throttle holds (for tests and metrics)."""
        return len(self._pairs) + len(self._addresses) + len(self._accounts) + len(self._bans)

    def bans(self) -> dict[BanKey, float]:
        """The current bans: C{{(address key, account or None): until}}."""
        now = self.clock.seconds()
        return {k: v for k, v in self._bans.items() if v > now}

    # -- persistence ----------------------------------------------------

    def save(self, path: str, *, fsync: Callable[[int], None] = os.fsync,
             replace: Callable[[str, str], None] = os.replace) -> None:
        """Merge the bans with the file at C{path} and write it (blocking)."""
        mine = self.bans()
        self._adopt(sync_ban_file(path, mine, dict(self._synced), self.clock.seconds(),
                                  fsync=fsync, replace=replace), mine)

    def load(self, path: str) -> None:
        """Merge the file at C{path} into the bans without writing (blocking)."""
        mine = self.bans()
        now = self.clock.seconds()
        self._adopt(merge_bans(read_bans(path), mine, dict(self._synced), now), mine)

    def keep(
        self,
        path: str,
        interval: float = 2.0,
        run_in_thread: Callable[..., Deferred[Any]] | None = None,
    ) -> LoopingCall:
        """
        Every C{interval} seconds of the clock, merge the bans with the file
        at C{path} in a thread: new bans reach the disk, bans lifted in the
        file (C{mailgateway auth unban}) are lifted here.  The first sync
        runs at once, so this also restores the bans after a restart.

        @return: the running L{LoopingCall}; stop it on shutdown.
        """
        runner = run_in_thread or deferToThread

        def tick() -> Deferred[Any]:
            mine = self.bans()
            d = runner(sync_ban_file, path, mine, dict(self._synced), self.clock.seconds())
            d.addCallback(self._adopt, mine)
            d.addErrback(self._sync_failed, path)
            return d

        loop = LoopingCall(tick)
        loop.clock = self.clock
        loop.start(interval, now=True)
        return loop

    def _sync_failed(self, failure: Any, path: str) -> None:
        message = failure.getErrorMessage()
        if message != self._last_error:  # log once per distinct problem
            _log.error("cannot sync ban file {path}: {message}", path=path, message=message)
        self._last_error = message

    def _adopt(self, result: dict[BanKey, float], snapshot: dict[BanKey, float]) -> None:
        """Take the merged file state, keeping changes made since C{snapshot}."""
        self._last_error = None
        current = self.bans()
        merged = dict(result)
        for k, until in current.items():
            if k not in snapshot:  # banned while the file was being synced
                merged[k] = max(until, merged.get(k, 0.0))
        for k in snapshot:
            if k not in current:  # lifted while the file was being synced
                merged.pop(k, None)
        for k in snapshot:
            if k not in result and k in current:  # lifted in the file
                addr, acct = k
                if acct is None:
                    self._addresses.pop(addr, None)
                else:
                    self._forget(addr, acct)
        self._bans = merged
        self._synced = dict(result)


def _ban_matches(key: BanKey, target: str) -> bool:
    if _is_address(target):
        return _address_matches(key[0], target)
    return key[1] is not None and key[1] == target.lower()


def merge_bans(
    theirs: dict[BanKey, float], mine: dict[BanKey, float], base: dict[BanKey, float], now: float
) -> dict[BanKey, float]:
    """
    Three-way merge of ban sets: C{base} is what both sides last agreed on.
    A ban new on either side is kept; one lifted on either side is lifted.
    """
    out = dict(theirs)
    for k, until in mine.items():
        if k not in base or k in out:
            out[k] = max(until, out.get(k, 0.0))
    for k, until in base.items():
        if k not in mine and k in out and out[k] <= until:
            del out[k]
    return {k: v for k, v in out.items() if v > now}


def read_bans(path: str) -> dict[BanKey, float]:
    """Read a ban file; a missing file holds no bans.  @raise ValueError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    try:
        doc = json.loads(data)
        if doc.get("version") != 1:
            raise ValueError("unsupported version")
        out: dict[BanKey, float] = {}
        for entry in doc["bans"]:
            address, account, until = entry["address"], entry["account"], entry["until"]
            if not isinstance(address, str) or not isinstance(account, (str, type(None))):
                raise ValueError("bad entry")
            out[(address, account)] = float(until)
        return out
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a valid ban file ({e})") from None


def write_bans(path: str, bans: dict[BanKey, float], *,
               fsync: Callable[[int], None] = os.fsync,
               replace: Callable[[str, str], None] = os.replace) -> None:
    """Write a ban file atomically (temp file 0600, fsync, rename, fsync dir)."""
    entries = [{"address": a, "account": c, "until": u} for (a, c), u in sorted(
        bans.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))]
    data = json.dumps({"version": 1, "bans": entries}, indent=1).encode() + b"\n"
    atomic_write(path, data, fsync=fsync, replace=replace)


def sync_ban_file(
    path: str, mine: dict[BanKey, float], base: dict[BanKey, float], now: float, *,
    fsync: Callable[[int], None] = os.fsync,
    replace: Callable[[str, str], None] = os.replace,
) -> dict[BanKey, float]:
    """Merge C{mine} into the ban file under its lock; write if it changed."""
    with locked(path):
        theirs = read_bans(path)
        merged = merge_bans(theirs, mine, base, now)
        if merged != theirs:
            write_bans(path, merged, fsync=fsync, replace=replace)
        return merged


def unban_in_file(path: str, target: str, *,
                  fsync: Callable[[int], None] = os.fsync,
                  replace: Callable[[str, str], None] = os.replace) -> int:
    """
    Lift the bans of an address (or network) or account in the ban file.

    @return: how many bans were lifted.
    """
    with locked(path):
        bans = read_bans(path)
        kept = {k: v for k, v in bans.items() if not _ban_matches(k, target)}
        if len(kept) != len(bans):
            write_bans(path, kept, fsync=fsync, replace=replace)
        return len(bans) - len(kept)


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """C{["127.0.0.0/8", "::1"]} -> networks, for L{ThrottleSettings}."""
    return tuple(ipaddress.ip_network(t, strict=False) for t in texts)
