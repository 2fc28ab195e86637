"""
Tests for L{gateway.auth.sasl.scram}: SCRAM-SHA-1, SCRAM-SHA-256 (RFC 5802,
RFC 7677) and their -PLUS variants with tls-exporter (RFC 9266).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.sasl.base import Challenge, Failed, MechanismDone, Proven, SASLContext, Step
from gateway.auth.sasl.scram import (
    MAX_MESSAGE,
    ScramSha1,
    ScramSha1Plus,
    ScramSha256,
    ScramSha256Plus,
    _Scram,
    decode_saslname,
)
from gateway.testing import MemoryAuthBackend

SALTS = {
    "SHA-1": base64.b64decode("QSXCR+Q6sek8bf92"),
    "SHA-256": base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="),
}
BINDING = bytes(range(32))
SERVER_NONCE = "3rfcNHYJY1ZVvWVs7j"
CLIENT_NONCE = "fyko+d2lbbFgONRv9qkxdawL"


def make_backend() -> MemoryAuthBackend:
    backend = MemoryAuthBackend()
    backend.add_account("user", "pencil", scram_salts=SALTS, may_act_for=("shared",))
    backend.add_account("odd,name=x", "pencil")
    backend.add_account("jo smith", "pencil")
    return backend


BACKEND = make_backend()  # PBKDF2 once for the whole module


def context(binding: bytes | None = None) -> SASLContext:
    return SASLContext(
        service="imap",
        hostname="mail.example.org",
        backend=BACKEND,
        encrypted=True,
        channel_binding={"tls-exporter": binding} if binding is not None else {},
    )


class Client:
    """A SCRAM client, written from RFC 5802 section 3, for the tests."""

    def __init__(
        self,
        algorithm: str = "sha256",
        user: str = "user",
        password: str = "pencil",
        nonce: str = CLIENT_NONCE,
        gs2_header: str = "n,,",
        cbind_data: bytes = b"",
    ) -> None:
        self.algorithm = algorithm
        self.password = password
        self.gs2_header = gs2_header
        self.cbind_data = cbind_data
        self.bare = f"n={user},r={nonce}"

    def first(self) -> bytes:
        return (self.gs2_header + self.bare).encode("utf-8")

    def final(self, server_first: bytes, extra: str = "") -> tuple[bytes, bytes]:
        """@return: the client-final-message and the server-final expected."""
        attrs = dict(a.split("=", 1) for a in server_first.decode().split(","))
        salted = hashlib.pbkdf2_hmac(
            self.algorithm, self.password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        client_key = hmac.digest(salted, b"Client Key", self.algorithm)
        stored_key = hashlib.new(self.algorithm, client_key).digest()
        cbind = base64.b64encode(self.gs2_header.encode() + self.cbind_data).decode()
        without_proof = f"c={cbind},r={attrs['r']}{extra}"
        message = f"{self.bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(stored_key, message, self.algorithm)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.digest(salted, b"Server Key", self.algorithm)
        verifier = base64.b64encode(hmac.digest(server_key, message, self.algorithm))
        final = f"{without_proof},p={base64.b64encode(proof).decode()}"
        return final.encode(), b"v=" + verifier


class ScramTestMixin:
    def assertFailed(self, step: Step, malformed: bool) -> None:
        assert isinstance(step, Failed), step
        self.assertEqual(step.malformed, malformed, step)  # type: ignore[attr-defined]

    def server_first(self, mech: _Scram, client: Client) -> bytes:
        step = self.successResultOf(mech.start(client.first()))  # type: ignore[attr-defined]
        assert isinstance(step, Challenge), step
        return step.data

    def login(self, mech: _Scram, client: Client) -> Step:
        """A whole exchange; the server's signature must be the right one."""
        final, verifier = client.final(self.server_first(mech, client))
        step = self.successResultOf(mech.step(final))  # type: ignore[attr-defined]
        if not isinstance(step, Challenge):
            return step
        self.assertEqual(step.data, verifier)  # type: ignore[attr-defined]
        return self.successResultOf(mech.step(b""))  # type: ignore[attr-defined]

    def final_step(self, client_final: bytes, mech: _Scram | None = None) -> Step:
        """Answer the RFC 7677 server-first with C{client_final}."""
        mech = mech or ScramSha256(context(), nonce_source=lambda: SERVER_NONCE)
        self.server_first(mech, Client())
        return self.successResultOf(mech.step(client_final))  # type: ignore[attr-defined]


