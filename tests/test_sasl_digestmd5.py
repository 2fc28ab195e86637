"""
Tests for L{gateway.auth.sasl.digestmd5}: DIGEST-MD5 (RFC 2831), qop=auth.
"""

from __future__ import annotations

import base64
import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.sasl.base import Challenge, Failed, MechanismDone, Proven, SASLContext, Step
from gateway.auth.sasl.digestmd5 import DigestMD5, DirectiveError, parse_directives
from gateway.testing import MemoryAuthBackend

HOST = "elwood.innosoft.com"
NONCE = "OA6MG9tEQGm2hh"
CNONCE = "OA6MHXh6VqTrRk"

# RFC 2831 section 4, as base64 on the wire.
RFC_CHALLENGE = base64.b64decode(
    "cmVhbG09ImVsd29vZC5pbm5vc29mdC5jb20iLG5vbmNlPSJPQTZNRzl0"
    "RVFHbTJoaCIscW9wPSJhdXRoIixhbGdvcml0aG09bWQ1LXNlc3MsY2hh"
    "cnNldD11dGYtOA=="
)
RFC_RESPONSE = base64.b64decode(
    "Y2hhcnNldD11dGYtOCx1c2VybmFtZT0iY2hyaXMiLHJlYWxtPSJlbHdvb2"
    "QuaW5ub3NvZnQuY29tIixub25jZT0iT0E2TUc5dEVRR20yaGgiLG5jPTAw"
    "MDAwMDAxLGNub25jZT0iT0E2TUhYaDZWcVRyUmsiLGRpZ2VzdC11cmk9Im"
    "ltYXAvZWx3b29kLmlubm9zb2Z0LmNvbSIscmVzcG9uc2U9ZDM4OGRhZDkw"
    "ZDRiYmQ3NjBhMTUyMzIxZjIxNDNhZjcscW9wPWF1dGg="
)
RFC_RSPAUTH = base64.b64decode("cnNwYXV0aD1lYTQwZjYwMzM1YzQyN2I1NTI3Yjg0ZGJhYmNkZmZmZA==")


def make_backend() -> MemoryAuthBackend:
    backend = MemoryAuthBackend()
    legacy = ("DIGEST-MD5",)
    backend.add_account("chris", "secret", legacy=legacy, may_act_for=("shared",), iterations=16)
    backend.add_account("cram-only", "secret", legacy=("CRAM-MD5",), iterations=16)
    backend.add_account("josé", "sécret", legacy=legacy, iterations=16)
    backend.add_account("Ωmega", "пароль", legacy=legacy, iterations=16)
    return backend


def mechanism(nonce: str = NONCE, service: str = "imap") -> DigestMD5:
    ctx = SASLContext(service=service, hostname=HOST, backend=make_backend())
    return DigestMD5(ctx, nonce_source=lambda: nonce)


def hashable(text: str) -> bytes:
    try:
        return text.encode("iso-8859-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def client_response(
    username: str = "chris",
    password: str = "secret",
    *,
    realm: str | None = HOST,
    nonce: str = NONCE,
    cnonce: str = CNONCE,
    nc: str = "00000001",
    digest_uri: str = "imap/" + HOST,
    authzid: str | None = None,
    charset: bool = True,
    extra: str = "",
) -> tuple[bytes, bytes]:
    """
    A client's digest-response, computed here from RFC 2831 section 2.1.2.1,
    and the rspauth it expects.
    """

    def h(data: bytes) -> bytes:
        return hashlib.md5(data).digest()

    def hx(data: bytes) -> bytes:
        return hashlib.md5(data).hexdigest().encode()

    a1 = h(b":".join([hashable(username), hashable(realm or ""), hashable(password)]))
    a1 += f":{nonce}:{cnonce}".encode()
    if authzid:
        a1 += b":" + authzid.encode()

    def kd(a2: bytes) -> bytes:
        fields = [hx(a1), nonce.encode(), nc.encode(), cnonce.encode(), b"auth", hx(a2)]
        return hx(b":".join(fields))

    uri = digest_uri.encode()
    encoding = "utf-8" if charset else "iso-8859-1"
    parts = [
        b"charset=utf-8" if charset else b"",
        b'username="' + username.encode(encoding) + b'"',
        b'realm="' + realm.encode(encoding) + b'"' if realm is not None else b"",
        f'nonce="{nonce}",nc={nc},cnonce="{cnonce}",digest-uri="{digest_uri}"'.encode(),
        b"response=" + kd(b"AUTHENTICATE:" + uri),
        b"qop=auth",
        f'authzid="{authzid}"'.encode() if authzid is not None else b"",
        extra.encode(),
    ]
    return b",".join(part for part in parts if part), b"rspauth=" + kd(b":" + uri)


