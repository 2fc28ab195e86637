# -*- test-case-name: tests.test_directory -*-
"""
The users file: its JSON format, its validation and its atomic rewrite.

L{gateway.auth.directory.FileDirectory} serves logins from it; the admin
commands (L{gateway.auth.usercli}) edit it through L{UsersFile}.

The file (mode 0600 or stricter, else it is refused)::

    {"version": 1,
     "accounts": {
       "alice@example.edu": {
         "enabled": true,                          # optional, default true
         "addresses": ["a.smith@example.edu"],     # aliases it receives and sends as
         "scram": {"SHA-256": {"salt": "<base64>", "iterations": 4096,
                               "stored_key": "<base64>", "server_key": "<base64>"},
                   "SHA-1": {...}},
         "legacy": {"mechanisms": ["APOP"], "secret": "<password>"},   # optional
         "otp": {"algorithm": "md5", "seed": "ke1234", "sequence": 499,
                 "key": "<16 hex digits>"},                           # optional
         "may_act_for": ["shared@example.edu"],    # SASL authzid it may assume
         "certificate_names": ["Alice Smith"]}}}   # EXTERNAL: names mapped to it

Only C{scram} keys are stored by default: nothing in them lets a reader log
in.  C{legacy.secret} is password-equivalent and is present only when the
operator enabled a legacy mechanism for the account, or (with C{mechanisms:
[]}) for an account imported without SCRAM keys: its first PLAIN/LOGIN login
derives and stores the keys and drops such a secret.

Account names are C{local@domain} and, like Dovecot's default
(C{auth_username_format = %Lu}), compared case-insensitively in both parts:
names are lower-cased (after NFC) when loaded and when looked up.  A bare user
name gets the configured default domain.

Errors name the JSON Pointer (RFC 6901) of the faulty value, all at once.
Every write takes an exclusive lock (C{<file>.lock}), re-reads the file,
applies the change and replaces the file atomically, so the gateway and the
admin commands never undo each other's changes.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.auth.files import atomic_write, locked
from gateway.auth.verifiers import ALGORITHMS, OTPState, ScramKeys

LEGACY_MECHANISMS = ("APOP", "CRAM-MD5", "DIGEST-MD5")
OTP_ALGORITHMS = ("md5", "sha1")
CERTIFICATE_RULES = ("email", "cn")
_DIGEST_SIZES = {"SHA-1": 20, "SHA-256": 32}
_ACCOUNT_FIELDS = {"enabled", "addresses", "scram", "legacy", "otp", "may_act_for",
                   "certificate_names"}
T = TypeVar("T")
Signature = tuple[int, int, int, int]


class UsersFileError(Exception):
    """The users file cannot be used.  @ivar problems: C{(pointer, message)} pairs."""

    def __init__(self, path: str, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join([f"{self.path}: {len(self.problems)} error(s):"]
                         + [f"  {where or '/'}: {what}" for where, what in self.problems])

    def one_line(self) -> str:
        return f"{self.path}: " + "; ".join(
            f"{where}: {what}" if where else what for where, what in self.problems)


@dataclass(frozen=True)
class Legacy:
    mechanisms: tuple[str, ...]
    secret: str


@dataclass(frozen=True)
class Account:
    """One account, as loaded; C{name} is its canonical id."""

    name: str
    enabled: bool = True
    addresses: tuple[str, ...] = ()
    scram: tuple[ScramKeys, ...] = ()
    legacy: Legacy | None = None
    otp: OTPState | None = None
    may_act_for: tuple[str, ...] = ()
    certificate_names: tuple[str, ...] = ()

    def scram_keys(self, algorithm: str) -> ScramKeys | None:
        return next((k for k in self.scram if k.algorithm == algorithm), None)


def canonical(name: str) -> str:
    return unicodedata.normalize("NFC", name).lower()


def address_problem(name: str) -> str | None:
    """What is wrong with C{name} as C{local@domain}, or C{None}."""
    local, at, domain = name.rpartition("@")
    if len(name) > 254:
        return "is longer than 254 characters"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 or c in '<>,;"\\' for c in name):
        return "contains white space, control or forbidden characters"
    if not (at and local and domain) or "@" in local:
        return "is not of the form local@domain"
    if any(not label for label in domain.split(".")):
        return "has an empty domain label"
    return None


def _ptr(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


class _Object(dict):  # type: ignore[type-arg]
    """A JSON object that remembers the keys it saw twice."""

    duplicates: list[str]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object()
    obj.duplicates = []
    for k, v in pairs:
        if k in obj:
            obj.duplicates.append(k)
        obj[k] = v
    return obj


class _Reader:
    """Collects every problem instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def add(self, where: tuple[str, ...], what: str) -> None:
        self.problems.append((_ptr(*where), what))

    def obj(self, value: Any, where: tuple[str, ...], fields: set[str] | None) -> bool:
        if not isinstance(value, dict):
            self.add(where, "must be an object")
            return False
        for k in getattr(value, "duplicates", ()):
            self.add(where + (k,), "appears more than once")
        for k in sorted(set(value) - fields if fields is not None else ()):
            self.add(where + (k,), "unknown key")
        return True

    def b64(self, value: Any, where: tuple[str, ...], size: int | None = None) -> bytes:
        if value is None:
            self.add(where, "is missing")
            return b""
        try:
            raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
        except ValueError:  # binascii.Error, or non-ASCII text
            raw = b""
        if not raw or (size is not None and len(raw) != size):
            self.add(where, f"must be {size or 'some'} bytes in base64")
        return raw

    def integer(self, value: Any, where: tuple[str, ...], minimum: int) -> int:
        if value is None:
            self.add(where, "is missing")
        elif isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.add(where, f"must be an integer >= {minimum}")
        else:
            return int(value)
        return minimum

    def names(self, value: Any, where: tuple[str, ...], addresses: bool = True) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.add(where, "must be a list of non-empty strings")
            return ()
        out = [canonical(v) if addresses else v for v in value]
        for i, v in enumerate(out):
            problem = address_problem(v) if addresses else None
            if problem:
                self.add(where + (str(i),), f"{v!r} {problem}")
            elif v in out[:i]:
                self.add(where + (str(i),), f"{v!r} is listed twice")
        return tuple(out)

    def account(self, name: str, obj: Any) -> Account | None:
        at, before = ("accounts", name), len(self.problems)
        if not self.obj(obj, at, _ACCOUNT_FIELDS):
            return None
        enabled = obj.get("enabled", True)
        if not isinstance(enabled, bool):
            self.add(at + ("enabled",), "must be true or false")
        scram = []
        if self.obj(obj.get("scram", {}), at + ("scram",), set(ALGORITHMS)):
            for alg, k in obj.get("scram", {}).items():
                w: tuple[str, ...] = at + ("scram", alg)
                if alg in ALGORITHMS and self.obj(k, w, {"salt", "iterations", "stored_key",
                                                         "server_key"}):
                    scram.append(ScramKeys(
                        name, alg, self.b64(k.get("salt"), w + ("salt",)),
                        self.integer(k.get("iterations"), w + ("iterations",), 1),
                        self.b64(k.get("stored_key"), w + ("stored_key",), _DIGEST_SIZES[alg]),
                        self.b64(k.get("server_key"), w + ("server_key",), _DIGEST_SIZES[alg])))
        legacy = None
        if "legacy" in obj and self.obj(obj["legacy"], at + ("legacy",), {"mechanisms", "secret"}):
            mechs, secret = obj["legacy"].get("mechanisms"), obj["legacy"].get("secret")
            if not isinstance(mechs, list) or not all(m in LEGACY_MECHANISMS for m in mechs) \
                    or len(set(mechs)) != len(mechs):
                self.add(at + ("legacy", "mechanisms"),
                         f"must be a list of distinct names among {', '.join(LEGACY_MECHANISMS)}")
                mechs = []
            elif not mechs and scram:
                self.add(at + ("legacy",), "a secret without a legacy mechanism is kept only "
                         "for accounts without SCRAM keys; remove it")
            if not isinstance(secret, str) or not secret:
                self.add(at + ("legacy", "secret"), "must be a non-empty string")
            legacy = Legacy(tuple(sorted(mechs)), secret if isinstance(secret, str) else "")
        otp, w = None, at + ("otp",)
        if "otp" in obj and self.obj(obj["otp"], w, {"algorithm", "seed", "sequence", "key"}):
            o = obj["otp"]
            if o.get("algorithm") not in OTP_ALGORITHMS:
                self.add(w + ("algorithm",), "must be md5 or sha1")
            seed = o.get("seed")
            if not (isinstance(seed, str) and seed.isascii() and seed.isalnum()
                    and 1 <= len(seed) <= 16):
                self.add(w + ("seed",), "must be 1 to 16 letters and digits (RFC 2289)")
                seed = ""
            try:
                key = bytes.fromhex(o.get("key"))
            except (TypeError, ValueError):
                key = b""
            if len(key) != 8:
                self.add(w + ("key",), "must be 8 bytes in hex (16 hex digits)")
            otp = OTPState(name, o.get("algorithm"), seed.lower(),
                           self.integer(o.get("sequence"), w + ("sequence",), 0), key)
        addresses = self.names(obj.get("addresses", []), at + ("addresses",))
        acts = self.names(obj.get("may_act_for", []), at + ("may_act_for",))
        certs = self.names(obj.get("certificate_names", []), at + ("certificate_names",), False)
        if len(self.problems) > before:
            return None
        return Account(name, enabled, addresses, tuple(sorted(scram, key=lambda k: k.algorithm)),
                       legacy, otp, acts, certs)


