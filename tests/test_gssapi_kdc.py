"""
GSSAPI (RFC 4752) against a real MIT Kerberos KDC.

Each test starts a throw-away realm on 127.0.0.1 (L{tests.krb5realm}): alice
has a ticket-granting ticket, the gateway has a keytab for C{imap/localhost},
C{smtp/localhost} and C{pop/localhost}.  The client is the C{gssapi}
package's initiator, speaking RFC 4752 section 3.1 to the server mechanism
through its L{Step} contract; the last tests run the same exchange through
L{Exchange} and the portal, as a protocol would.

Without the MIT programs or the C{gssapi} package the tests skip, naming the
Debian packages to install (C{make test} installs them).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.portal import build_portal
from gateway.auth.realm import GatewayRealm, IAuthenticatedUser
from gateway.auth.sasl.base import Challenge, Failed, Proven, SASLContext, Step
from gateway.auth.sasl.exchange import Exchange, LoggedIn, Refused
from gateway.auth.sasl.gssapi import GSSAPI, NO_SECURITY_LAYER, realm_rule
from gateway.auth.throttle import Throttle, ThrottleSettings
from gateway.testing import MemoryAuthBackend
from tests.krb5realm import KerberosRealm, start_realm

try:
    import gssapi
except ImportError:  # start_realm() skips the tests then
    gssapi = None  # type: ignore[assignment]

DOMAIN = "example.test"
ALICE = f"alice@{DOMAIN}"
SHARED = f"shared@{DOMAIN}"
BOB = f"bob@{DOMAIN}"

#: What the server offers (RFC 4752 section 3.1): no security layer, and a
#: maximum message size of 0.
OFFER = bytes([NO_SECURITY_LAYER, 0, 0, 0])

#: Hypothesis runs the same examples on every run.
DETERMINISTIC = settings(max_examples=40, deadline=None, derandomize=True, database=None)


@dataclass
class RFC4752Client:
    """
    The client side of RFC 4752 section 3.1, on the real C{gssapi} package.

    @ivar sent: every message the client sent, in order (for replays).
    @ivar offers: the server's security-layer offers, unwrapped.
    """

    realm: KerberosRealm
    service: str = "imap"
    flags: Any = None
    authzid: bytes = b""
    layer: int = NO_SECURITY_LAYER
    max_size: int = 0
    sent: list[bytes] = field(default_factory=list)
    offers: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        target = gssapi.Name(f"{self.service}@localhost", gssapi.NameType.hostbased_service)
        creds = gssapi.Credentials(usage="initiate", store={"ccache": self.realm.ccache})
        self.context = gssapi.SecurityContext(
            name=target, creds=creds, usage="initiate", flags=self.flags
        )

    def first(self) -> bytes:
        """The initial context token (the AP-REQ)."""
        return self._send(self.context.step())

    def answer(self, challenge: bytes) -> bytes:
        """The response to one server challenge."""
        if not self.context.complete:
            # A context token (the AP-REP); if it completes the context and
            # makes no token, the answer is empty (RFC 4752 section 3.1).
            return self._send(self.context.step(challenge) or b"")
        offer = self.context.unwrap(challenge)
        self.offers.append(offer)
        choice = bytes([self.layer]) + self.max_size.to_bytes(3, "big") + self.authzid
        return self._send(self.context.wrap(choice, False).message)

    def _send(self, message: bytes) -> bytes:
        self.sent.append(message)
        return message


class KDCTestCase(SynchronousTestCase):
    """A realm, a directory that knows alice, and the configured mechanism."""

    def setUp(self) -> None:
        self.realm = start_realm(self)
        self.backend = MemoryAuthBackend()
        self.backend.add_account(ALICE, b"unused", may_act_for=[SHARED], iterations=16)
        self.backend.add_account(SHARED, b"unused", iterations=16)
        self.backend.add_account(BOB, b"unused", iterations=16)
        # What the composition root passes: the keytab, and the domain that
        # user@REALM becomes user@example.test in (for the ticket's realm).
        self.options = {"gssapi.keytab": str(self.realm.keytab), "gssapi.domain": DOMAIN}

    def mechanism(self, service: str = "imap") -> GSSAPI:
        context = SASLContext(service=service, hostname="localhost", backend=self.backend,
                              options=self.options)
        return GSSAPI(context)

    def client(self, **kw: Any) -> RFC4752Client:
        return RFC4752Client(self.realm, **kw)

    def run_exchange(
        self, mechanism: GSSAPI, client: RFC4752Client, initial: bool = True
    ) -> list[Step]:
        """Drive both sides to the end; the server's steps, in order."""
        steps = [self.successResultOf(mechanism.start(client.first() if initial else None))]
        if not initial:
            self.assertEqual(steps[0], Challenge(b""))
            steps.append(self.successResultOf(mechanism.step(client.first())))
        while isinstance(steps[-1], Challenge):
            response = client.answer(steps[-1].data)
            steps.append(self.successResultOf(mechanism.step(response)))
        return steps

    def replay(self, mechanism: GSSAPI, messages: list[bytes]) -> Step:
        """Send recorded client messages, whatever the server says."""
        step = self.successResultOf(mechanism.start(messages[0]))
        for message in messages[1:]:
            if not isinstance(step, Challenge):
                break
            step = self.successResultOf(mechanism.step(message))
        return step

    def assertFailed(self, step: Step, reason: str = "", malformed: bool = False) -> Failed:
        self.assertIsInstance(step, Failed, step)
        assert isinstance(step, Failed)
        self.assertEqual((step.mechanism, step.malformed), ("GSSAPI", malformed), step)
        self.assertIn(reason, step.reason)
        return step


