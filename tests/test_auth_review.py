"""
Security review of L{gateway.auth} and L{gateway.auth.sasl}: properties an
attacker would try to break (bypass, enumeration, throttle), each a test
that fails if the property does not hold.  Regression tests are named after
what they prevent.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth import otp as rfc2289
from gateway.auth.checkers import (
    AuthAttempt,
    PlainPasswordChecker,
    PlainPasswordCredentials,
    SASLOutcomeChecker,
)
from gateway.auth.portal import build_portal
from gateway.auth.realm import GatewayRealm, IAuthenticatedUser
from gateway.auth.sasl import registry
from gateway.auth.sasl.base import Challenge, Failed, Mechanism, Proven, SASLContext, Step
from gateway.auth.sasl.crammd5 import CramMD5
from gateway.auth.sasl.digestmd5 import DigestMD5
from gateway.auth.sasl.exchange import Exchange, LoggedIn, Outcome, Refused
from gateway.auth.sasl.otp import OTP
from gateway.auth.sasl.plain import Plain
from gateway.auth.sasl.scram import ScramSha256
from gateway.auth.throttle import Throttle, ThrottleSettings, parse_networks
from gateway.auth.usersfile import Account, Legacy
from gateway.auth.verifiers import OTPState, derive_scram_keys
from gateway.testing import MemoryAuthBackend
from tests import test_sasl_digestmd5 as digest_tests
from tests import test_sasl_scram as scram_tests
from tests.test_checkers import backend as checker_backend
from tests.test_directory import FileCase

ADDRESS = "192.0.2.7"
PASS = "This is a test."
NEW_PASS = "A brand new pass phrase"


def scram_keys(name: str, password: str = "pencil", iterations: int = 16) -> tuple[Any, ...]:
    return tuple(derive_scram_keys(name, password, alg, iterations)
                 for alg in ("SHA-1", "SHA-256"))


class ExchangeCase(SynchronousTestCase):
    """An L{Exchange} against a real portal and throttle, without sockets."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = Throttle(self.clock, ThrottleSettings(
            free_failures=100, pair_ban_after=2, address_ban_after=50))
        self.sent: list[bytes] = []

    def portal(self, backend: Any) -> Any:
        return build_portal(GatewayRealm(), backend, self.throttle)

    def begin(self, mech: Mechanism, backend: Any,
              initial: bytes | None) -> tuple[Exchange, Deferred[Outcome]]:
        exchange = Exchange(mech, self.portal(backend), ADDRESS, False, IAuthenticatedUser,
                            self.sent.append)
        return exchange, exchange.begin(initial)

    def ban_pair(self, account: str) -> None:
        for i in range(2):
            self.throttle.failed(ADDRESS, account, bytes([i]))
        self.assertFalse(self.throttle.check(ADDRESS, account).allowed)

    def ban_address(self) -> None:
        for i in range(50):
            self.throttle.failed(ADDRESS, f"someone{i}@example.edu")
        self.assertFalse(self.throttle.check(ADDRESS, None).allowed)

    def decoded(self) -> list[bytes]:
        return [base64.b64decode(line) for line in self.sent]


