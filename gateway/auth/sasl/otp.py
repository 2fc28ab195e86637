# -*- test-case-name: tests.test_sasl_otp -*-
"""
The OTP SASL mechanism (RFC 2444) over RFC 2289 one-time passwords, with the
extended responses of RFC 2243.

The exchange::

    C: authzid NUL authcid                       (UTF-8)
    S: otp-md5 498 ke1234 ext                    (the count to answer for)
    C: hex:5bf075d9959d036f                      (or word:..., a bare OTP,
                                                  init-hex:..., init-word:...)

The server keeps the last OTP accepted, for sequence C{n} (an
L{gateway.auth.verifiers.OTPState}); the client sends the OTP for C{n - 1},
which must hash once to the stored one.  The server then stores it with
L{IAuthBackend.otp_advance}, a compare-and-set on the sequence number: of two
sessions that saw the same challenge, and of a replayed response, only one
wins.

An account that does not exist, or has no OTP state, or whose sequence is
used up, gets a challenge that looks real (the same for the same name in this
process), and the exchange fails after the response, so that the challenge
does not tell which names exist.

Re-initialisation (C{init-hex}/C{init-word}) needs more than L{IAuthBackend}
offers: a directory that can do it provides L{gateway.interfaces.IOTPReinitialisation} too.
Against one that cannot, a valid current OTP is still used up (it went over
the wire), and the exchange fails.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed

from gateway.auth import otp as rfc2289
from gateway.auth.sasl.base import Challenge, Mechanism, MechanismDone, SASLContext, Step
from gateway.auth.sasl.registry import authorize, directory_key
from gateway.auth.verifiers import OTPState, SASLprepError, saslprep
from gateway.interfaces import IOTPReinitialisation

#: Our cap on each of authzid and authcid.
MAX_IDENTITY = 1024

#: Our cap on a response; the longest well-formed one is about 90 octets.
MAX_RESPONSE = 512

_WRONG = "wrong one-time password or unknown account"

# The key of the fake challenges: fixed for this process, so that asking
# twice for an unknown name gives the same challenge, as for a real one.
_FAKE_KEY = secrets.token_bytes(32)


def fake_challenge(key: str, algorithm: str = "md5") -> str:
    """
    A plausible challenge for a name with no OTP state: a sequence number
    from 10 to 499 and a seed of two letters and four digits (RFC 2289's
    examples), the same for the same C{key} in this process.

    @param key: the name as the directory finds it
        (L{gateway.auth.sasl.registry.directory_key}), so that two names it
        takes as one get the same challenge, as a real account's would.
    """
    digest = hmac.digest(_FAKE_KEY, key.encode("utf-8"), "sha256")
    sequence = 10 + int.from_bytes(digest[:4], "big") % 490
    letters = "".join(chr(ord("a") + byte % 26) for byte in digest[4:6])
    digits = int.from_bytes(digest[6:10], "big") % 10000
    return rfc2289.challenge(algorithm, sequence, f"{letters}{digits:04d}")


def _identity(raw: bytes) -> str | None:
    """A user name, UTF-8 and SASLprep'ed, or C{None} if it is not one."""
    if not raw or len(raw) > MAX_IDENTITY:
        return None
    try:
        prepared = saslprep(raw.decode("utf-8"))
    except (UnicodeDecodeError, SASLprepError):
        return None
    return prepared or None


def _usable(state: OTPState | None) -> str | None:
    """Why C{state} cannot be challenged, or C{None} if it can."""
    if state is None:
        return "unknown account or no OTP state"
    if state.algorithm not in rfc2289.ALGORITHMS:
        return f"unsupported OTP algorithm {state.algorithm!r}"
    if state.sequence <= 0:
        # Sequence 0 was the last OTP of the chain: nothing hashes to it.
        return "OTP sequence used up: it needs re-initialisation"
    if len(state.key) != 8:
        return "stored OTP is not 8 bytes"
    try:
        rfc2289.validate_seed(state.seed)
    except ValueError:
        return "stored OTP seed is invalid"
    return None