class LoginTests(KDCTestCase):
    def test_mutual_authentication(self) -> None:
        """
        The default client asks for mutual authentication: AP-REQ, AP-REP and
        an empty answer, then the offer of no layer, then the login.
        """
        client = self.client()
        steps = self.run_exchange(self.mechanism(), client)
        self.assertEqual(steps[-1], Proven(ALICE, "GSSAPI"))
        self.assertEqual(len(steps), 3)
        self.assertIn(gssapi.RequirementFlag.mutual_authentication, client.context.actual_flags)
        self.assertEqual(client.sent[1], b"")
        # RFC 4752 section 3.1: integrity-protected, not encrypted.
        [offer] = client.offers
        self.assertEqual((offer.message, offer.encrypted), (OFFER, False))

    def test_without_mutual_authentication(self) -> None:
        """Without mutual authentication the layers are offered at once."""
        client = self.client(flags=gssapi.RequirementFlag.integrity)
        steps = self.run_exchange(self.mechanism(), client)
        self.assertEqual(steps[-1], Proven(ALICE, "GSSAPI"))
        self.assertEqual(len(steps), 2)
        self.assertEqual([offer.message for offer in client.offers], [OFFER])

    def test_without_initial_response(self) -> None:
        steps = self.run_exchange(self.mechanism(), self.client(), initial=False)
        self.assertEqual(steps[-1], Proven(ALICE, "GSSAPI"))

    def test_each_service(self) -> None:
        for service in ("imap", "smtp", "pop"):
            with self.subTest(service=service):
                steps = self.run_exchange(self.mechanism(service), self.client(service=service))
                self.assertEqual(steps[-1], Proven(ALICE, "GSSAPI"))

    def test_client_max_size_ignored(self) -> None:
        """Without a layer the client's maximum size means nothing."""
        steps = self.run_exchange(self.mechanism(), self.client(max_size=0xFFFFFF))
        self.assertEqual(steps[-1], Proven(ALICE, "GSSAPI"))

    def test_authzid(self) -> None:
        for authzid, expected in [
            (ALICE.encode(), Proven(ALICE, "GSSAPI")),
            (SHARED.encode(), Proven(ALICE, "GSSAPI", SHARED)),
        ]:
            with self.subTest(authzid=authzid):
                steps = self.run_exchange(self.mechanism(), self.client(authzid=authzid))
                self.assertEqual(steps[-1], expected)

    def test_unmapped_principal(self) -> None:
        """A mapping that knows no account for alice: no login."""
        mechanism = GSSAPI(
            SASLContext(service="imap", hostname="localhost", backend=self.backend,
                        options=self.options),
            map_principal=realm_rule(DOMAIN, realms=["OTHER.TEST"]))
        step = self.run_exchange(mechanism, self.client())[-1]
        failed = self.assertFailed(step, "maps to no account")
        self.assertEqual(failed.authcid, self.realm.user)