class BanHidesSuccessTests(ExchangeCase):
    """
    SCRAM's server-final and DIGEST-MD5's rspauth tell the client its proof
    was right before the portal (and its throttle) is asked: without a check
    before them, a banned client could go on guessing, with no delay, and see
    which guess was right.
    """

    def run_scram(self, password: str) -> Outcome:
        client = scram_tests.Client(password=password)
        mech = ScramSha256(scram_tests.context())
        exchange, d = self.begin(mech, scram_tests.BACKEND, base64.b64encode(client.first()))
        self.assertNoResult(d)
        final, verifier = client.final(self.decoded()[-1])
        exchange.respond(base64.b64encode(final))
        if not d.called:
            self.assertEqual(self.decoded()[-1], verifier)
            exchange.respond(b"")
        result: Outcome = self.successResultOf(d)
        return result

    def test_scram_login_works_when_not_banned(self) -> None:
        outcome = self.run_scram("pencil")
        self.assertIsInstance(outcome, LoggedIn)
        assert isinstance(outcome, LoggedIn)
        self.assertEqual(outcome.account, "user")

    def test_banned_pair_sees_no_scram_server_final(self) -> None:
        """A right guess by a banned pair: no v=, the same refusal as a wrong one."""
        self.ban_pair("user")
        right = self.run_scram("pencil")
        self.assertFalse([m for m in self.decoded() if m.startswith(b"v=")], self.decoded())
        wrong = self.run_scram("not pencil")
        self.assertEqual(right, Refused(temporary=True))
        self.assertEqual(wrong, Refused(temporary=True))

    def test_banned_pair_sees_no_digest_md5_rspauth(self) -> None:
        self.ban_pair("chris")
        mech = DigestMD5(SASLContext(service="imap", hostname=digest_tests.HOST,
                                     backend=digest_tests.make_backend()),
                         nonce_source=lambda: digest_tests.NONCE)
        exchange, d = self.begin(mech, digest_tests.make_backend(), None)
        response, rspauth = digest_tests.client_response()
        exchange.respond(base64.b64encode(response))
        self.assertNotIn(rspauth, self.decoded())
        self.assertEqual(self.successResultOf(d), Refused(temporary=True))

    def test_banned_address_does_no_password_work(self) -> None:
        """A banned address is refused before the mechanism runs (no PBKDF2 to burn)."""
        calls: list[str] = []

        class Spy(MemoryAuthBackend):
            def check_password(self, authcid: str, password: bytes) -> Deferred[str | None]:
                calls.append(authcid)
                return super().check_password(authcid, password)

        backend = Spy()
        backend.add_account("alice@example.edu", "pw", iterations=16)
        self.ban_address()
        mech = Plain(SASLContext(service="smtp", hostname="h", backend=backend, encrypted=True))
        _, d = self.begin(mech, backend, base64.b64encode(b"\0alice@example.edu\0pw"))
        self.assertEqual(self.successResultOf(d), Refused(temporary=True))
        self.assertEqual(calls, [])


class OTPReinitialisationRaceTests(FileCase):
    """
    RFC 2243 re-initialisation racing a login: an OTP of the old chain,
    answered after the chain was replaced, must not be stored under the new
    seed (the owner would be locked out, the old pass phrase let in).
    """

    def setUp(self) -> None:
        state = OTPState("alice@example.edu", "md5", "ke1234", 500,
                         rfc2289.otp("md5", PASS, "ke1234", 500))
        self.dir, self.users = self.directory(
            Account("alice@example.edu", scram=scram_keys("alice@example.edu"), otp=state))

    def context(self) -> SASLContext:
        return SASLContext(service="imap", hostname="h", backend=self.dir, encrypted=True)

    def test_old_chain_otp_not_stored_after_reinitialisation(self) -> None:
        old = OTP(self.context())
        step = self.successResultOf(old.start(b"\0alice@example.edu"))
        self.assertEqual(step, Challenge(b"otp-md5 499 ke1234 ext"))
        # Meanwhile the owner re-initialises, keeping the count (500).
        owner = OTP(self.context())
        self.successResultOf(owner.start(b"\0alice@example.edu"))
        current = rfc2289.to_hex(rfc2289.otp("md5", PASS, "ke1234", 499))
        new = rfc2289.to_hex(rfc2289.otp("md5", NEW_PASS, "ne0001", 500))
        done = self.successResultOf(owner.step(
            f"init-hex:{current}:md5 500 ne0001:{new}".encode()))
        self.assertIsInstance(done, Proven)
        # The old session answers its challenge with the old chain's OTP.
        late = self.successResultOf(old.step(b"hex:" + current.encode()))
        self.assertIsInstance(late, Failed)
        on_disk = self.users.load().accounts["alice@example.edu"].otp
        assert on_disk is not None
        self.assertEqual((on_disk.seed, on_disk.sequence, on_disk.key.hex()),
                         ("ne0001", 500, new))
        # The old pass phrase does not get in; the new one does.
        for passphrase, expected in ((PASS, Failed), (NEW_PASS, Proven)):
            mech = OTP(self.context())
            self.assertEqual(self.successResultOf(mech.start(b"\0alice@example.edu")),
                             Challenge(b"otp-md5 499 ne0001 ext"))
            seed = "ke1234" if passphrase == PASS else "ne0001"
            answer = rfc2289.to_hex(rfc2289.otp("md5", passphrase, seed, 499))
            self.assertIsInstance(self.successResultOf(mech.step(answer.encode())), expected)

    def test_advance_refuses_a_key_of_another_chain(self) -> None:
        """The compare-and-set is on the chain, not only the sequence number."""
        other = rfc2289.otp("md5", NEW_PASS, "ke1234", 499)
        self.assertFalse(self.successResultOf(
            self.dir.otp_advance("alice@example.edu", 499, other)))
        right = rfc2289.otp("md5", PASS, "ke1234", 499)
        self.assertTrue(self.successResultOf(
            self.dir.otp_advance("alice@example.edu", 499, right)))
        # A replay of the same OTP now fails too (sequence and chain moved on).
        self.assertFalse(self.successResultOf(
            self.dir.otp_advance("alice@example.edu", 499, right)))


