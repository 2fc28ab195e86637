# -*- test-case-name: tests.test_sasl_base -*-
"""
The contract every SASL mechanism follows.

A mechanism is a small server-side state machine: raw bytes in (already
base64-decoded by the protocol's framing), and a L{Step} out.  It knows nothing
of POP3, IMAP or SMTP: the framing adapter base64-encodes challenges, handles
the client's C{*} cancel, and sends the protocol's own replies.

Life of one exchange::

    mech = factory(context)
    step = yield mech.start(initial)   # initial: None = no initial response,
                                       #          b""  = empty initial response
    while isinstance(step, Challenge):
        send(step.data); step = yield mech.step(client_bytes)
    # step is Proven (the client proved it holds account step.authcid)
    #      or Failed (wrong proof, unknown account, malformed input)

Data a mechanism must return after success (SCRAM's server-final message,
DIGEST-MD5's rspauth) is sent as one more L{Challenge} (with
L{Challenge.success} set), to which the client answers with an empty
response; only then does the mechanism return L{Proven}.
This works in all three protocols, including those with no
"additional data with success" (RFC 4422 section 5).

A L{Proven} is not yet a login: the protocol hands it to the portal, whose
checker applies the throttle and the account's flags.  A L{Failed} goes to the
portal too, so that failures are counted in one place.

A mechanism never raises for bad client input: it returns C{Failed(...,
malformed=True)}.  After L{Proven} or L{Failed}, further calls are a
programming error (L{MechanismDone}).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

from twisted.internet.defer import Deferred

from gateway.interfaces import IAuthBackend


@dataclass(frozen=True)
class Challenge:
    """
    Send C{data} to the client and wait for its response.

    @ivar success: set on a challenge that carries data sent only after a
        successful proof (SCRAM's server-final, DIGEST-MD5's rspauth): the
        L{Proven} the exchange will end with.  Such data tells the client its
        proof was right before the portal has been asked, so the exchange
        asks the throttle first and sends it only if the client is not banned
        (L{gateway.auth.sasl.exchange.Exchange}).
    """

    data: bytes
    success: Proven | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Proven:
    """
    The client proved it holds the account C{authcid}.

    @ivar authcid: the canonical account id (from the backend, never the raw
        client string).
    @ivar authzid: the authorization identity the client asked to act as, or
        C{None}.  The mechanism has already checked it with
        L{IAuthBackend.may_act_as}; C{None} means "act as authcid".
    @ivar mechanism: the mechanism name, for the log and the Received header.
    """

    authcid: str
    mechanism: str
    authzid: str | None = None


@dataclass(frozen=True)
class Failed:
    """
    The exchange ended without proof.

    @ivar reason: for the log only; never sent to the client.
    @ivar mechanism: the mechanism name.
    @ivar authcid: the account the client claimed, if it said one (for the
        throttle; may be an unknown name).
    @ivar malformed: the client's data could not be parsed (protocols may
        answer with a syntax error instead of an authentication failure).
    @ivar fingerprint: for plain-text mechanisms, a digest of the tried
        password (see L{gateway.auth.verifiers.password_fingerprint}) so that
        the throttle counts the same stale password once; C{None} otherwise.
    """

    reason: str
    mechanism: str
    authcid: str | None = None
    malformed: bool = False
    fingerprint: bytes | None = field(default=None, repr=False)


Step = Union[Challenge, Proven, Failed]


class MechanismDone(Exception):
    """A finished mechanism was asked to continue."""


@dataclass(frozen=True)
class SASLContext:
    """
    What a mechanism may know of the connection it serves.

    @ivar service: the GSSAPI / DIGEST-MD5 service name: C{"imap"}, C{"pop"}
        or C{"smtp"}.
    @ivar hostname: the server's host name (DIGEST-MD5 realm and digest-uri
        host, CRAM-MD5 challenge, GSSAPI principal).
    @ivar backend: the directory, as an L{IAuthBackend}.
    @ivar encrypted: whether the connection is under TLS (implicit or
        upgraded).
    @ivar peer_certificate: the client's certificate, a
        C{cryptography.x509.Certificate}, when it presented one that verified
        against the listener's client CA; else C{None}.
    @ivar options: see below.
    @ivar channel_binding: C{{"tls-exporter": bytes, ...}} when known, for
        SCRAM-*-PLUS; empty otherwise.
    """

    service: str
    hostname: str
    backend: IAuthBackend
    encrypted: bool = False
    peer_certificate: object | None = None
    channel_binding: dict[str, bytes] = field(default_factory=dict)
    #: Operator settings of individual mechanisms, by dotted key:
    #: C{"gssapi.keytab"} (path), C{"gssapi.domain"} (the domain a Kerberos
    #: principal's user name is put in).
    options: dict[str, Any] = field(default_factory=dict)


class Mechanism:
    """
    Base class for server mechanisms.

    Subclasses set the class attributes and implement L{_start} and L{_step}.
    The public L{start} and L{step} methods enforce the life cycle.

    @cvar name: the IANA name.
    @cvar plaintext: the client sends its password in clear (PLAIN, LOGIN):
        refused before TLS unless the operator allows it.
    @cvar legacy: needs a password-equivalent stored secret.
    """

    name: ClassVar[str] = ""
    plaintext: ClassVar[bool] = False
    legacy: ClassVar[bool] = False

    def __init__(self, context: SASLContext) -> None:
        self.context = context
        self._started = False
        self._done = False
        self._pending = False

    def start(self, initial: bytes | None) -> Deferred[Step]:
        if self._started:
            raise MechanismDone(self.name)
        self._started = True
        return self._track(self._start(initial))

    def step(self, response: bytes) -> Deferred[Step]:
        if not self._started or self._done or self._pending:
            raise MechanismDone(self.name)
        return self._track(self._step(response))

    def _track(self, d: Deferred[Step]) -> Deferred[Step]:
        # One step at a time; an error (a directory failure) ends the
        # exchange like a final step.
        self._pending = True

        def record(step: Any) -> Any:
            self._pending = False
            if not isinstance(step, Challenge):
                self._done = True
            return step

        return d.addBoth(record)

    def failed(self, reason: str, **kw: object) -> Failed:
        """Shorthand for a L{Failed} naming this mechanism."""
        return Failed(reason=reason, mechanism=self.name, **kw)  # type: ignore[arg-type]

    # Subclasses implement these two.
    def _start(self, initial: bytes | None) -> Deferred[Step]:
        raise NotImplementedError

    def _step(self, response: bytes) -> Deferred[Step]:
        raise NotImplementedError