class UserTable:
    """The accounts of one load, with the indexes lookups need."""

    def __init__(self, accounts: Mapping[str, Account]) -> None:
        self.accounts = dict(sorted(accounts.items()))
        self.by_address: dict[str, str] = {}
        self.by_certificate: dict[str, str] = {}
        self.problems: list[tuple[str, str]] = []
        self.by_address.update((name, name) for name in self.accounts)
        for name, acct in self.accounts.items():
            for i, addr in enumerate(acct.addresses):
                owner = self.by_address.setdefault(addr, name)
                if owner != name or addr == name:
                    self.problems.append((_ptr("accounts", name, "addresses", str(i)), (
                        "is the account's own name" if addr == name
                        else f"{addr!r} is already the address of {owner}")))
            for i, cert in enumerate(acct.certificate_names):
                owner = self.by_certificate.setdefault(cert.lower(), name)
                if owner != name:
                    self.problems.append((_ptr("accounts", name, "certificate_names", str(i)),
                                          f"{cert!r} already maps to {owner}"))
            for i, other in enumerate(acct.may_act_for):
                if other not in self.accounts or other == name:
                    self.problems.append((_ptr("accounts", name, "may_act_for", str(i)),
                                          f"{other!r} is not another account"))


def parse_users(data: bytes, path: str = "users file") -> UserTable:
    """Parse a users file.  @raise UsersFileError: listing every problem."""
    try:
        doc = json.loads(data, object_pairs_hook=_pairs_hook)
    except (ValueError, UnicodeDecodeError) as e:
        raise UsersFileError(path, [("", f"not valid JSON: {e}")]) from None
    r = _Reader()
    accounts: dict[str, Account] = {}
    if r.obj(doc, (), {"version", "accounts"}):
        if doc.get("version") != 1:
            r.add(("version",), "must be 1")
        if r.obj(doc.get("accounts"), ("accounts",), None):
            for name, obj in doc["accounts"].items():
                problem = address_problem(name)
                if problem:
                    r.add(("accounts", name), f"account name {problem}")
                elif canonical(name) in accounts:
                    r.add(("accounts", name), "differs only in case from another account")
                elif (acct := r.account(canonical(name), obj)) is not None:
                    accounts[acct.name] = acct
    table = UserTable(accounts)
    if r.problems or table.problems:
        raise UsersFileError(path, r.problems + table.problems)
    return table