class FakeAnswerEnumerationTests(FileCase):
    """
    Unknown names get fake SCRAM salts and OTP challenges; two names the
    directory takes as one account must get the same fake answer, as they get
    the same real one, or comparing the answers lists the accounts.
    """

    NAMES = [("bob", "bob@example.edu"), ("Bob", "BOB@EXAMPLE.EDU"),
             ("strasse@example.edu", "straße@example.edu"),
             ("bob@example.edu", "rob@example.edu")]

    def setUp(self) -> None:
        state = OTPState("alice@example.edu", "md5", "ke1234", 500,
                         rfc2289.otp("md5", PASS, "ke1234", 500))
        self.dir, _ = self.directory(
            Account("alice@example.edu", scram=scram_keys("alice@example.edu"), otp=state),
            default_domain="example.edu")

    def context(self) -> SASLContext:
        return SASLContext(service="imap", hostname="h", backend=self.dir, encrypted=True)

    def salt(self, name: str) -> bytes:
        mech = ScramSha256(self.context())
        step = self.successResultOf(mech.start(f"n,,n={name},r=abcdef".encode()))
        assert isinstance(step, Challenge), step
        attrs = dict(a.split("=", 1) for a in step.data.decode().split(","))
        return attrs["s"].encode() + b"," + attrs["i"].encode()

    def otp_challenge(self, name: str) -> bytes:
        step = self.successResultOf(OTP(self.context()).start(b"\0" + name.encode()))
        assert isinstance(step, Challenge), step
        return step.data

    def test_known_names_agree(self) -> None:
        """What the attacker compares against: a real account's two names agree."""
        self.assertEqual(self.salt("alice"), self.salt("Alice@Example.EDU"))
        self.assertEqual(self.otp_challenge("alice"), self.otp_challenge("ALICE@example.edu"))

    def test_unknown_names_agree_exactly_when_the_directory_merges_them(self) -> None:
        for one, two in self.NAMES:
            same = self.dir.canonical_name(one) == self.dir.canonical_name(two)
            self.assertEqual(self.salt(one) == self.salt(two), same, (one, two))
            self.assertEqual(self.otp_challenge(one) == self.otp_challenge(two), same,
                             (one, two))


class LegacyTimingTests(FileCase):
    """
    An account holding only a legacy secret must not answer a wrong password
    sooner than an unknown account (one PBKDF2 against a SHA-256 compare).
    """

    def test_legacy_only_account_not_faster_than_unknown(self) -> None:
        iterations = 200_000
        directory, _ = self.directory(
            Account("alice@example.edu", scram=scram_keys("alice@example.edu", "x", iterations)),
            Account("old@example.edu", legacy=Legacy((), "imported secret")))

        def timed(name: str) -> float:
            start = time.perf_counter()
            self.assertIsNone(self.successResultOf(directory.check_password(name, b"guess")))
            return time.perf_counter() - start

        timed("nobody@example.edu")  # build the dummy keys first
        unknown = min(timed("nobody@example.edu") for _ in range(2))
        legacy = min(timed("old@example.edu") for _ in range(2))
        self.assertGreater(legacy, unknown / 4, (legacy, unknown))
        # And it still logs in (and gets its SCRAM keys).
        self.assertEqual(self.successResultOf(
            directory.check_password("old@example.edu", b"imported secret")), "old@example.edu")


class CheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = Throttle(self.clock, ThrottleSettings(
            free_failures=100, pair_ban_after=3, address_ban_after=100))
        self.backend = checker_backend()
        self.sasl = SASLOutcomeChecker(self.backend, self.throttle)

    def attempt(self, step: Any) -> Deferred[Any]:
        return self.sasl.requestAvatarId(AuthAttempt(step, ADDRESS))

    def test_avatar_id_is_canonical(self) -> None:
        """A mechanism's non-canonical account (GSSAPI's mapping) is not a new account."""
        d = self.attempt(Proven("Alice@Example.EDU", "GSSAPI"))
        self.assertEqual(self.successResultOf(d), "alice@example.edu")

    def test_acting_for_another_does_not_forgive_failures_against_it(self) -> None:
        for _ in range(2):
            self.failureResultOf(self.attempt(
                Failed("wrong", "PLAIN", authcid="shared@example.edu")), UnauthorizedLogin)
        d = self.attempt(Proven("alice@example.edu", "PLAIN", authzid="shared@example.edu"))
        self.assertEqual(self.successResultOf(d), "shared@example.edu")
        self.failureResultOf(self.attempt(
            Failed("wrong", "PLAIN", authcid="shared@example.edu")), UnauthorizedLogin)
        self.assertFalse(self.throttle.check(ADDRESS, "shared@example.edu").allowed)

    def test_own_success_still_forgives_own_failures(self) -> None:
        for _ in range(2):
            self.failureResultOf(self.attempt(
                Failed("wrong", "PLAIN", authcid="alice@example.edu")), UnauthorizedLogin)
        self.successResultOf(self.attempt(Proven("alice@example.edu", "PLAIN")))
        self.failureResultOf(self.attempt(
            Failed("wrong", "PLAIN", authcid="alice@example.edu")), UnauthorizedLogin)
        self.assertTrue(self.throttle.check(ADDRESS, "alice@example.edu").allowed)

    def test_unknown_and_known_accounts_look_the_same(self) -> None:
        """Plain passwords: the same error after the same delay, the same counting."""
        throttle = Throttle(self.clock, ThrottleSettings(free_failures=0))
        plain = PlainPasswordChecker(self.backend, throttle)
        delays = []
        for name, address in (("alice@example.edu", "198.51.100.1"),
                              ("nobody@example.edu", "198.51.100.2")):
            d = plain.requestAvatarId(PlainPasswordCredentials(name, b"wrong", address))
            outcome: list[Any] = []
            d.addErrback(outcome.append)
            waited = 0.0
            while not outcome and waited < 100:
                self.clock.advance(0.5)
                waited += 0.5
            self.assertTrue(outcome and outcome[0].check(UnauthorizedLogin), outcome)
            delays.append(waited)
        self.assertEqual(delays[0], delays[1])


# -- robustness: random client data ends in a clean failure -------------------


def fuzz_backend() -> MemoryAuthBackend:
    backend = MemoryAuthBackend()
    backend.add_account("user", "pencil", legacy=("CRAM-MD5", "DIGEST-MD5"), iterations=16,
                        may_act_for=("shared",))
    backend.add_account("shared", "other", iterations=16)
    backend.set_otp("user", algorithm="md5", seed="ke1234", sequence=500,
                    key=rfc2289.otp("md5", PASS, "ke1234", 500))
    return backend


FUZZ_BACKEND = fuzz_backend()
MESSAGES = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"", b"\0user\0", b"n,,n=user,r=x", b"y,,n=user,r=x", b"p=tls-exporter,,",
                     b"user 0123456789abcdef0123456789abcdef", b'username="user",nonce="x"',
                     b"init-hex:0011223344556677:md5 10 ab12:0011223344556677",
                     b"c=biws,r=x,p=AAAA", b"\0user", b"user"]),
    st.text(max_size=80).map(lambda t: t.encode("utf-8")),
)


def fuzz_context() -> SASLContext:
    return SASLContext(service="imap", hostname="mail.example.org", backend=FUZZ_BACKEND,
                       encrypted=True, channel_binding={"tls-exporter": bytes(32)})


#: GSSAPI needs a keytab and the Kerberos library (which asks the DNS):
#: tests.test_sasl_gssapi feeds it random tokens through a stand-in module.
FUZZED = sorted(set(registry.MECHANISMS) - {"GSSAPI"})