class DigestMD5Tests(SynchronousTestCase):
    def respond(self, response: bytes, mech: DigestMD5 | None = None) -> Step:
        mech = mech or mechanism()
        self.assertIsInstance(self.successResultOf(mech.start(None)), Challenge)
        return self.successResultOf(mech.step(response))

    def login(self, response: bytes, rspauth: bytes, mech: DigestMD5 | None = None) -> Step:
        """Run a whole exchange that must reach rspauth."""
        mech = mech or mechanism()
        self.assertEqual(self.respond(response, mech), Challenge(rspauth))
        return self.successResultOf(mech.step(b""))

    def assertFailed(self, step: Step, malformed: bool) -> None:
        assert isinstance(step, Failed), step
        self.assertEqual(step.malformed, malformed, step)
        self.assertEqual(step.mechanism, "DIGEST-MD5")

    def test_properties(self) -> None:
        self.assertTrue(DigestMD5.legacy)
        self.assertFalse(DigestMD5.plaintext)

    def test_rfc2831_example(self) -> None:
        """RFC 2831 section 4, byte for byte."""
        mech = mechanism()
        self.assertEqual(self.successResultOf(mech.start(None)), Challenge(RFC_CHALLENGE))
        self.assertEqual(self.successResultOf(mech.step(RFC_RESPONSE)), Challenge(RFC_RSPAUTH))
        self.assertEqual(
            self.successResultOf(mech.step(b"")),
            Proven(authcid="chris", mechanism="DIGEST-MD5"),
        )
        self.assertRaises(MechanismDone, mech.step, b"")

    def test_client_helper_matches_rfc(self) -> None:
        """The test's own client computes the RFC's values."""
        response, rspauth = client_response()
        self.assertIn(b"response=d388dad90d4bbd760a152321f2143af7", response)
        self.assertEqual(rspauth, RFC_RSPAUTH)

    def test_challenge_tokens_unquoted(self) -> None:
        """algorithm and charset are sent as tokens (RFC 2831 section 7.1)."""
        challenge = self.successResultOf(DigestMD5(mechanism().context).start(None))
        assert isinstance(challenge, Challenge)
        self.assertTrue(challenge.data.endswith(b",algorithm=md5-sess,charset=utf-8"))
        self.assertTrue(challenge.data.startswith(b'realm="elwood.innosoft.com",nonce="'))
        nonce = dict(parse_directives(challenge.data))["nonce"]
        self.assertGreaterEqual(len(nonce), 16)
        other = self.successResultOf(DigestMD5(mechanism().context).start(None))
        assert isinstance(other, Challenge)
        self.assertNotEqual(dict(parse_directives(other.data))["nonce"], nonce)

    def test_non_empty_answer_to_rspauth(self) -> None:
        mech = mechanism()
        self.respond(RFC_RESPONSE, mech)
        self.assertFailed(self.successResultOf(mech.step(b"rspauth=x")), malformed=True)

    def test_wrong_password(self) -> None:
        step = self.respond(client_response(password="wrong")[0])
        self.assertEqual(
            step,
            Failed("wrong response or unknown account", "DIGEST-MD5", authcid="chris"),
        )

    def test_no_secret_like_wrong_password(self) -> None:
        wrong = self.respond(client_response(password="wrong")[0])
        assert isinstance(wrong, Failed)
        for user in ["nobody", "cram-only"]:
            step = self.respond(client_response(username=user)[0])
            self.assertEqual(step, Failed(wrong.reason, "DIGEST-MD5", user))

    def test_authzid(self) -> None:
        self.assertEqual(
            self.login(*client_response(authzid="shared")),
            Proven(authcid="chris", mechanism="DIGEST-MD5", authzid="shared"),
        )
        self.assertEqual(
            self.login(*client_response(authzid="chris")),
            Proven(authcid="chris", mechanism="DIGEST-MD5"),
        )
        # The authzid is part of A1: it cannot be changed on the way.
        response, _ = client_response(authzid="shared")
        step = self.respond(response.replace(b'authzid="shared"', b'authzid="chris"'))
        self.assertFailed(step, malformed=False)

    def test_authzid_refused_before_rspauth(self) -> None:
        step = self.respond(client_response(authzid="root")[0])
        self.assertFailed(step, malformed=False)

    def test_charset_iso_8859_1_conversion(self) -> None:
        """
        With charset=utf-8, strings ISO 8859-1 can hold are hashed in it;
        others in UTF-8 (RFC 2831 section 2.1.2.1).
        """
        self.assertEqual(
            self.login(*client_response("josé", "sécret")),
            Proven(authcid="josé", mechanism="DIGEST-MD5"),
        )
        self.assertEqual(
            self.login(*client_response("Ωmega", "пароль")),
            Proven(authcid="Ωmega", mechanism="DIGEST-MD5"),
        )

    def test_no_charset(self) -> None:
        """Without charset=utf-8 the client speaks ISO 8859-1."""
        response, rspauth = client_response("josé", "sécret", charset=False)
        self.assertIn(b'username="jos\xe9"', response)
        self.assertIsInstance(self.login(response, rspauth), Proven)

    def test_utf8_hashed_as_sent_fails(self) -> None:
        """A client hashing a Latin-1-representable password in UTF-8 fails."""
        response, _ = client_response("josé", "sécret")
        wrong, _ = client_response("josé", "s\u00e9cret".encode().decode("iso-8859-1"))
        self.assertNotEqual(response, wrong)
        self.assertFailed(self.respond(wrong), malformed=False)

    def test_realm_absent(self) -> None:
        self.assertIsInstance(self.login(*client_response(realm=None)), Proven)

    def test_wrong_realm(self) -> None:
        self.assertFailed(self.respond(client_response(realm="evil.example")[0]), False)
        self.assertFailed(self.respond(client_response(realm="")[0]), False)

    def test_wrong_nonce(self) -> None:
        step = self.respond(client_response(nonce="OA6MG9tEQGm2hX")[0])
        self.assertFailed(step, False)
        # Refused for the nonce itself, before any digest is computed.
        self.assertEqual(step.reason, "not our nonce")  # type: ignore[union-attr]

    def test_replayed_response(self) -> None:
        """The RFC exchange replayed to a server with a fresh nonce fails."""
        self.assertFailed(self.respond(RFC_RESPONSE, mechanism(nonce="fresh")), False)

    def test_nonce_count_not_one(self) -> None:
        for nc in ["00000002", "00000000", "ffffffff"]:
            self.assertFailed(self.respond(client_response(nc=nc)[0]), False)
        for nc in ["1", "000000001", "0000000g"]:
            self.assertFailed(self.respond(client_response(nc=nc)[0]), True)

    def test_digest_uri(self) -> None:
        ok = client_response(digest_uri="IMAP/ELWOOD.innosoft.com/elwood.innosoft.com")
        self.assertIsInstance(self.login(*ok), Proven)
        for uri in [
            "smtp/" + HOST,
            "imap/evil.example",
            "imap/" + HOST + ".evil.example",
            "imap",
            "imap/",
            "/" + HOST,
            "imap/" + HOST + "/",
            "imap/" + HOST + "/a/b",
        ]:
            self.assertFailed(self.respond(client_response(digest_uri=uri)[0]), False)

    def test_wrong_service(self) -> None:
        """The RFC's imap response does not log in to a pop service."""
        self.assertFailed(self.respond(RFC_RESPONSE, mechanism(service="pop")), False)

    def test_duplicate_directives(self) -> None:
        for extra in ['username="chris"', 'nonce="x"', "nc=00000001", "qop=auth", 'realm="x"']:
            step = self.respond(client_response(extra=extra)[0])
            self.assertFailed(step, malformed=True)

    def test_unknown_directive_ignored(self) -> None:
        """auth-param: unknown directives are ignored, even repeated."""
        response, rspauth = client_response(extra='future="1",future=2,maxbuf=65536')
        self.assertIsInstance(self.login(response, rspauth), Proven)

    def test_qop_not_offered(self) -> None:
        response = RFC_RESPONSE.replace(b"qop=auth", b"qop=auth-conf,cipher=rc4")
        self.assertFailed(self.respond(response), malformed=False)

    def test_qop_absent_means_auth(self) -> None:
        response = RFC_RESPONSE.replace(b",qop=auth", b"")
        self.assertEqual(self.respond(response), Challenge(RFC_RSPAUTH))

    def test_lws_escapes_and_empty_elements(self) -> None:
        response = (
            b' , charset = utf-8 ,\t,username="ch\\ris", realm="elwood.innosoft.com",'
            b'\r\n nonce="OA6MG9tEQGm2hh",nc=00000001,cnonce="OA6MHXh6VqTrRk",'
            b'digest-uri="imap/elwood.innosoft.com",'
            b"RESPONSE=D388DAD90D4BBD760A152321F2143AF7,qop=auth,,"
        )
        self.assertEqual(self.login(response, RFC_RSPAUTH), Proven("chris", "DIGEST-MD5"))

    def test_malformed(self) -> None:
        rfc = RFC_RESPONSE
        for response in [
            b"",
            b",,,",
            b"garbage",
            b'username="chris',
            b"username",
            b"=chris",
            rfc + b",x",
            rfc + b",x=",
            rfc.replace(b'"chris"', b'"chr\nis"'),
            rfc.replace(b'"chris"', b'"ch\\\xffris"'),
            rfc.replace(b'"chris"', b'"ch"ris"'),
            rfc.replace(b'"chris"', b'"chris" x'),
            rfc.replace(b'"chris"', b'""'),
            rfc.replace(b'"chris"', b'"\xff"'),
            rfc.replace(b'"chris"', b'"ch\\\x00ris"'),
            rfc.replace(b",cnonce=", b",xcnonce="),
            rfc.replace(b",response=", b",xresponse="),
            rfc.replace(b"d388dad90d4bbd760a152321f2143af7", b"d388dad90d4bbd760a152321f2143af"),
            rfc.replace(b"d388dad90d4bbd760a152321f2143af7", b"z388dad90d4bbd760a152321f2143af7"),
            rfc.replace(b"charset=utf-8", b"charset=iso-8859-1"),
            rfc.replace(b"\r", b"") + b"," + b"x" * 4096 + b"=1",
            rfc.replace(b",", b";"),
        ]:
            self.assertFailed(self.respond(response), malformed=True)

    def test_initial_response(self) -> None:
        """DIGEST-MD5 is server-first."""
        step = self.successResultOf(mechanism().start(RFC_RESPONSE))
        self.assertFailed(step, malformed=True)
        self.assertEqual(self.successResultOf(mechanism().start(b"")), Challenge(RFC_CHALLENGE))

    def test_step_before_start(self) -> None:
        self.assertRaises(MechanismDone, mechanism().step, RFC_RESPONSE)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300))
    def test_random_bytes(self, data: bytes) -> None:
        self.assertIsInstance(self.respond(data), Failed)
        # As an initial response too: refused unless empty.
        step = self.successResultOf(mechanism().start(data))
        self.assertIsInstance(step, Challenge if data == b"" else Failed)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(
                    ["username", "realm", "nonce", "cnonce", "nc", "qop", "digest-uri",
                     "response", "charset", "authzid", "x"]
                ),
                st.text(max_size=12),
            ),
            max_size=10,
        )
    )
    def test_random_directives(self, pairs: list[tuple[str, str]]) -> None:
        """Well-formed but random directives never prove anything."""
        response = ",".join(
            f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
            for k, v in pairs
        ).encode("utf-8")
        self.assertIsInstance(self.respond(response), Failed)


