# -*- test-case-name: tests.test_sasl_digestmd5 -*-
"""
DIGEST-MD5 (RFC 2831), authentication only (qop=auth): no integrity or
confidentiality layer, no subsequent authentication (nc is always 1).

RFC 6331 made DIGEST-MD5 historic; it is here for old clients.  It needs the
password itself (L{IAuthBackend.legacy_secret}), so it is a legacy mechanism,
enabled per account.

The exchange (RFC 2831 section 2.1)::

    S: realm="host",nonce="...",qop="auth",algorithm=md5-sess,charset=utf-8
    C: username="...",realm="host",nonce="...",cnonce="...",nc=00000001,
       qop=auth,digest-uri="imap/host",response=<32 hex>[,authzid="..."]
    S: rspauth=<32 hex>
    C: (empty)
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed

from gateway.auth.sasl.base import (
    Challenge,
    Mechanism,
    MechanismDone,
    Proven,
    SASLContext,
    Step,
)
from gateway.auth.sasl.registry import authorize, register
from gateway.auth.verifiers import SASLprepError, saslprep

#: RFC 2831 section 2.1.2: a digest-response is less than 4096 bytes.
MAX_RESPONSE = 4095

_WRONG = "wrong response or unknown account"
_HEX32 = re.compile(rb"[0-9a-fA-F]{32}")
_NC = re.compile(rb"[0-9a-fA-F]{8}")
# RFC 2616 section 2.2, which RFC 2831 section 7.1 uses.
_SEPARATORS = frozenset(b'()<>@,;:\\"/[]?={} \t')
_TOKEN = frozenset(range(33, 127)) - _SEPARATORS
_LWS = frozenset(b" \t")
#: The directives of a digest-response that "may appear at most once".
_SINGLE = frozenset(
    {
        "username",
        "realm",
        "nonce",
        "cnonce",
        "nc",
        "qop",
        "digest-uri",
        "response",
        "maxbuf",
        "charset",
        "cipher",
        "authzid",
    }
)
# For an account without a secret: the same work, the same answer.
_NO_SECRET = secrets.token_bytes(16)


class DirectiveError(ValueError):
    """The client's data does not follow the RFC 2831 section 7.1 grammar."""


def _skip_lws(data: bytes, pos: int) -> int:
    # LWS = [CRLF] 1*( SP | HT ), implied between the words of a #rule.
    while True:
        if pos < len(data) and data[pos] in _LWS:
            pos += 1
        elif data[pos : pos + 2] == b"\r\n" and data[pos + 2 : pos + 3] in (b" ", b"\t"):
            pos += 3
        else:
            return pos


def _quoted(data: bytes, pos: int) -> tuple[bytes, int]:
    """Read a quoted-string whose opening quote is at C{pos - 1}."""
    out = bytearray()
    while pos < len(data):
        byte = data[pos]
        if byte == 0x22:  # the closing quote
            return bytes(out), pos + 1
        if byte == 0x5C:  # quoted-pair = "\" CHAR
            if pos + 1 >= len(data) or data[pos + 1] > 127:
                raise DirectiveError("bad quoted-pair")
            out.append(data[pos + 1])
            pos += 2
        elif byte < 32 and byte != 0x09 or byte == 127:
            # qdtext is TEXT: no CTLs.  (Folded LWS inside a quoted-string is
            # refused too: no client sends it.)
            raise DirectiveError("control character in a quoted-string")
        else:
            out.append(byte)
            pos += 1
    raise DirectiveError("unterminated quoted-string")