class RandomInputTests(SynchronousTestCase):
    """Every registered mechanism, fed random client data: never an exception,
    never a hang (every step answers at once here), never a proof."""

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(FUZZED), st.none() | MESSAGES,
           st.lists(MESSAGES, max_size=4))
    def test_mechanisms(self, name: str, initial: bytes | None, responses: list[bytes]) -> None:
        mech = registry.MECHANISMS[name](fuzz_context())
        step: Step = self.successResultOf(mech.start(initial))
        for response in responses:
            if not isinstance(step, Challenge):
                break
            step = self.successResultOf(mech.step(response))
        self.assertIsInstance(step, (Challenge, Failed))
        self.assertNotIsInstance(step, Proven)

    @settings(max_examples=150, deadline=None)
    @given(st.sampled_from(FUZZED),
           st.none() | st.binary(max_size=40).map(base64.b64encode)
           | st.sampled_from([b"=", b"*", b"!!", b"AA=A"]),
           st.lists(st.binary(max_size=40).map(base64.b64encode)
                    | st.sampled_from([b"*", b"", b"%%", b"A", b" AAAA "]), max_size=4))
    def test_exchange(self, name: str, initial: bytes | None, lines: list[bytes]) -> None:
        """Through the framing and the portal: an outcome, never a login."""
        clock = Clock()
        throttle = Throttle(clock, ThrottleSettings(free_failures=1000))
        portal = build_portal(GatewayRealm(), FUZZ_BACKEND, throttle)
        mech = registry.MECHANISMS[name](fuzz_context())
        exchange = Exchange(mech, portal, ADDRESS, False, IAuthenticatedUser, lambda _: None)
        d = exchange.begin(initial)
        for line in lines:
            exchange.respond(line)
        clock.advance(3600)
        if d.called:
            self.assertIsInstance(self.successResultOf(d), Refused)
        else:
            self.assertTrue(exchange.waiting)


# -- replays and downgrades ---------------------------------------------------


class ReplayTests(SynchronousTestCase):
    def test_cram_md5_response_not_valid_for_another_challenge(self) -> None:
        import hmac as _hmac
        first, second = CramMD5(fuzz_context()), CramMD5(fuzz_context())
        c1 = self.successResultOf(first.start(None))
        c2 = self.successResultOf(second.start(None))
        assert isinstance(c1, Challenge) and isinstance(c2, Challenge)
        self.assertNotEqual(c1.data, c2.data)
        answer = b"user " + _hmac.new(b"pencil", c1.data, "md5").hexdigest().encode()
        self.assertIsInstance(self.successResultOf(second.step(answer)), Failed)
        self.assertIsInstance(self.successResultOf(first.step(answer)), Proven)

    def test_scram_client_final_not_valid_in_another_exchange(self) -> None:
        client = scram_tests.Client()
        one = ScramSha256(scram_tests.context())
        two = ScramSha256(scram_tests.context())
        first = self.successResultOf(one.start(client.first()))
        self.successResultOf(two.start(client.first()))
        assert isinstance(first, Challenge)
        final, _ = client.final(first.data)
        step = self.successResultOf(two.step(final))
        self.assertIsInstance(step, Failed)

    def test_digest_md5_response_not_valid_for_another_nonce(self) -> None:
        response, _ = digest_tests.client_response()
        mech = digest_tests.mechanism(nonce="AnotherNonce123")
        self.successResultOf(mech.start(None))
        self.assertIsInstance(self.successResultOf(mech.step(response)), Failed)

    def test_digest_md5_duplicate_directives_refused(self) -> None:
        response, _ = digest_tests.client_response()
        for extra in (',username="josé"'.encode(), b',Realm="x"', b',NC=00000001', b',cnonce="other"'):
            mech = digest_tests.mechanism()
            self.successResultOf(mech.start(None))
            step = self.successResultOf(mech.step(response + extra))
            assert isinstance(step, Failed), (extra, step)
            self.assertTrue(step.malformed, extra)

    def test_channel_binding_downgrade(self) -> None:
        """-PLUS offered: "y" (client thinks we cannot bind) is refused; "n" is not."""
        ctx = scram_tests.context(scram_tests.BINDING)
        for flag, refused in ((b"y,,", True), (b"n,,", False)):
            mech = registry.create("SCRAM-SHA-256", ctx)
            assert mech is not None
            step = self.successResultOf(mech.start(flag + b"n=user,r=abc"))
            self.assertEqual(isinstance(step, Failed), refused, flag)
        # Without -PLUS offered, "y" is fine.
        plain_ctx = scram_tests.context()
        mech = registry.create("SCRAM-SHA-256", plain_ctx)
        assert mech is not None
        self.assertIsInstance(self.successResultOf(mech.start(b"y,,n=user,r=abc")), Challenge)