class ParseDirectivesTests(SynchronousTestCase):
    def test_tokens_and_quoted_strings(self) -> None:
        self.assertEqual(
            parse_directives(b'A=b, c = "d\\"e\\\\f" ,,g="",h=i'),
            [("a", b"b"), ("c", b'd"e\\f'), ("g", b""), ("h", b"i")],
        )

    def test_utf8_in_quoted_string(self) -> None:
        self.assertEqual(parse_directives('u="Ωmega"'.encode()), [("u", "Ωmega".encode())])

    def test_errors(self) -> None:
        for data in [b"", b" , ", b"a", b"a=", b"a=b c=d", b'a="b', b'a="b\\', b"a=b;c=d",
                     b"(a)=b", b"a=\xff", b'a="\x01"', b"a=b\r\nc=d", b"a=b\rc"]:
            self.assertRaises(DirectiveError, parse_directives, data)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_random_bytes(self, data: bytes) -> None:
        """Any input parses or raises DirectiveError, nothing else."""
        try:
            pairs = parse_directives(data)
        except DirectiveError:
            return
        self.assertTrue(pairs)

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.from_regex(r"\A[a-z][a-z0-9-]{0,10}\Z"),
                st.binary(max_size=20).filter(
                    lambda v: all(b > 31 and b != 127 or b == 9 for b in v)
                    and all(b < 128 for b in v)
                ),
            ),
            min_size=1,
            max_size=6,
        )
    )
    def test_round_trip(self, pairs: list[tuple[str, bytes]]) -> None:
        """Quoting any value and parsing it back gives the value."""
        data = b" , ".join(
            k.encode() + b'="' + v.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
            for k, v in pairs
        )
        self.assertEqual(parse_directives(data), pairs)