def dump_users(accounts: Iterable[Account]) -> bytes:
    """The users file text for C{accounts}."""
    b64 = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
    out: dict[str, Any] = {}
    for a in accounts:
        entry: dict[str, Any] = {"enabled": a.enabled, "addresses": list(a.addresses)}
        entry["scram"] = {k.algorithm: {"salt": b64(k.salt), "iterations": k.iterations,
                                        "stored_key": b64(k.stored_key),
                                        "server_key": b64(k.server_key)} for k in a.scram}
        if a.legacy is not None:
            entry["legacy"] = {"mechanisms": list(a.legacy.mechanisms), "secret": a.legacy.secret}
        if a.otp is not None:
            entry["otp"] = {"algorithm": a.otp.algorithm, "seed": a.otp.seed,
                            "sequence": a.otp.sequence, "key": a.otp.key.hex()}
        entry["may_act_for"] = list(a.may_act_for)
        entry["certificate_names"] = list(a.certificate_names)
        out[a.name] = entry
    doc = {"version": 1, "accounts": out}
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"


class UsersFile:
    """
    Load and atomically rewrite the users file.

    @param fsync: and C{replace}: the durable-write steps (test seams).
    """

    def __init__(self, path: str, *, fsync: Callable[[int], None] = os.fsync,
                 replace: Callable[[str, str], None] = os.replace) -> None:
        self.path = os.fspath(path)
        self._fsync, self._replace = fsync, replace

    def signature(self) -> Signature | None:
        """What changes when the file is replaced or edited; C{None} if missing."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def load(self) -> UserTable:
        return self.load_with_signature()[0]

    def load_with_signature(self) -> tuple[UserTable, Signature]:
        """@raise UsersFileError: unreadable, too open, or invalid."""
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise UsersFileError(self.path, [("", "is not a regular file")])
                if st.st_mode & 0o077:
                    raise UsersFileError(self.path, [("", (
                        f"mode {stat.S_IMODE(st.st_mode):04o} lets group or others in; "
                        "it must be 0600 or stricter (chmod 600)"))])
                data = f.read()
        except OSError as e:
            raise UsersFileError(self.path, [("", e.strerror or str(e))]) from None
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        return parse_users(data, self.path), sig

    def save(self, accounts: Mapping[str, Account]) -> Signature:
        """Validate and write C{accounts} atomically.  @raise UsersFileError."""
        table = UserTable(accounts)
        if table.problems:
            raise UsersFileError(self.path, table.problems)
        atomic_write(self.path, dump_users(table.accounts.values()),
                     fsync=self._fsync, replace=self._replace)
        sig = self.signature()
        assert sig is not None
        return sig

    def update(self, mutate: Callable[[dict[str, Account]], T],
               create: bool = False) -> tuple[T, UserTable, Signature | None]:
        """
        Under the file's lock: load, let C{mutate} change the accounts in
        place, and save if anything changed.  Blocking: in the gateway this
        runs in a thread.

        @param create: start from no accounts if the file does not exist.
        @return: C{(mutate's result, the new table, the file's signature)}.
        """
        with locked(self.path):
            if create and not os.path.exists(self.path):
                table, sig = UserTable({}), None
            else:
                table, sig = self.load_with_signature()
            accounts = dict(table.accounts)
            result = mutate(accounts)
            if accounts != table.accounts or sig is None:
                sig = self.save(accounts)
                table = UserTable(accounts)
            return result, table, sig