class RefusalTests(KDCTestCase):
    def test_authzid_not_allowed(self) -> None:
        step = self.run_exchange(self.mechanism(), self.client(authzid=BOB.encode()))[-1]
        failed = self.assertFailed(step, "may not act as")
        self.assertEqual(failed.authcid, self.realm.user)

    def test_ticket_for_another_service(self) -> None:
        """
        A ticket for smtp/localhost is refused by the IMAP mechanism, although
        the keytab holds that key too: the acceptor is bound to its service.
        """
        step = self.successResultOf(
            self.mechanism("imap").start(self.client(service="smtp").first())
        )
        self.assertFailed(step, "GSSAPI context")
        # The same kind of ticket is good for SMTP.
        steps = self.run_exchange(self.mechanism("smtp"), self.client(service="smtp"))
        self.assertEqual(steps[-1], Proven(ALICE, "GSSAPI"))

    def test_missing_keytab(self) -> None:
        mechanism = GSSAPI(
            SASLContext(service="imap", hostname="localhost", backend=self.backend),
            keytab=str(self.realm.directory / "missing.keytab"),
        )
        self.assertFailed(
            self.successResultOf(mechanism.start(self.client().first())), "server credentials"
        )

    def test_tampered_context_token(self) -> None:
        """A flipped bit anywhere in the AP-REQ: no context."""
        token = self.client().first()
        for index in (len(token) // 2, len(token) - 1):
            with self.subTest(index=index):
                tampered = bytearray(token)
                tampered[index] ^= 0x01
                step = self.successResultOf(self.mechanism().start(bytes(tampered)))
                self.assertFailed(step, "GSSAPI context")

    def test_tampered_layer_choice(self) -> None:
        """The client's wrapped choice with a flipped bit: integrity fails."""
        mechanism, client = self.mechanism(), self.client()
        step = self.successResultOf(mechanism.start(client.first()))
        step = self.successResultOf(mechanism.step(client.answer(step.data)))  # AP-REP
        assert isinstance(step, Challenge)
        tampered = bytearray(client.answer(step.data))
        tampered[-1] ^= 0x01
        self.assertFailed(self.successResultOf(mechanism.step(bytes(tampered))), "unwrap")

    def test_security_layers_refused(self) -> None:
        """
        Only "no security layer" is offered; integrity (2), confidentiality
        (4), a combination or no bit at all is refused (RFC 4752 section 3.3).
        """
        for layer in (0x00, 0x02, 0x04, 0x06, 0x07):
            with self.subTest(layer=layer):
                client = self.client(layer=layer, max_size=65536)
                step = self.run_exchange(self.mechanism(), client)[-1]
                self.assertFailed(step, "layer not offered", malformed=True)

    def test_unwrapped_layer_choice_refused(self) -> None:
        """The choice sent in the clear instead of wrapped."""
        mechanism, client = self.mechanism(), self.client(flags=gssapi.RequirementFlag.integrity)
        step = self.successResultOf(mechanism.start(client.first()))
        assert isinstance(step, Challenge)
        self.assertFailed(self.successResultOf(mechanism.step(OFFER)), "unwrap")

    def test_replayed_exchange_refused(self) -> None:
        """
        An eavesdropper replaying every message of a successful exchange gets
        no login: the acceptor's replay cache (in the realm's directory)
        refuses the AP-REQ, with mutual authentication or without.
        """
        for flags in (gssapi.RequirementFlag.integrity, None):
            with self.subTest(flags=flags):
                client = self.client(flags=flags)
                self.assertIsInstance(self.run_exchange(self.mechanism(), client)[-1], Proven)
                self.assertFailed(self.replay(self.mechanism(), client.sent), "replay")

    @DETERMINISTIC
    @given(st.binary(min_size=1, max_size=400))
    def test_random_context_tokens(self, token: bytes) -> None:
        """Whatever the first token, a failure, never an exception."""
        self.assertIsInstance(self.successResultOf(self.mechanism().start(token)), Failed)

    @DETERMINISTIC
    @given(st.binary(max_size=60))
    def test_random_wrapped_choices(self, choice: bytes) -> None:
        """Whatever the client wraps, no exception, and no identity it may not use."""
        mechanism, client = self.mechanism(), self.client(flags=gssapi.RequirementFlag.integrity)
        self.successResultOf(mechanism.start(client.first()))
        step = self.successResultOf(mechanism.step(client.context.wrap(choice, False).message))
        if isinstance(step, Proven):
            self.assertEqual((step.authcid, choice[:1]), (ALICE, OFFER[:1]))
            self.assertIn(step.authzid, (None, SHARED))
        else:
            self.assertIsInstance(step, Failed)


class ExchangeTests(KDCTestCase):
    """The same exchange through L{Exchange} and the portal, as a protocol runs it."""

    def exchange(self, client: RFC4752Client, service: str = "imap") -> Any:
        portal = build_portal(GatewayRealm(), self.backend, Throttle(Clock(), ThrottleSettings()))
        challenges: list[bytes] = []
        exchange = Exchange(
            self.mechanism(service),
            portal,
            "127.0.0.1",
            False,
            IAuthenticatedUser,
            challenges.append,
        )
        done = exchange.begin(base64.b64encode(client.first()))
        answered = 0
        while not done.called:
            self.assertEqual(len(challenges), answered + 1, "no challenge and no outcome")
            response = client.answer(base64.b64decode(challenges[answered], validate=True))
            answered += 1
            exchange.respond(base64.b64encode(response))
        return self.successResultOf(done)

    def test_login(self) -> None:
        outcome = self.exchange(self.client())
        self.assertIsInstance(outcome, LoggedIn)
        self.assertEqual((outcome.account, outcome.mechanism), (ALICE, "GSSAPI"))
        self.assertEqual(outcome.avatar.account, ALICE)

    def test_acting_for_another_account(self) -> None:
        outcome = self.exchange(self.client(authzid=SHARED.encode()))
        self.assertIsInstance(outcome, LoggedIn)
        self.assertEqual(outcome.account, SHARED)

    def test_disabled_account_refused(self) -> None:
        """The ticket is good, but the directory has disabled the account."""
        self.backend.set_enabled(ALICE, False)
        self.assertEqual(self.exchange(self.client()), Refused())

    def test_wrong_service_refused(self) -> None:
        self.assertEqual(self.exchange(self.client(service="pop"), service="imap"), Refused())
