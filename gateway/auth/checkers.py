# -*- test-case-name: tests.test_checkers -*-
"""
The portal's credential checkers: where every login meets the throttle.

Three kinds of credentials reach the portal:

  - L{AuthAttempt}: the outcome of a SASL exchange (L{Proven} or L{Failed})
    from any mechanism in L{gateway.auth.sasl};
  - L{APOPCredentials}: POP3 APOP (RFC 1939 section 7);
  - L{PlainPasswordCredentials}: POP3 USER/PASS and IMAP LOGIN.

All three go through one L{ThrottledLogin}: refuse at once (with
L{TemporarilyRefused}) while the address or the (address, account) pair is
banned; otherwise verify; on success reset the counters and answer the account
id (a C{str}, the canonical C{local@domain}); on failure count it and answer
L{UnauthorizedLogin} only after the throttle's delay, so that an unknown
account, a disabled one and a wrong password get the same answer after the
same time.  The reactor never waits: delays are L{deferLater} on the clock.

Twisted's own C{APOPCredentials} compares C{str} with C{bytes} on Python 3
and so never matches; ours compares bytes with L{hmac.compare_digest}.
Twisted's type hints make avatar ids C{bytes}; ours are the C{str} account
names, which the portal hands to the realm unchanged (hence the
C{type: ignore[override]} on each C{requestAvatarId}).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, Union

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import (
    Deferred,
    FirstError,
    fail,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, implementer

from gateway.auth.sasl.base import Failed, Proven
from gateway.auth.throttle import Throttle
from gateway.auth.verifiers import password_fingerprint
from gateway.errors import GatewayError
from gateway.interfaces import IAuthBackend

_log = Logger()


class TemporarilyRefused(UnauthorizedLogin):
    """
    Not now: the client's address or (address, account) pair is banned, or the
    directory failed.  Protocols answer with their temporary error (POP3
    C{-ERR [SYS/TEMP]}, IMAP C{NO [UNAVAILABLE]}, SMTP L{error}).

    @ivar retry_after: seconds until the ban ends (0 when unknown).
    @ivar error: the SMTP meaning, a L{GatewayError} 454 4.7.0.
    """

    def __init__(self, retry_after: float = 0.0) -> None:
        super().__init__("Temporary authentication failure")
        self.retry_after = retry_after
        self.error = GatewayError(454, "4.7.0", "Temporary authentication failure")


def _text(name: str | bytes | None) -> str | None:
    if isinstance(name, bytes):
        return name.decode("utf-8", "replace")
    return name


class ThrottledLogin:
    """
    The one path every login takes: ban check, verification, counting, delay.

    @param canonical: maps a claimed name to the throttle's key and an
        authzid to the avatar id (pass L{FileDirectory.canonical_name}, so
        C{Alice} and C{alice@example.edu} count as one account); default
        lower case.
    """

    def __init__(self, throttle: Throttle,
                 canonical: Callable[[str], str] | None = None) -> None:
        self.throttle = throttle
        self.canonical = canonical or str.lower

    def refusal(self, address: str, trusted: bool,
                claimed: str | None) -> TemporarilyRefused | None:
        """
        The error to answer now if the address, or the (address, claimed
        account) pair, is banned; C{None} if it may try.
        """
        key = self.canonical(claimed) if claimed else None
        verdict = self.throttle.check(address, key, trusted=trusted)
        if verdict.allowed:
            return None
        _log.info("login refused from {address} for {account}: {scope} banned",
                  address=address, account=key, scope=verdict.scope)
        return TemporarilyRefused(verdict.retry_after)

    def attempt(self, address: str, trusted: bool, claimed: str | None,
                verify: Callable[[], Deferred[str | None]],
                fingerprint: bytes | None = None, *,
                forgive_result: bool = True) -> Deferred[str]:
        """
        @param claimed: the account name the client gave, if any.
        @param verify: runs only when not banned; fires with the account id,
            or C{None} for any kind of failure.
        @param forgive_result: on success, forgive the failures against the
            account C{verify} answered as well as against C{claimed}.  False
            when that account is an authzid the client acts for: proving
            one's own secret must not wipe the failures counted against
            another account's.
        @return: L{Deferred} firing with the account id, or failing with
            L{TemporarilyRefused} or (after the delay) L{UnauthorizedLogin}.
        """
        key = self.canonical(claimed) if claimed else None
        refused = self.refusal(address, trusted, claimed)
        if refused is not None:
            return fail(refused)

        def decided(account: str | None) -> Any:
            if account is not None:
                forgiven = {key, account} if forgive_result else {key}
                for who in forgiven - {None}:
                    self.throttle.succeeded(address, who, trusted=trusted)  # type: ignore[arg-type]
                return account
            delay = self.throttle.failed(address, key, fingerprint, trusted=trusted)
            if delay <= 0:
                return fail(UnauthorizedLogin("Authentication failed"))
            return deferLater(self.throttle.clock, delay, _refuse)

        def broken(f: Any) -> NoReturn:
            # The directory failed: not the client's fault, not counted.
            _log.failure("checking a login from {address}", f, address=address)
            raise TemporarilyRefused()

        d: Deferred[str] = maybeDeferred(verify).addCallbacks(decided, broken)
        return d


def _refuse() -> None:
    raise UnauthorizedLogin("Authentication failed")


class IAuthAttempt(ICredentials):
    """The outcome of a SASL exchange, with where it came from."""

    step = Attribute("A gateway.auth.sasl.base.Proven or Failed.")
    client_address = Attribute("The client's IP address, as a string.")
    trusted = Attribute("True if the address is in a trusted network.")


@implementer(IAuthAttempt)
@dataclass(frozen=True)
class AuthAttempt:
    step: Union[Proven, Failed]
    client_address: str
    trusted: bool = False


class _ThrottledChecker:
    """What the three checkers share: the directory and the one login path."""

    def __init__(self, backend: IAuthBackend, throttle: Throttle, *,
                 canonical: Callable[[str], str] | None = None) -> None:
        self._backend = backend
        self._login = ThrottledLogin(throttle, canonical)


@implementer(ICredentialsChecker)
class SASLOutcomeChecker(_ThrottledChecker):
    """
    Turns a SASL outcome into a login.  A L{Proven} step is accepted only if
    its account (and the authzid it acts for, if any) is still enabled; the
    avatar id is the authzid when given, else the account.
    """

    credentialInterfaces = (IAuthAttempt,)

    def requestAvatarId(  # type: ignore[override]  # (str avatar ids: module docstring)
            self, credentials: AuthAttempt) -> Deferred[str]:
        step = credentials.step
        if isinstance(step, Failed):
            _log.info("{mechanism} failed from {address} for {account}: {reason}",
                      mechanism=step.mechanism, address=credentials.client_address,
                      account=step.authcid, reason=step.reason)
            return self._login.attempt(credentials.client_address, credentials.trusted,
                                       step.authcid, lambda: succeed(None), step.fingerprint)
        if not isinstance(step, Proven):
            return fail(TypeError(f"not a final SASL step: {step!r}"))
        return self._login.attempt(credentials.client_address, credentials.trusted,
                                   step.authcid, lambda: self._still_allowed(step),
                                   forgive_result=not step.authzid)

    def refusal(self, client_address: str, trusted: bool,
                claimed: str | None = None) -> TemporarilyRefused | None:
        """
        Whether a SASL exchange from C{client_address} (for C{claimed}, when
        known) would be refused as banned now: asked by
        L{gateway.auth.sasl.exchange.Exchange} before it starts a mechanism
        and before it sends data that shows a proof was right.
        """
        return self._login.refusal(client_address, trusted, claimed)

    def _still_allowed(self, step: Proven) -> Deferred[str | None]:
        # The avatar id is canonical whatever the mechanism gave: GSSAPI's
        # principal mapping, for one, does not come from the directory, and
        # "Alice@example.edu" must not become an account of its own.
        acting = self._login.canonical(step.authzid or step.authcid)
        checks = [self._backend.may_act_as(step.authcid, step.authcid)]
        if acting != self._login.canonical(step.authcid):
            checks.append(self._backend.may_act_as(step.authcid, acting))
        d = gatherResults(checks, consumeErrors=True)
        def directory_error(f: Failure) -> Failure:
            assert isinstance(f.value, FirstError)
            return f.value.subFailure

        d.addErrback(directory_error)
        return d.addCallback(lambda ok: acting if all(ok) else None)


class IAPOPCredentials(ICredentials):
    username = Attribute("The name given to APOP.")
    challenge_timestamp = Attribute("The msg-id of our greeting, with its <>.")
    digest_hex = Attribute("The client's digest: 32 lower-case hex digits.")
    client_address = Attribute("The client's IP address.")
    trusted = Attribute("True if the address is in a trusted network.")


@implementer(IAPOPCredentials)
@dataclass(frozen=True)
class APOPCredentials:
    """C{APOP name digest} (RFC 1939 section 7) and the greeting's timestamp."""

    username: str | bytes
    challenge_timestamp: bytes
    digest_hex: bytes
    client_address: str
    trusted: bool = False