# -- the throttle ---------------------------------------------------------------


class ThrottleReviewTests(SynchronousTestCase):
    def test_many_accounts_from_one_address_ban_the_address(self) -> None:
        throttle = Throttle(Clock(), ThrottleSettings(address_ban_after=10, pair_ban_after=5))
        for i in range(10):
            throttle.failed(ADDRESS, f"user{i}@example.edu", bytes([i]))
        self.assertFalse(throttle.check(ADDRESS, "fresh@example.edu").allowed)

    def test_ipv6_hosts_of_one_prefix_count_together(self) -> None:
        throttle = Throttle(Clock(), ThrottleSettings(address_ban_after=10, pair_ban_after=50))
        for i in range(10):
            throttle.failed(f"2001:db8:1:2::{i + 1:x}", f"u{i}", bytes([i]))
        self.assertFalse(throttle.check("2001:db8:1:2:ffff::1", None).allowed)
        self.assertFalse(throttle.check("[2001:db8:1:2::99]", None).allowed)
        self.assertTrue(throttle.check("2001:db8:1:3::1", None).allowed)

    def test_ipv4_mapped_counts_as_ipv4(self) -> None:
        throttle = Throttle(Clock(), ThrottleSettings(address_ban_after=3, pair_ban_after=50))
        for i in range(3):
            throttle.failed(f"::ffff:{ADDRESS}", f"u{i}", bytes([i]))
        self.assertFalse(throttle.check(ADDRESS, None).allowed)

    def test_trusted_network_never_banned(self) -> None:
        throttle = Throttle(Clock(), ThrottleSettings(
            address_ban_after=1, pair_ban_after=1, free_failures=0,
            trusted_networks=parse_networks(["10.0.0.0/8"])))
        for i in range(20):
            self.assertEqual(throttle.failed("10.1.2.3", "alice", bytes([i])), 0.0)
        self.assertTrue(throttle.check("10.1.2.3", "alice").allowed)
        self.assertTrue(throttle.check("::ffff:10.1.2.3", "alice").allowed)

    @settings(max_examples=30, deadline=None)
    @given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=300))
    def test_memory_bounded_under_a_flood_of_names(self, names: list[str]) -> None:
        cap = 20
        throttle = Throttle(Clock(), ThrottleSettings(max_tracked=cap, address_ban_after=10_000,
                                                      pair_ban_after=10_000))
        for i, name in enumerate(names):
            throttle.failed(f"198.51.{i // 250}.{i % 250}", name, name.encode("utf-8", "replace"))
            self.assertLessEqual(throttle.tracked(), 4 * cap)


class PortalPathTests(SynchronousTestCase):
    def test_disabled_account_cannot_finish_a_proven_exchange(self) -> None:
        """An account disabled between the mechanism and the portal gets no avatar."""
        backend = checker_backend()
        throttle = Throttle(Clock(), ThrottleSettings(free_failures=100))
        portal = build_portal(GatewayRealm(), backend, throttle)
        backend.set_enabled("alice@example.edu", False)
        d = portal.login(AuthAttempt(Proven("alice@example.edu", "PLAIN"), ADDRESS),
                         None, IAuthenticatedUser)
        self.failureResultOf(d, UnauthorizedLogin)

    def test_authzid_needs_may_act_for_at_the_portal_too(self) -> None:
        backend = checker_backend()
        throttle = Throttle(Clock(), ThrottleSettings(free_failures=100))
        portal = build_portal(GatewayRealm(), backend, throttle)
        d = portal.login(AuthAttempt(Proven("bob@example.edu", "PLAIN",
                                            authzid="alice@example.edu"), ADDRESS),
                         None, IAuthenticatedUser)
        self.failureResultOf(d, UnauthorizedLogin)