def parse_directives(data: bytes) -> list[tuple[str, bytes]]:
    """
    Parse a comma-separated list of C{token "=" (token | quoted-string)}
    (RFC 2831 section 7.1, with the RFC 2616 section 2.1 #rule: LWS around
    the words, empty elements allowed, at least one element).

    @return: C{(lower-case name, value)} pairs in order; a quoted value
        without its quotes and escapes.
    @raise DirectiveError: for anything else.
    """
    pairs: list[tuple[str, bytes]] = []
    pos = 0
    while True:
        pos = _skip_lws(data, pos)
        if pos == len(data):
            break
        if data[pos] == 0x2C:  # an empty element
            pos += 1
            continue
        start = pos
        while pos < len(data) and data[pos] in _TOKEN:
            pos += 1
        if pos == start:
            raise DirectiveError(f"expected a directive name at offset {pos}")
        name = data[start:pos].decode("ascii").lower()
        pos = _skip_lws(data, pos)
        if data[pos : pos + 1] != b"=":
            raise DirectiveError(f"expected '=' after {name}")
        pos = _skip_lws(data, pos + 1)
        if data[pos : pos + 1] == b'"':
            value, pos = _quoted(data, pos + 1)
        else:
            start = pos
            while pos < len(data) and data[pos] in _TOKEN:
                pos += 1
            if pos == start:
                raise DirectiveError(f"expected a value for {name}")
            value = data[start:pos]
        pairs.append((name, value))
        pos = _skip_lws(data, pos)
        if pos < len(data) and data[pos] != 0x2C:
            raise DirectiveError(f"expected ',' after {name}")
    if not pairs:
        raise DirectiveError("no directives")
    return pairs


def _quote(text: str) -> bytes:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return b'"' + escaped.encode("utf-8") + b'"'