class OTP(Mechanism):
    """
    The server side of the OTP mechanism.

    @cvar fake_algorithm: the algorithm of fake challenges; make it the one
        most accounts use.
    """

    name = "OTP"
    fake_algorithm = "md5"

    def __init__(self, context: SASLContext) -> None:
        super().__init__(context)
        self._next: Callable[[bytes], Deferred[Step]] | None = None
        self._authcid = ""
        self._authzid: str | None = None
        self._state: OTPState | None = None
        self._unusable = ""

    @classmethod
    def available(cls, context: SASLContext) -> bool:
        """OTP needs nothing from the connection."""
        return True

    def _step(self, response: bytes) -> Deferred[Step]:
        handler, self._next = self._next, None
        if handler is None:
            # Still waiting for the directory: the caller did not wait.
            raise MechanismDone(self.name)
        return handler(response)

    def _malformed(self, reason: str) -> Deferred[Step]:
        return succeed(self.failed(reason, authcid=self._authcid or None, malformed=True))

    def _start(self, initial: bytes | None) -> Deferred[Step]:
        if initial is None:
            # RFC 4422 section 5: an empty challenge asks for the message.
            self._next = self._identify
            return succeed(Challenge(b""))
        return self._identify(initial)

    def _identify(self, message: bytes) -> Deferred[Step]:
        # RFC 2444 section 3: authzid NUL authcid, both UTF-8.
        if message.count(b"\0") != 1:
            return self._malformed("not authzid NUL authcid")
        raw_authzid, raw_authcid = message.split(b"\0")
        authcid = _identity(raw_authcid)
        if authcid is None:
            return self._malformed("bad authcid")
        self._authcid = authcid
        if raw_authzid:
            self._authzid = _identity(raw_authzid)
            if self._authzid is None:
                return self._malformed("bad authzid")

        def challenge(state: OTPState | None) -> Step:
            why = _usable(state)
            if why is None:
                assert state is not None
                self._state = state
                text = rfc2289.challenge(state.algorithm, state.sequence - 1, state.seed)
            else:
                self._unusable = why
                text = fake_challenge(directory_key(self.context, authcid),
                                      self.fake_algorithm)
            self._next = self._respond
            return Challenge(text.encode("ascii"))

        d: Deferred[OTPState | None] = self.context.backend.otp_state(authcid)
        return d.addCallback(challenge)

    def _respond(self, response: bytes) -> Deferred[Step]:
        if len(response) > MAX_RESPONSE:
            return self._malformed("over-long response")
        try:
            parsed = rfc2289.parse_response(response.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as e:
            return self._malformed(f"bad response: {e}")
        state = self._state
        if state is None:
            # The same hashing as for a real account, then the same failure.
            for candidate in parsed.candidates:
                rfc2289.step(self.fake_algorithm, candidate)
            return succeed(self.failed(self._unusable, authcid=self._authcid))
        matched = None
        for candidate in parsed.candidates:
            if hmac.compare_digest(rfc2289.step(state.algorithm, candidate), state.key):
                matched = candidate
        if matched is None:
            return succeed(self.failed(_WRONG, authcid=self._authcid))
        if parsed.init is not None:
            return self._reinitialise(state, matched, parsed.init)
        d: Deferred[bool]
        d = self.context.backend.otp_advance(state.account, state.sequence - 1, matched)
        return d.addCallback(self._stored, state.account)

    def _reinitialise(
        self, state: OTPState, current: bytes, new: rfc2289.NewParameters
    ) -> Deferred[Step]:
        backend = self.context.backend
        refused = ""
        if not IOTPReinitialisation.providedBy(backend):
            refused = "the directory cannot re-initialise OTP"
        elif new.seed == state.seed.lower():
            # The same seed (and pass phrase) would repeat OTPs already sent.
            refused = "re-initialisation must change the seed"
        d: Deferred[bool]
        if refused:
            # The current OTP went over the wire: use it up all the same.
            d = backend.otp_advance(state.account, state.sequence - 1, current)
            return d.addCallback(lambda _: self.failed(refused, authcid=self._authcid))
        replacement = OTPState(state.account, new.algorithm, new.seed, new.sequence, new.key)
        d = IOTPReinitialisation(backend).otp_reinitialise(
            state.account, state.sequence - 1, current, replacement)
        return d.addCallback(self._stored, state.account)

    def _stored(self, won: bool, account: str) -> Deferred[Step] | Step:
        if not won:
            return self.failed(
                "OTP already used (replay or concurrent login)", authcid=self._authcid
            )
        return authorize(self, account, self._authzid, self._authcid)


# The registry imports this module at its end; register() exists by then.
from gateway.auth.sasl.registry import register  # noqa: E402

register(OTP)