@implementer(ICredentialsChecker)
class APOPChecker(_ThrottledChecker):
    """
    Verifies C{MD5(timestamp + secret)} against the legacy secret of an
    account for which the operator enabled APOP.  Any other account is
    refused exactly like a wrong digest.
    """

    credentialInterfaces = (IAPOPCredentials,)

    def requestAvatarId(  # type: ignore[override]  # (str avatar ids: module docstring)
            self, credentials: APOPCredentials) -> Deferred[str]:
        name = _text(credentials.username) or ""

        def verify() -> Deferred[str | None]:
            d: Deferred[tuple[str, bytes] | None] = self._backend.legacy_secret(name, "APOP")
            return d.addCallback(compare)

        def compare(found: tuple[str, bytes] | None) -> str | None:
            # Without a secret, compare with a random one: same work, no match.
            secret = found[1] if found else os.urandom(16)
            expected = hashlib.md5(credentials.challenge_timestamp + secret).hexdigest()
            given = credentials.digest_hex.strip().lower()
            ok = hmac.compare_digest(expected.encode("ascii"), given)
            return found[0] if ok and found else None

        return self._login.attempt(credentials.client_address, credentials.trusted, name, verify)


class IPlainPasswordCredentials(ICredentials):
    username = Attribute("The user name given (USER, IMAP LOGIN).")
    password = Attribute("The password, bytes.")
    client_address = Attribute("The client's IP address.")
    trusted = Attribute("True if the address is in a trusted network.")


@implementer(IPlainPasswordCredentials)
@dataclass(frozen=True)
class PlainPasswordCredentials:
    """A user name and password from POP3 USER/PASS or IMAP LOGIN."""

    username: str | bytes
    password: bytes = field(repr=False)
    client_address: str
    trusted: bool = False


@implementer(ICredentialsChecker)
class PlainPasswordChecker(_ThrottledChecker):
    """Checks a password with L{IAuthBackend.check_password}."""

    credentialInterfaces = (IPlainPasswordCredentials,)

    def requestAvatarId(  # type: ignore[override]  # (str avatar ids: module docstring)
            self, credentials: PlainPasswordCredentials) -> Deferred[str]:
        name = _text(credentials.username) or ""
        fingerprint = password_fingerprint(name, credentials.password)
        return self._login.attempt(
            credentials.client_address, credentials.trusted, name,
            lambda: self._backend.check_password(name, credentials.password), fingerprint)