def _for_hash(text: str) -> bytes:
    # RFC 2831 section 2.1.2.1: with charset=utf-8, a string that ISO 8859-1
    # can represent is hashed in ISO 8859-1 (each of username, realm and
    # password on its own, as the Cyrus SASL implementation does).  Without
    # charset the string was ISO 8859-1 already, so this is the same octets.
    try:
        return text.encode("iso-8859-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data).digest()


def _hex(data: bytes) -> bytes:
    return hashlib.md5(data).hexdigest().encode("ascii")


def make_nonce() -> str:
    """A fresh nonce: 144 random bits, in characters safe in a quoted-string."""
    return secrets.token_urlsafe(18)


@register
class DigestMD5(Mechanism):
    """
    The server side of DIGEST-MD5 with qop=auth.

    @ivar nonce_source: makes the nonce; a test gives a fixed one.
    """

    name = "DIGEST-MD5"
    legacy = True

    def __init__(
        self, context: SASLContext, *, nonce_source: Callable[[], str] = make_nonce
    ) -> None:
        super().__init__(context)
        self.nonce_source = nonce_source
        self.realm = context.hostname
        self._nonce = b""
        self._next: Callable[[bytes], Deferred[Step]] | None = None

    def _start(self, initial: bytes | None) -> Deferred[Step]:
        # Server-first: an initial response is a protocol error; an empty
        # one carries nothing and is taken as none.
        if initial:
            return self._malformed("initial response to DIGEST-MD5")
        self._nonce = self.nonce_source().encode("utf-8")
        self._next = self._response
        return succeed(
            Challenge(
                b"realm=" + _quote(self.realm)
                + b",nonce=" + _quote(self._nonce.decode("utf-8"))
                # RFC 2831 section 7.1: algorithm and charset are tokens; some
                # clients refuse their quoted form.
                + b',qop="auth",algorithm=md5-sess,charset=utf-8'
            )
        )

    def _step(self, response: bytes) -> Deferred[Step]:
        handler, self._next = self._next, None
        if handler is None:
            # Still waiting for the directory: the caller did not wait.
            raise MechanismDone(self.name)
        return handler(response)

    def _malformed(self, reason: str, authcid: str | None = None) -> Deferred[Step]:
        return succeed(self.failed(reason, authcid=authcid, malformed=True))

    def _response(self, data: bytes) -> Deferred[Step]:
        if len(data) > MAX_RESPONSE:
            return self._malformed("digest-response too long")
        fields: dict[str, bytes] = {}
        try:
            for name, value in parse_directives(data):
                if name in fields:
                    raise DirectiveError(f"duplicate {name}")
                if name in _SINGLE:
                    fields[name] = value
                # Any other directive is an auth-param: ignored (section 2.1.2).
        except DirectiveError as e:
            return self._malformed(str(e))
        missing = [
            name
            for name in ("username", "nonce", "cnonce", "nc", "digest-uri", "response")
            if not fields.get(name)
        ]
        if missing:
            return self._malformed(f"missing {', '.join(missing)}")
        charset = fields.get("charset")
        if charset is not None and charset.lower() != b"utf-8":
            return self._malformed("charset is not utf-8")
        encoding = "utf-8" if charset is not None else "iso-8859-1"
        try:
            username = fields["username"].decode(encoding)
            realm = fields.get("realm", b"").decode(encoding)
            # The authzid is always UTF-8 (section 2.1.2.1).
            authzid = fields.get("authzid", b"").decode("utf-8")
            digest_uri = fields["digest-uri"].decode("utf-8")
            saslprep(username)
        except (UnicodeDecodeError, SASLprepError):
            return self._malformed("bad username, realm, authzid or digest-uri")
        if not _HEX32.fullmatch(fields["response"]):
            return self._malformed("response is not 32 hex digits", username)
        if not _NC.fullmatch(fields["nc"]):
            return self._malformed("nc is not 8 hex digits", username)
        problem = self._mismatch(fields, realm, digest_uri)
        if problem:
            return succeed(self.failed(problem, authcid=username))

        def verify(found: tuple[str, bytes] | None) -> Deferred[Step] | Step:
            account, secret = found if found is not None else ("", _NO_SECRET)
            try:
                password = _for_hash(secret.decode("utf-8"))
            except UnicodeDecodeError:
                password = secret
            a1 = (
                _md5(b":".join([_for_hash(username), _for_hash(realm), password]))
                + b":" + self._nonce + b":" + fields["cnonce"]
                + (b":" + authzid.encode("utf-8") if authzid else b"")
            )
            expected, rspauth = (
                self._kd(_hex(a1), fields, a2) for a2 in (b"AUTHENTICATE:", b":")
            )
            if not (hmac.compare_digest(expected, fields["response"].lower()) and found):
                return self.failed(_WRONG, authcid=username)
            return authorize(self, account, authzid, username).addCallback(
                self._proven, rspauth
            )

        d: Deferred[tuple[str, bytes] | None]
        d = self.context.backend.legacy_secret(username, "DIGEST-MD5")
        return d.addCallback(verify)

    def _mismatch(self, fields: dict[str, bytes], realm: str, digest_uri: str) -> str:
        """The reason a well-formed response does not answer our challenge."""
        if not hmac.compare_digest(fields["nonce"], self._nonce):
            return "not our nonce"
        if int(fields["nc"], 16) != 1:
            # Subsequent authentication (section 2.2) is not supported, and
            # a nonce is used once.
            return "nonce count is not 1"
        if "realm" in fields and realm != self.realm:
            return f"realm {realm!r} was not offered"
        if fields.get("qop", b"auth").lower() != b"auth":
            return "qop was not offered"
        parts = digest_uri.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            return "digest-uri is not serv-type/host[/serv-name]"
        if parts[0].lower() != self.context.service.lower():
            return f"digest-uri names service {parts[0]!r}"
        if parts[1].lower().rstrip(".") != self.context.hostname.lower().rstrip("."):
            return f"digest-uri names host {parts[1]!r}"
        return ""

    def _kd(self, ha1: bytes, fields: dict[str, bytes], a2_prefix: bytes) -> bytes:
        # RFC 2831 section 2.1.2.1, qop=auth: A2 is "AUTHENTICATE:" digest-uri
        # for the response and ":" digest-uri for rspauth.
        ha2 = _hex(a2_prefix + fields["digest-uri"])
        qop = fields.get("qop", b"auth")
        return _hex(
            b":".join([ha1, self._nonce, fields["nc"], fields["cnonce"], qop, ha2])
        )

    def _proven(self, step: Step, rspauth: bytes) -> Step:
        if not isinstance(step, Proven):
            return step

        def finish(response: bytes) -> Deferred[Step]:
            if response:
                return self._malformed("non-empty answer to rspauth", step.authcid)
            return succeed(step)

        self._next = finish
        return Challenge(b"rspauth=" + rspauth, success=step)