class VectorTests(ScramTestMixin, SynchronousTestCase):
    def test_rfc5802_example(self) -> None:
        """RFC 5802 section 5, byte for byte."""
        mech = ScramSha1(context(), nonce_source=lambda: "3rfcNHYJY1ZVvWVs7j")
        steps = [
            self.successResultOf(mech.start(None)),
            self.successResultOf(mech.step(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")),
            self.successResultOf(
                mech.step(
                    b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
                    b"p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
                )
            ),
            self.successResultOf(mech.step(b"")),
        ]
        self.assertEqual(
            steps,
            [
                Challenge(b""),
                Challenge(
                    b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
                ),
                Challenge(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="),
                Proven(authcid="user", mechanism="SCRAM-SHA-1"),
            ],
        )
        self.assertRaises(MechanismDone, mech.step, b"")

    def test_rfc7677_example(self) -> None:
        """RFC 7677 section 3, byte for byte."""
        mech = ScramSha256(context(), nonce_source=lambda: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
        nonce = b"rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
        self.assertEqual(
            self.successResultOf(mech.start(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")),
            Challenge(b"r=" + nonce + b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
        )
        self.assertEqual(
            self.successResultOf(
                mech.step(
                    b"c=biws,r=" + nonce + b",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
                )
            ),
            Challenge(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
        )
        self.assertEqual(
            self.successResultOf(mech.step(b"")),
            Proven(authcid="user", mechanism="SCRAM-SHA-256"),
        )

    def test_client_helper_matches_rfc(self) -> None:
        client = Client("sha1")
        final, verifier = client.final(
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
        )
        self.assertTrue(final.endswith(b",p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="))
        self.assertEqual(verifier, b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")


class ScramTests(ScramTestMixin, SynchronousTestCase):
    def test_properties(self) -> None:
        self.assertEqual(
            [c.name for c in (ScramSha1, ScramSha256, ScramSha1Plus, ScramSha256Plus)],
            ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"],
        )
        self.assertFalse(ScramSha256.plaintext or ScramSha256.legacy)

    def test_default_nonce(self) -> None:
        first = self.server_first(ScramSha256(context()), Client())
        second = self.server_first(ScramSha256(context()), Client())
        self.assertNotEqual(first, second)
        nonce = first.split(b",")[0][2:]
        self.assertTrue(nonce.startswith(CLIENT_NONCE.encode()))
        self.assertGreaterEqual(len(nonce) - len(CLIENT_NONCE), 18)
        self.assertNotIn(b",", nonce)

    def test_success(self) -> None:
        for mech, algorithm in [(ScramSha256, "sha256"), (ScramSha1, "sha1")]:
            self.assertEqual(
                self.login(mech(context()), Client(algorithm, user="USER")),
                Proven(authcid="user", mechanism=mech.name),
            )

    def test_wrong_password(self) -> None:
        step = self.login(ScramSha256(context()), Client(password="wrong"))
        self.assertEqual(
            step,
            Failed("wrong proof or unknown account", "SCRAM-SHA-256", authcid="user"),
        )

    def test_unknown_user_looks_known(self) -> None:
        """
        An unknown name gets a server-first of the same shape as a known one,
        the same salt each time (also in another case), and fails at the
        proof like a wrong password.
        """
        shape = re.compile(
            rb"\Ar=" + re.escape(CLIENT_NONCE.encode())
            + rb"[\x21-\x2b\x2d-\x7e]{24},s=[A-Za-z0-9+/]{22}==,i=4096\Z"
        )
        known = self.server_first(ScramSha256(context()), Client(user="jo smith"))
        unknown = self.server_first(ScramSha256(context()), Client(user="nobody"))
        again = self.server_first(ScramSha256(context()), Client(user="NoBody"))
        self.assertRegex(known, shape)
        self.assertRegex(unknown, shape)
        self.assertEqual(unknown.split(b",")[1], again.split(b",")[1])
        sha1 = self.server_first(ScramSha1(context()), Client("sha1", user="nobody"))
        self.assertNotEqual(unknown.split(b",")[1], sha1.split(b",")[1])
        wrong = self.login(ScramSha256(context()), Client(user="jo smith", password="x"))
        step = self.login(ScramSha256(context()), Client(user="nobody", password="x"))
        assert isinstance(step, Failed) and isinstance(wrong, Failed)
        self.assertEqual((step.reason, step.malformed), (wrong.reason, wrong.malformed))

    def test_saslname_escapes(self) -> None:
        step = self.login(ScramSha256(context()), Client(user="odd=2Cname=3Dx"))
        self.assertEqual(step, Proven(authcid="odd,name=x", mechanism="SCRAM-SHA-256"))

    def test_username_saslprep(self) -> None:
        """RFC 4013 maps a no-break space to a space."""
        step = self.login(ScramSha256(context()), Client(user="jo\u00a0smith"))
        self.assertEqual(step, Proven(authcid="jo smith", mechanism="SCRAM-SHA-256"))

    def test_authzid(self) -> None:
        def login(header: str) -> Step:
            return self.login(ScramSha256(context()), Client(gs2_header=header))

        self.assertEqual(login("n,a=user,"), Proven("user", "SCRAM-SHA-256"))
        self.assertEqual(login("n,a=shared,"), Proven("user", "SCRAM-SHA-256", "shared"))
        refused = login("n,a=root,")
        self.assertFailed(refused, malformed=False)
        self.assertEqual(refused.authcid, "user")  # type: ignore[union-attr]

    def test_y_flag(self) -> None:
        """
        "y" is fine unless this connection offered -PLUS (RFC 5802 section 6).
        """
        client = Client(gs2_header="y,,")
        self.assertIsInstance(self.login(ScramSha256(context()), client), Proven)
        mech = ScramSha256(context(BINDING), plus_advertised=True)
        self.assertFailed(self.successResultOf(mech.start(client.first())), malformed=False)
        # "n" is still fine: the client does not support binding.
        mech = ScramSha256(context(BINDING), plus_advertised=True)
        self.assertIsInstance(self.login(mech, Client()), Proven)

    def test_channel_binding_on_plain_scram(self) -> None:
        client = Client(gs2_header="p=tls-exporter,,", cbind_data=BINDING)
        step = self.successResultOf(ScramSha256(context(BINDING)).start(client.first()))
        self.assertFailed(step, malformed=False)

    def test_malformed_client_first(self) -> None:
        for message in [
            b"",
            b"n=user,r=abc",
            b"n,,",
            b"x,,n=user,r=abc",
            b"p=,,n=user,r=abc",
            b"p=tls exporter,,n=user,r=abc",
            b"n,b=user,n=user,r=abc",
            b"n,a=,n=user,r=abc",
            b"n,a=a=2Xb,n=user,r=abc",
            b"n,,m=foo,n=user,r=abc",
            b"n,,n=user,r=abc,x=ext",
            b"n,,n=user,r=abc,m=foo",
            b"n,,r=abc,n=user",
            b"n,,n=user",
            b"n,,n=,r=abc",
            b"n,,n=us=er,r=abc",
            b"n,,n=us=2xer,r=abc",
            b"n,,n=user=,r=abc",
            b"n,,n=us\x07er,r=abc",
            b"n,,n=us\xffer,r=abc",
            b"n,,n=user,r=",
            b"n,,n=user,r=a c",
            b"n,,n=user,r=a\x7fc",
            b"n,,n=user,r=ab\xc3\xa9",
            b"n,,n=user,x=abc",
            b"n,,n=user,r=abc" + b"c" * MAX_MESSAGE,
        ]:
            self.assertFailed(self.successResultOf(ScramSha256(context()).start(message)), True)

    def test_malformed_client_final(self) -> None:
        nonce = CLIENT_NONCE + SERVER_NONCE
        good, _ = Client().final(f"r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".encode())
        proof = good.split(b",p=")[1]
        for message in [
            b"",
            good.replace(b",p=", b",x="),
            good.replace(b"c=biws,", b""),
            b"r=" + nonce.encode() + b",c=biws,p=" + proof,
            good.replace(b"c=biws", b"c=biws,x=ext"),
            good.replace(b",p=", b",m=ext,p="),
            good.replace(b"c=biws", b"c=b!ws"),
            good.replace(b"c=biws", b"c=biw"),
            good.replace(b"p=" + proof, b"p=" + proof[:-1]),
            good.replace(b"p=" + proof, b"p=" + base64.b64encode(b"x" * 31)),
            good.replace(b"p=" + proof, b"p=" + base64.b64encode(b"x" * 33)),
            good.replace(b"p=" + proof, b"p=" + base64.b64encode(b"x" * 20)),
            good.replace(b"p=" + proof, b"p="),
            good + b"\xc3\xa9",
            good + b"," + b"x" * MAX_MESSAGE,
        ]:
            self.assertFailed(self.final_step(message), malformed=True)
        self.assertIsInstance(self.final_step(good), Challenge)

    def test_wrong_nonce_or_binding(self) -> None:
        nonce = CLIENT_NONCE + SERVER_NONCE
        good, _ = Client().final(f"r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".encode())
        for message in [
            good.replace(nonce.encode(), CLIENT_NONCE.encode()),
            good.replace(nonce.encode(), nonce.encode() + b"x"),
            good.replace(b"c=biws", b"c=eSws"),  # "y,,": not what the client said
            good.replace(b"c=biws", b"c=" + base64.b64encode(b"n,," + BINDING)),
        ]:
            self.assertFailed(self.final_step(message), malformed=False)

    def test_non_empty_answer_to_server_final(self) -> None:
        mech = ScramSha256(context())
        final, _ = Client().final(self.server_first(mech, Client()))
        self.assertIsInstance(self.successResultOf(mech.step(final)), Challenge)
        self.assertFailed(self.successResultOf(mech.step(b"v=x")), malformed=True)

    def test_initial_response(self) -> None:
        self.assertEqual(self.successResultOf(ScramSha256(context()).start(None)), Challenge(b""))
        self.assertFailed(self.successResultOf(ScramSha256(context()).start(b"")), True)

    def test_bad_server_nonce_source(self) -> None:
        """A nonce source that breaks the grammar is a bug, not a client error."""
        mech = ScramSha256(context(), nonce_source=lambda: "a,b")
        self.failureResultOf(mech.start(Client().first()), ValueError)

    def test_step_before_start(self) -> None:
        self.assertRaises(MechanismDone, ScramSha256(context()).step, b"")

    def test_decode_saslname(self) -> None:
        self.assertEqual(decode_saslname("a=2Cb=3Dc"), "a,b=c")
        self.assertEqual(decode_saslname("=3D=2C"), "=,")
        for bad in ["", "a=", "a=2", "a=2c", "a=41", "a,b", "a\0b"]:
            self.assertIsNone(decode_saslname(bad))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200), st.sampled_from([ScramSha1, ScramSha256Plus]))
    def test_random_client_first(self, data: bytes, cls: type[_Scram]) -> None:
        step = self.successResultOf(cls(context(BINDING)).start(data))
        self.assertIsInstance(step, (Failed, Challenge))

    @settings(max_examples=100, deadline=None)
    @given(st.binary(max_size=200), st.binary(max_size=20))
    def test_random_client_final(self, data: bytes, last: bytes) -> None:
        mech = ScramSha256(context())
        self.server_first(mech, Client())
        step = self.successResultOf(mech.step(data))
        if isinstance(step, Challenge):
            step = self.successResultOf(mech.step(last))
        self.assertIsInstance(step, Failed)

    @settings(max_examples=100, deadline=None)
    @given(st.from_regex(rb"\Ac=[A-Za-z0-9+/=]{0,12},r=[!-~]{0,50},p=[A-Za-z0-9+/=]{0,50}\Z"))
    def test_random_well_formed_final(self, data: bytes) -> None:
        self.assertIsInstance(self.final_step(data), Failed)


class PlusTests(ScramTestMixin, SynchronousTestCase):
    def client(self, binding: bytes = BINDING, name: str = "tls-exporter") -> Client:
        return Client(gs2_header=f"p={name},,", cbind_data=binding)

    def test_available(self) -> None:
        self.assertTrue(ScramSha256Plus.available(context(BINDING)))
        self.assertFalse(ScramSha256Plus.available(context()))
        self.assertFalse(ScramSha1Plus.available(context(b"")))
        self.assertTrue(ScramSha256.available(context()))

    def test_success(self) -> None:
        for mech, algorithm in [(ScramSha256Plus, "sha256"), (ScramSha1Plus, "sha1")]:
            client = self.client()
            client.algorithm = algorithm
            self.assertEqual(
                self.login(mech(context(BINDING)), client), Proven("user", mech.name)
            )

    def test_wrong_binding_data(self) -> None:
        """A man in the middle's TLS session has other exporter data."""
        step = self.login(ScramSha256Plus(context(BINDING)), self.client(b"\0" * 32))
        self.assertFailed(step, malformed=False)

    def test_no_binding_refused(self) -> None:
        for header in ["n,,", "y,,"]:
            mech = ScramSha256Plus(context(BINDING))
            step = self.successResultOf(mech.start(Client(gs2_header=header).first()))
            self.assertFailed(step, malformed=False)

    def test_other_binding_type(self) -> None:
        for name in ["tls-unique", "tls-server-end-point"]:
            mech = ScramSha256Plus(context(BINDING))
            step = self.successResultOf(mech.start(self.client(name=name).first()))
            self.assertFailed(step, malformed=False)

    def test_no_binding_data_on_connection(self) -> None:
        step = self.successResultOf(ScramSha256Plus(context()).start(self.client().first()))
        self.assertFailed(step, malformed=False)
