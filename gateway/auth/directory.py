# -*- test-case-name: tests.test_directory -*-
"""
The user directory kept in one JSON file, behind L{IAuthBackend}.

Protocols only ever see L{IAuthBackend}; an LDAP or SQL directory replaces
L{FileDirectory} without touching them.  The file's format, its validation
and its atomic rewrite are L{gateway.auth.usersfile}'s; this module answers
the lookups and password checks from it, reloads it when it changes, and
writes through it (under its lock) what a login changes: SCRAM keys derived
on an imported account's first PLAIN/LOGIN login, the OTP sequence.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from zope.interface import implementer

from gateway.auth import otp as rfc2289
from gateway.auth.cache import PasswordCache
from gateway.auth.usersfile import (
    CERTIFICATE_RULES,
    Account,
    Signature,
    UsersFile,
    UsersFileError,
    UserTable,
    canonical,
)
from gateway.auth.verifiers import (
    ALGORITHMS,
    DEFAULT_ITERATIONS,
    OTPState,
    ScramKeys,
    derive_scram_keys,
    password_matches,
    secret_matches,
)
from gateway.interfaces import IAuthBackend, IOTPReinitialisation

T = TypeVar("T")


def legacy_matches(secret: str, password: bytes) -> bool:
    """Constant-time check of a password against a legacy secret."""
    # Compare digests so that the length of the secret does not leak either.
    return secret_matches(hashlib.sha256(secret.encode("utf-8")).digest(),
                          hashlib.sha256(password).digest())


def legacy_matches_slowly(secret: str, password: bytes, dummy: ScramKeys) -> bool:
    """
    L{legacy_matches}, after the key derivation every other check pays: an
    account holding only a legacy secret must not answer a wrong password
    sooner than an unknown account does (that would list such accounts).
    """
    password_matches(dummy, password)
    return legacy_matches(secret, password)


@implementer(IAuthBackend, IOTPReinitialisation)
class FileDirectory:
    """
    L{IAuthBackend} over a L{UsersFile}.  Loads it at construction (raising
    L{UsersFileError}); L{reload} (wire it to SIGHUP) and L{watch} pick up
    changes; a broken file on reload keeps the previous accounts.

    @param run_in_thread: runs hashing and file I/O off the reactor thread
        (like L{deferToThread}; tests pass a synchronous runner).
    @param certificate_rule: C{"email"} (SAN rfc822Name or subject
        emailAddress) or C{"cn"} (subject common name); either is looked up as
        an account name, then among the accounts' C{certificate_names}.
    @param password_cache: remembers recent successful password checks
        (L{gateway.auth.cache}; C{None}, the default, for none).
    """

    def __init__(self, users_file: UsersFile, *, default_domain: str | None = None,
                 certificate_rule: str = "email",
                 run_in_thread: Callable[..., Deferred[Any]] | None = None,
                 password_cache: PasswordCache | None = None,
                 log: Logger | None = None) -> None:
        if certificate_rule not in CERTIFICATE_RULES:
            raise ValueError(f"certificate_rule must be one of {CERTIFICATE_RULES}")
        self._file = users_file
        self._default_domain = canonical(default_domain) if default_domain else None
        self._rule = certificate_rule
        self._run: Callable[..., Deferred[Any]] = run_in_thread or deferToThread
        self._log = log or Logger()
        self._lock = DeferredLock()
        self._table, self._seen = users_file.load_with_signature()
        self._dummy_for: tuple[UserTable | None, ScramKeys | None] = (None, None)
        self.password_cache = password_cache

    # -- lookups (synchronous, for this class and admin use) -------------

    def canonical_name(self, name: str) -> str:
        name = canonical(name)
        if "@" not in name and self._default_domain:
            name = f"{name}@{self._default_domain}"
        return name

    def account(self, name: str) -> Account | None:
        """The account, enabled or not, or C{None}."""
        return self._table.accounts.get(self.canonical_name(name))

    def _enabled(self, name: str) -> Account | None:
        account = self.account(name)
        return account if account is not None and account.enabled else None

    def accounts(self) -> list[Account]:
        """Every account, sorted by name."""
        return list(self._table.accounts.values())

    def addresses_of(self, account: str) -> Deferred[tuple[str, ...]]:
        """@return: L{Deferred} firing with the account's name and aliases (or ())."""
        a = self.account(account)
        return succeed(() if a is None else (a.name,) + a.addresses)

    def account_for_address(self, address: str) -> Deferred[str | None]:
        """@return: L{Deferred} firing with the account receiving C{address}."""
        return succeed(self.receiver_of(address))

    def receiver_of(self, address: str) -> str | None:
        """The account receiving C{address} (its name or an alias), now."""
        return self._table.by_address.get(self.canonical_name(address))

    # -- IAuthBackend ---------------------------------------------------

    def check_password(self, authcid: str, password: bytes) -> Deferred[str | None]:
        account = self._enabled(authcid)
        if account is None:  # the same work as a real check: no timing oracle
            return self._run(password_matches, self._dummy(), password).addCallback(
                lambda _: None)
        keys = account.scram_keys("SHA-256") or account.scram_keys("SHA-1")
        cache, table = self.password_cache, self._table
        if keys is not None and cache is not None:
            if cache.verified(table, account.name, password):
                return succeed(account.name)

            def remember(ok: bool) -> bool:
                if ok:
                    cache.remember(table, account.name, password)
                return ok

            d = self._run(password_matches, keys, password).addCallback(remember)
        elif keys is not None:
            d = self._run(password_matches, keys, password)
        elif account.legacy is not None:
            d = self._run(legacy_matches_slowly, account.legacy.secret, password, self._dummy())
        else:
            d = self._run(password_matches, self._dummy(), password).addCallback(
                lambda _: False)

        def matched(ok: bool) -> Deferred[str | None] | None:
            if not ok:
                return None
            if not account.scram:  # imported with a secret only: derive its keys now
                return self._upgrade(account, password).addCallback(lambda _: account.name)
            return succeed(account.name)

        return d.addCallback(matched)

    def _dummy(self) -> ScramKeys:
        """Keys for no one, as costly to check as most accounts' keys."""
        table, keys = self._dummy_for
        if table is not self._table or keys is None:
            counts = [k.iterations for a in self._table.accounts.values() for k in a.scram]
            iterations = max(set(counts), key=counts.count) if counts else DEFAULT_ITERATIONS
            if keys is None or keys.iterations != iterations:
                keys = derive_scram_keys("", os.urandom(16), "SHA-256", iterations)
            self._dummy_for = (self._table, keys)
        return keys

    def _upgrade(self, checked: Account, password: bytes) -> Deferred[None]:
        """Derive and store the SCRAM keys an account lacks (never fails)."""
        def mutate(accounts: dict[str, Account]) -> bool:
            now = accounts.get(checked.name)
            if now is None or (now.scram, now.legacy) != (checked.scram, checked.legacy):
                return False  # changed meanwhile: the password we checked may be stale
            keys = list(now.scram) + [derive_scram_keys(now.name, password, alg)
                                      for alg in ALGORITHMS if now.scram_keys(alg) is None]
            legacy = now.legacy if now.legacy and now.legacy.mechanisms else None
            accounts[now.name] = replace(now, scram=tuple(sorted(keys, key=lambda k: k.algorithm)),
                                         legacy=legacy)
            return True

        def done(stored: bool) -> None:
            if stored:
                self._log.info("stored SCRAM keys for {account}", account=checked.name)

        def failed(f: Any) -> None:
            self._log.failure("cannot store SCRAM keys for {account}", f, account=checked.name)

        return self._write(mutate).addCallbacks(done, failed)

    def scram_credentials(self, authcid: str, algorithm: str) -> Deferred[ScramKeys | None]:
        account = self._enabled(authcid)
        return succeed(None if account is None else account.scram_keys(algorithm))

    def legacy_secret(self, authcid: str, mechanism: str) -> Deferred[tuple[str, bytes] | None]:
        account = self._enabled(authcid)
        if account is None or account.legacy is None or \
                mechanism not in account.legacy.mechanisms:
            return succeed(None)
        return succeed((account.name, account.legacy.secret.encode("utf-8")))

    def otp_state(self, authcid: str) -> Deferred[OTPState | None]:
        account = self._enabled(authcid)
        return succeed(None if account is None else account.otp)

    def otp_advance(self, account: str, sequence: int, key: bytes) -> Deferred[bool]:
        """
        Compare-and-set on the file itself, under its lock; fires only once
        the new state is on disk.  A failure to store is logged and answers
        C{False} (no login without a persisted advance).

        The comparison is on the chain, not only on the sequence number:
        C{key} must hash once to the OTP stored now.  A re-initialisation
        that lands between a challenge and its answer may keep the sequence
        number (C{init-hex:...:md5 500 newseed:...}); an OTP of the old chain
        must not then be stored under the new seed, which would lock the
        owner out and let the old pass phrase in for good.
        """
        name = self.canonical_name(account)

        def mutate(accounts: dict[str, Account]) -> bool:
            now = accounts.get(name)
            if now is None or not now.enabled or now.otp is None \
                    or now.otp.sequence != sequence + 1 or len(key) != 8 \
                    or not rfc2289.precedes(now.otp.algorithm, key, now.otp.key):
                return False
            accounts[name] = replace(now, otp=replace(now.otp, sequence=sequence, key=key))
            return True

        def failed(f: Any) -> bool:
            self._log.failure("cannot store the OTP state of {account}", f, account=name)
            return False

        return self._write(mutate).addErrback(failed)

    def otp_reinitialise(self, account: str, sequence: int, key: bytes,
                         state: OTPState) -> Deferred[bool]:
        """
        RFC 2243 re-initialisation: the same compare-and-set as
        L{otp_advance} (C{key}, the current OTP, must hash to the stored
        one), storing the client's new seed and sequence.
        """
        name = self.canonical_name(account)

        def mutate(accounts: dict[str, Account]) -> bool:
            now = accounts.get(name)
            if now is None or not now.enabled or now.otp is None \
                    or now.otp.sequence != sequence + 1 or len(state.key) != 8 \
                    or not rfc2289.precedes(now.otp.algorithm, key, now.otp.key):
                return False
            accounts[name] = replace(now, otp=replace(state, account=name))
            return True

        def failed(f: Any) -> bool:
            self._log.failure("cannot store the OTP state of {account}", f, account=name)
            return False

        return self._write(mutate).addErrback(failed)

    def account_for_certificate(self, certificate: object) -> Deferred[str | None]:
        found = set()
        for candidate in self._certificate_names(certificate):
            account = self._enabled(candidate)
            owner = account.name if account else self._table.by_certificate.get(candidate.lower())
            if owner is not None and self._enabled(owner) is not None:
                found.add(owner)
        # Names mapping to two accounts are ambiguous: map to none.
        return succeed(found.pop() if len(found) == 1 else None)

    def _certificate_names(self, certificate: Any) -> list[str]:
        if hasattr(certificate, "to_cryptography"):  # a pyOpenSSL X509
            certificate = certificate.to_cryptography()
        if not isinstance(certificate, x509.Certificate):
            return []
        subject = certificate.subject
        if self._rule == "cn":
            names = [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        else:
            try:
                san = certificate.extensions.get_extension_for_class(
                    x509.SubjectAlternativeName).value
                names = list(san.get_values_for_type(x509.RFC822Name))
            except x509.ExtensionNotFound:
                names = []
            names += [a.value for a in subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)]
        return [n for n in names if isinstance(n, str) and n]

    def may_act_as(self, account: str, authzid: str) -> Deferred[bool]:
        """Unknown or disabled accounts (on either side) may act as no one."""
        me, them = self._enabled(account), self._enabled(authzid)
        return succeed(me is not None and them is not None
                       and (them.name == me.name or them.name in me.may_act_for))

    # -- writing and reloading ------------------------------------------

    def _write(self, mutate: Callable[[dict[str, Account]], T]) -> Deferred[T]:
        def store(outcome: tuple[T, UserTable, Signature]) -> T:
            result, self._table, self._seen = outcome
            return result

        return self._lock.run(lambda: self._run(self._file.update, mutate).addCallback(store))

    def reload(self) -> Deferred[bool]:
        """
        Re-read the file (SIGHUP).  A broken file is logged and the old
        accounts stay.  @return: L{Deferred} firing with C{True} if reloaded.
        """
        def loaded(outcome: tuple[UserTable, Signature]) -> bool:
            self._table, self._seen = outcome
            self._log.info("reloaded {path}: {n} accounts", path=self._file.path,
                           n=len(self._table.accounts))
            return True

        def attempt() -> tuple[UserTable, Signature] | tuple[UsersFileError, Signature | None]:
            seen = self._file.signature()
            try:
                return self._file.load_with_signature()
            except UsersFileError as e:
                return e, seen

        def outcome(result: Any) -> bool:
            if not isinstance(result[0], UsersFileError):
                return loaded(result)
            self._seen = result[1]  # log once per change of the file, not once per poll
            self._log.error("users file not reloaded, keeping the old one: {error}",
                            error=result[0].render())
            return False

        def failed(f: Any) -> bool:
            self._log.failure("users file not reloaded", f)
            return False

        return self._lock.run(
            lambda: self._run(attempt).addCallback(outcome).addErrback(failed))

    def watch(self, clock: IReactorTime, interval: float = 2.0) -> LoopingCall:
        """
        Poll the file's identity (device, inode, size, mtime) every
        C{interval} seconds of C{clock} and reload when it changed.

        @return: the running L{LoopingCall}; stop it on shutdown.
        """
        def poll() -> Deferred[Any]:
            def compare(sig: Signature | None) -> Deferred[bool] | None:
                return self.reload() if sig != self._seen else None

            d = self._run(self._file.signature).addCallback(compare)
            return d.addErrback(lambda f: self._log.failure("watching the users file", f))

        loop = LoopingCall(poll)
        loop.clock = clock
        loop.start(interval, now=False)
        return loop
