# -*- test-case-name: tests.test_sasl_exchange -*-
"""
One SASL exchange on one connection, whatever the protocol.

The three protocol adapters (POP3 C{AUTH}, IMAP C{AUTHENTICATE}, SMTP
C{AUTH}) differ only in framing: how a challenge is written (C{+ },
C{334 }) and which reply ends the exchange.  Everything else is here, once:
decoding the initial response (absent, C{=} for empty, or base64), strict
base64 of each client line, the client's C{*} cancel, driving the mechanism,
and handing its outcome to the portal (whose checker throttles and counts).

A malformed client line is not an exception: it becomes a
L{Failed}C{(malformed=True)} that the portal counts like a wrong password.

The portal applies the throttle when the exchange ends, but some mechanisms
show success before that: SCRAM's server-final and DIGEST-MD5's rspauth
(a L{Challenge} with C{success} set) tell the client its proof was right.
So the exchange asks the portal's SASL checker first (its C{refusal}), once
before starting the mechanism (a banned address does no password work) and
again before sending such a challenge (a banned pair learns nothing from a
right guess): a banned client gets the same temporary refusal whether its
proof was right or wrong.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.auth.checkers import AuthAttempt, IAuthAttempt, TemporarilyRefused
from gateway.auth.sasl.base import Challenge, Failed, Mechanism, Proven, Step

log = Logger()


@dataclass(frozen=True)
class LoggedIn:
    """The exchange ended in a login."""

    account: str
    avatar: Any
    logout: Callable[[], None]
    mechanism: str


@dataclass(frozen=True)
class Refused:
    """
    The exchange ended without a login.

    @ivar temporary: the refusal is a ban or a server problem (POP3
        C{[SYS/TEMP]}, IMAP C{[UNAVAILABLE]}, SMTP 454).
    @ivar cancelled: the client sent C{*}.
    @ivar malformed: the client's line was not base64 (IMAP answers BAD,
        SMTP 501); a mechanism-level parse error is an ordinary failure.
    """

    temporary: bool = False
    cancelled: bool = False
    malformed: bool = False


Outcome = LoggedIn | Refused


def portal_login(portal: Portal, credentials: Any, interface: Any, mechanism: str,
                 malformed: bool = False) -> Deferred[Outcome]:
    """
    Log in through the portal and say how it ended, the one way every
    protocol needs it: L{LoggedIn}, or L{Refused} (temporary for a ban or a
    server problem, which is logged; never an errback).
    """

    def ok(result: tuple[Any, Any, Callable[[], None]]) -> Outcome:
        _, avatar, logout = result
        return LoggedIn(getattr(avatar, "account", str(avatar)), avatar, logout, mechanism)

    def refused(failure: Failure) -> Outcome:
        if failure.check(TemporarilyRefused):
            return Refused(temporary=True)
        if failure.check(UnauthorizedLogin):
            return Refused(malformed=malformed)
        log.failure("{mech} login failed internally", failure, mech=mechanism)
        return Refused(temporary=True)

    d: Deferred[Outcome] = portal.login(credentials, None, interface).addCallbacks(ok, refused)
    return d


def decode_initial(argument: bytes | None) -> bytes | None:
    """
    An initial response as sent on the command line (RFC 4954 section 4,
    RFC 4959, RFC 5034): absent, C{=} for an empty one, or base64.

    @raise ValueError: not valid base64.
    """
    if argument is None:
        return None
    if argument == b"=":
        return b""
    return strict_b64decode(argument)


def strict_b64decode(data: bytes) -> bytes:
    """
    @raise ValueError: not canonical base64 (characters outside the
        alphabet, bad padding).
    """
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("invalid base64") from None


class Exchange:
    """
    Drive one mechanism to its end.

    @param send_challenge: writes one challenge, already base64-encoded
        (possibly empty), in the protocol's framing.
    @param interface: the avatar interface to ask the portal for.
    """

    def __init__(self, mechanism: Mechanism, portal: Portal, client_address: str,
                 trusted: bool, interface: Any,
                 send_challenge: Callable[[bytes], None]) -> None:
        self.mechanism = mechanism
        self.portal = portal
        self.client_address = client_address
        self.trusted = trusted
        self.interface = interface
        self.send_challenge = send_challenge
        self.waiting = False
        self.done: Deferred[Outcome] = Deferred()

    def begin(self, initial_argument: bytes | None) -> Deferred[Outcome]:
        """
        Start with the initial response as it appeared on the command line
        (C{None} when there was none).

        @return: a L{Deferred} that fires with the L{Outcome}.
        """
        try:
            initial = decode_initial(initial_argument)
        except ValueError:
            self._finish_step(self._malformed("initial response is not base64"), framing=True)
            return self.done
        if self._banned(None):
            return self.done
        self._run(self.mechanism.start(initial))
        return self.done

    def _banned(self, claimed: str | None) -> bool:
        """
        End the exchange with a temporary refusal if the portal's SASL
        checker says the client (or the pair with C{claimed}) is banned.
        """
        checkers = getattr(self.portal, "checkers", {})
        refusal = getattr(checkers.get(IAuthAttempt), "refusal", None)
        if refusal is None or refusal(self.client_address, self.trusted, claimed) is None:
            return False
        self.done.callback(Refused(temporary=True))
        return True

    def respond(self, line: bytes) -> None:
        """The client's answer to the last challenge."""
        if not self.waiting:
            return
        self.waiting = False
        if line.strip() == b"*":
            log.info("{mech} cancelled by the client at {address}",
                     mech=self.mechanism.name, address=self.client_address)
            self.done.callback(Refused(cancelled=True))
            return
        try:
            data = strict_b64decode(line.strip())
        except ValueError:
            self._finish_step(self._malformed("response is not base64"), framing=True)
            return
        self._run(self.mechanism.step(data))

    def _malformed(self, reason: str) -> Failed:
        return self.mechanism.failed(reason, malformed=True)

    def _run(self, d: Deferred[Step]) -> None:
        d.addCallbacks(self._stepped, self._broken)

    def _stepped(self, step: Step) -> None:
        if isinstance(step, Challenge):
            if step.success is not None and self._banned(step.success.authcid):
                return
            self.waiting = True
            self.send_challenge(base64.b64encode(step.data))
            return
        self._finish_step(step)

    def _broken(self, failure: Failure) -> None:
        # A bug or a directory failure inside the mechanism: never the
        # client's fault, never a traceback to the client.
        log.failure("SASL {mech} failed internally", failure, mech=self.mechanism.name)
        self.done.callback(Refused(temporary=True))

    def _finish_step(self, step: Proven | Failed, framing: bool = False) -> None:
        attempt = AuthAttempt(step, self.client_address, self.trusted)
        portal_login(self.portal, attempt, self.interface, self.mechanism.name,
                     malformed=framing).addCallback(self.done.callback)
