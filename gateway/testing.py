# -*- test-case-name: tests.test_testing -*-
"""
Working in-memory fakes for tests.

These are real implementations of the project's interfaces, kept in memory:
tests use them instead of scripted doubles, and they are themselves tested
(C{tests/test_testing.py}).

  - L{MemoryAuthBackend}: an L{IAuthBackend} directory.  Like the real one it
    keeps SCRAM keys, not passwords; a password-equivalent secret only for an
    account that has a legacy mechanism (CRAM-MD5, DIGEST-MD5, APOP) enabled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from gateway.auth import otp as rfc2289
from gateway.auth.verifiers import (
    ALGORITHMS,
    DEFAULT_ITERATIONS,
    OTPState,
    ScramKeys,
    derive_scram_keys,
    password_matches,
)
from gateway.interfaces import IAuthBackend, IOTPReinitialisation

#: The mechanisms that need a password-equivalent secret.
LEGACY_MECHANISMS = frozenset({"CRAM-MD5", "DIGEST-MD5", "APOP"})


def _key(name: str) -> str:
    # Account names are compared case-insensitively, as most directories do.
    return name.casefold()


@dataclass
class _Account:
    account: str
    scram: dict[str, ScramKeys]
    legacy: frozenset[str]
    secret: bytes | None
    may_act_for: frozenset[str]
    enabled: bool = True
    otp: OTPState | None = field(default=None)


@implementer(IAuthBackend, IOTPReinitialisation)
class MemoryAuthBackend:
    """
    An L{IAuthBackend} that keeps its accounts in memory.

    Every method answers at once (an already-fired L{Deferred}) and, like any
    directory, answers C{None} or C{False} alike for an unknown account, a
    disabled one and a wrong secret.

    @ivar certificate_map: identity (an rfc822 subjectAltName or a subject
        common name, compared case-insensitively) -> account, used by
        L{account_for_certificate}.
    """

    def __init__(self, *, certificate_map: Mapping[str, str] | None = None) -> None:
        self._accounts: dict[str, _Account] = {}
        self._names: dict[str, _Account] = {}
        self.certificate_map: dict[str, str] = {}
        for identity, account in (certificate_map or {}).items():
            self.map_certificate(identity, account)

    # -- setting up --------------------------------------------------------

    def add_account(
        self,
        account: str,
        password: bytes | str,
        *,
        legacy: Iterable[str] = (),
        aliases: Iterable[str] = (),
        scram_salts: Mapping[str, bytes] | None = None,
        iterations: int = DEFAULT_ITERATIONS,
        may_act_for: Iterable[str] = (),
    ) -> None:
        """
        Add an account.

        @param account: the canonical account id.
        @param password: its password; only SCRAM keys derived from it are kept,
            unless C{legacy} names a mechanism that needs the password itself.
        @param legacy: the legacy mechanisms enabled for this account, from
            L{LEGACY_MECHANISMS}.
        @param aliases: other names that log in to the same account.
        @param scram_salts: C{{"SHA-1": salt, "SHA-256": salt}} to fix the salts
            (for test vectors); a missing entry gets a random salt.
        @param may_act_for: authorization identities this account may act as
            (L{may_act_as}).
        @raise ValueError: for an unknown legacy mechanism, a SCRAM algorithm
            that does not exist, or a name already in use.
        """
        legacy = frozenset(legacy)
        if legacy - LEGACY_MECHANISMS:
            raise ValueError(f"unknown legacy mechanisms: {sorted(legacy - LEGACY_MECHANISMS)}")
        salts = dict(scram_salts or {})
        if set(salts) - set(ALGORITHMS):
            raise ValueError(f"unknown SCRAM algorithms: {sorted(set(salts) - set(ALGORITHMS))}")
        names = [account, *aliases]
        taken = [name for name in names if _key(name) in self._names]
        if taken:
            raise ValueError(f"names already in use: {taken}")
        if isinstance(password, str):
            password = password.encode("utf-8")
        record = _Account(
            account=account,
            scram={
                algorithm: derive_scram_keys(
                    account, password, algorithm, iterations, salts.get(algorithm)
                )
                for algorithm in ALGORITHMS
            },
            legacy=legacy,
            secret=password if legacy else None,
            may_act_for=frozenset(_key(name) for name in may_act_for),
        )
        self._accounts[account] = record
        for name in names:
            self._names[_key(name)] = record

    def set_enabled(self, account: str, enabled: bool) -> None:
        """Disable or re-enable an account; a disabled account looks unknown."""
        self._accounts[account].enabled = enabled

    def set_otp(
        self, account: str, *, algorithm: str, seed: str, sequence: int, key: bytes
    ) -> None:
        """Set the account's RFC 2289 state, as C{otp-init} would."""
        self._accounts[account].otp = OTPState(account, algorithm, seed, sequence, key)

    def map_certificate(self, identity: str, account: str) -> None:
        """Let a certificate naming C{identity} log in as C{account}."""
        self.certificate_map[_key(identity)] = account

    def _find(self, name: str) -> _Account | None:
        record = self._names.get(_key(name))
        if record is None or not record.enabled:
            return None
        return record

    # -- IAuthBackend --------------------------------------------------------

    def check_password(self, authcid: str, password: bytes) -> Deferred[str | None]:
        record = self._find(authcid)
        if record is None or not password_matches(record.scram["SHA-256"], password):
            return succeed(None)
        return succeed(record.account)

    def scram_credentials(self, authcid: str, algorithm: str) -> Deferred[ScramKeys | None]:
        record = self._find(authcid)
        if record is None:
            return succeed(None)
        return succeed(record.scram.get(algorithm))

    def legacy_secret(
        self, authcid: str, mechanism: str
    ) -> Deferred[tuple[str, bytes] | None]:
        record = self._find(authcid)
        if record is None or record.secret is None or mechanism not in record.legacy:
            return succeed(None)
        return succeed((record.account, record.secret))

    def otp_state(self, authcid: str) -> Deferred[OTPState | None]:
        record = self._find(authcid)
        return succeed(None if record is None else record.otp)

    def otp_advance(self, account: str, sequence: int, key: bytes) -> Deferred[bool]:
        # The compare-and-set is atomic here because nothing else runs between
        # the read and the write (single thread, no Deferred in between).
        record = self._find(account)
        if record is None or record.otp is None or record.otp.sequence != sequence + 1 \
                or not rfc2289.precedes(record.otp.algorithm, key, record.otp.key):
            return succeed(False)
        record.otp = replace(record.otp, sequence=sequence, key=key)
        return succeed(True)

    def otp_reinitialise(self, account: str, sequence: int, key: bytes,
                         state: OTPState) -> Deferred[bool]:
        record = self._find(account)
        if record is None or record.otp is None or record.otp.sequence != sequence + 1 \
                or not rfc2289.precedes(record.otp.algorithm, key, record.otp.key):
            return succeed(False)
        record.otp = replace(state, account=record.account)
        return succeed(True)

    def account_for_certificate(self, certificate: object) -> Deferred[str | None]:
        for identity in _certificate_identities(certificate):
            account = self.certificate_map.get(_key(identity))
            if account is not None:
                record = self._find(account)
                return succeed(None if record is None else record.account)
        return succeed(None)

    def may_act_as(self, account: str, authzid: str) -> Deferred[bool]:
        record = self._find(account)
        if record is None:
            return succeed(False)
        if self._names.get(_key(authzid)) is record:
            return succeed(True)
        return succeed(_key(authzid) in record.may_act_for)


def _certificate_identities(certificate: object) -> list[str]:
    """
    The names a client certificate carries, most specific first: its rfc822
    subjectAltNames, then its subject common names.  A pyOpenSSL C{X509} is
    converted; anything else that is not a certificate carries no name.
    """
    to_cryptography = getattr(certificate, "to_cryptography", None)
    if to_cryptography is not None:
        certificate = to_cryptography()
    if not isinstance(certificate, x509.Certificate):
        return []
    names: list[str] = []
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        pass
    else:
        names.extend(san.value.get_values_for_type(x509.RFC822Name))
    for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        if isinstance(attribute.value, str):
            names.append(attribute.value)
    return names


# -- the mail store ------------------------------------------------------------
#
# L{MemoryStore}: a working L{gateway.interfaces.IMailStore} in memory, with
# the semantics of the Maildir store (UIDs, \Recent, session views and
# change notification, folders, the POP3 lock, quotas).  It lives in
# gateway.store.memory, beside the store it imitates, and is tested by the
# same contract tests (tests/test_store_contract.py).
from gateway.store.memory import MemorySession, MemoryStore  # noqa: E402, F401
