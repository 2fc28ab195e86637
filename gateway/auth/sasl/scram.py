# -*- test-case-name: tests.test_sasl_scram -*-
"""
SCRAM (RFC 5802, RFC 7677): SCRAM-SHA-1, SCRAM-SHA-256 and their -PLUS
variants with the C{tls-exporter} channel binding (RFC 9266).

The server keeps only (salt, iterations, StoredKey, ServerKey) per account
(L{gateway.auth.verifiers.ScramKeys}).  The exchange::

    C: gs2-header n=user,r=cnonce
    S: r=cnonce+snonce,s=salt,i=iterations
    C: c=base64(gs2-header + cbind-data),r=cnonce+snonce,p=ClientProof
    S: v=ServerSignature            (sent as a Challenge)
    C: (empty)                      -> Proven

For an unknown account the server answers with a salt derived from the name
and a per-process key, and the default iteration count, so that the answer
does not show whether the account exists; the proof then fails as a wrong
one would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from twisted.internet.defer import Deferred, succeed

from gateway.auth.sasl.base import (
    Challenge,
    Mechanism,
    MechanismDone,
    Proven,
    SASLContext,
    Step,
)
from gateway.auth.sasl.registry import authorize, directory_key, register
from gateway.auth.verifiers import (
    ALGORITHMS,
    DEFAULT_ITERATIONS,
    SASLprepError,
    ScramKeys,
    saslprep,
)

#: Our cap on each client message.
MAX_MESSAGE = 4096
#: The one channel-binding type the -PLUS variants use (RFC 9266).
CHANNEL_BINDING = "tls-exporter"

_WRONG = "wrong proof or unknown account"
# RFC 5802 section 7: printable = %x21-2B / %x2D-7E; cb-name.
_PRINTABLE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
_CB_NAME = re.compile(r"[A-Za-z0-9.-]+")
_FAKE_SALT_KEY = secrets.token_bytes(32)


def make_nonce() -> str:
    """The server's part of the nonce: 144 random bits, printable, no comma."""
    return secrets.token_urlsafe(18)


def decode_saslname(text: str) -> str | None:
    """
    Decode a saslname (RFC 5802 section 5.1): C{=2C} is ",", C{=3D} is "=",
    and no other "=", no "," and no NUL may appear.

    @return: the name, or C{None} if C{text} is not a non-empty saslname.
    """
    if not text or "," in text or "\0" in text:
        return None
    first, *rest = text.split("=")
    out = [first]
    for part in rest:
        escape = {"2C": ",", "3D": "="}.get(part[:2])
        if escape is None:
            return None
        out.append(escape + part[2:])
    return "".join(out)


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except ValueError:  # binascii.Error, and UnicodeEncodeError
        return None


@dataclass(frozen=True)
class _Exchange:
    """What the server-first message committed to."""

    username: str
    authzid: str | None
    gs2_header: bytes
    cbind_data: bytes
    client_first_bare: bytes
    server_first: bytes
    nonce: str
    keys: ScramKeys
    known: bool


class _Scram(Mechanism):
    """
    The SCRAM state machine; subclasses name the hash and whether they bind
    the channel.

    @ivar plus_advertised: this connection offered the -PLUS variant, so a
        client that says "y" (it thinks the server cannot bind) is refused as
        a downgrade (RFC 5802 section 6).
    @ivar nonce_source: makes the server's part of the nonce.
    """

    algorithm: ClassVar[str]
    plus: ClassVar[bool] = False

    def __init__(
        self,
        context: SASLContext,
        *,
        plus_advertised: bool = False,
        nonce_source: Callable[[], str] = make_nonce,
    ) -> None:
        super().__init__(context)
        self.plus_advertised = plus_advertised
        self.nonce_source = nonce_source
        self._next: Callable[[bytes], Deferred[Step]] | None = None

    @classmethod
    def available(cls, context: SASLContext) -> bool:
        """A -PLUS variant runs only when the TLS layer gave binding data."""
        return not cls.plus or bool(context.channel_binding.get(CHANNEL_BINDING))

    def _start(self, initial: bytes | None) -> Deferred[Step]:
        if initial is None:
            # Client-first (RFC 5802 section 5): ask for the first message.
            self._next = self._client_first
            return succeed(Challenge(b""))
        return self._client_first(initial)

    def _step(self, response: bytes) -> Deferred[Step]:
        handler, self._next = self._next, None
        if handler is None:
            # Still waiting for the directory: the caller did not wait.
            raise MechanismDone(self.name)
        return handler(response)

    def _refuse(
        self, reason: str, authcid: str | None = None, malformed: bool = True
    ) -> Deferred[Step]:
        return succeed(self.failed(reason, authcid=authcid, malformed=malformed))

    def _client_first(self, data: bytes) -> Deferred[Step]:
        if len(data) > MAX_MESSAGE:
            return self._refuse("client-first-message too long")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return self._refuse("client-first-message is not UTF-8")
        fields = text.split(",", 2)
        if len(fields) != 3:
            return self._refuse("no gs2-header")
        flag, authzid_field, bare = fields
        if flag in ("n", "y"):
            cb_name = None
        elif flag.startswith("p=") and _CB_NAME.fullmatch(flag[2:]):
            cb_name = flag[2:]
        else:
            return self._refuse("bad gs2-cbind-flag")
        authzid = None
        if authzid_field:
            authzid = decode_saslname(authzid_field[2:])
            if not authzid_field.startswith("a=") or authzid is None:
                return self._refuse("bad authzid")
        attributes = bare.split(",")
        if attributes[0].startswith("m="):
            # Section 5.1: a reserved-mext must make authentication fail.
            return self._refuse("mandatory extension not supported")
        if len(attributes) != 2:
            return self._refuse("not n=user,r=nonce (extensions are not supported)")
        user_field, nonce_field = attributes
        name = decode_saslname(user_field[2:])
        if not user_field.startswith("n=") or name is None:
            return self._refuse("bad username")
        try:
            username = saslprep(name)
        except SASLprepError:
            return self._refuse("username refused by SASLprep")
        if not username:
            return self._refuse("empty username")
        if not nonce_field.startswith("r=") or not _PRINTABLE.fullmatch(nonce_field[2:]):
            return self._refuse("bad client nonce", username)
        binding = self._binding(flag, cb_name)
        if isinstance(binding, str):
            return self._refuse(binding, username, malformed=False)
        cbind_data: bytes = binding

        def answer(keys: ScramKeys | None) -> Step:
            known = keys is not None and keys.algorithm == self.algorithm
            if keys is None or not known:
                keys = self._fake_keys(username)
            server_nonce = self.nonce_source()
            if not _PRINTABLE.fullmatch(server_nonce):
                raise ValueError(f"nonce_source gave {server_nonce!r}")
            nonce = nonce_field[2:] + server_nonce
            salt = base64.b64encode(keys.salt).decode("ascii")
            server_first = f"r={nonce},s={salt},i={keys.iterations}".encode("ascii")
            exchange = _Exchange(
                username=username,
                authzid=authzid,
                gs2_header=f"{flag},{authzid_field},".encode(),
                cbind_data=cbind_data,
                client_first_bare=bare.encode("utf-8"),
                server_first=server_first,
                nonce=nonce,
                keys=keys,
                known=known,
            )
            self._next = lambda data: self._client_final(exchange, data)
            return Challenge(server_first)

        d: Deferred[ScramKeys | None]
        d = self.context.backend.scram_credentials(username, self.algorithm)
        return d.addCallback(answer)

    def _binding(self, flag: str, cb_name: str | None) -> bytes | str:
        """
        The channel-binding data to expect, or the reason to refuse the
        client's choice (RFC 5802 section 6).
        """
        if not self.plus:
            if cb_name is not None:
                return "channel binding asked for on a mechanism without it"
            if flag == "y" and self.plus_advertised:
                return "client says we cannot bind, but -PLUS was offered: downgrade"
            return b""
        if cb_name is None:
            return "a -PLUS mechanism without channel binding"
        if cb_name != CHANNEL_BINDING:
            return f"channel binding type {cb_name!r} not supported"
        data = self.context.channel_binding.get(CHANNEL_BINDING)
        if not data:
            return "no channel-binding data on this connection"
        return data

    def _fake_keys(self, username: str) -> ScramKeys:
        # The salt must be the same each time a name is tried, or two tries
        # would show the name unknown; and the same for two names the
        # directory takes as one, as a real account's is.
        salt = hmac.digest(
            _FAKE_SALT_KEY,
            f"{self.algorithm}\0{directory_key(self.context, username)}".encode(),
            "sha256",
        )[:16]
        size = hashlib.new(ALGORITHMS[self.algorithm]).digest_size
        return ScramKeys(
            "", self.algorithm, salt, DEFAULT_ITERATIONS,
            secrets.token_bytes(size), secrets.token_bytes(size),
        )

    def _client_final(self, exchange: _Exchange, data: bytes) -> Deferred[Step]:
        user = exchange.username
        if len(data) > MAX_MESSAGE or not data.isascii():
            return self._refuse("bad client-final-message", user)
        without_proof, comma, proof_field = data.decode("ascii").rpartition(",")
        attributes = without_proof.split(",")
        if not comma or len(attributes) < 2 or not proof_field.startswith("p="):
            return self._refuse("not c=...,r=...,p=...", user)
        if len(attributes) != 2:
            return self._refuse("extensions are not supported", user)
        binding_field, nonce_field = attributes
        if not binding_field.startswith("c=") or not nonce_field.startswith("r="):
            return self._refuse("not c=...,r=...,p=...", user)
        cbind_input = _b64decode(binding_field[2:])
        proof = _b64decode(proof_field[2:])
        name = ALGORITHMS[self.algorithm]
        if cbind_input is None or proof is None:
            return self._refuse("bad base64", user)
        if len(proof) != hashlib.new(name).digest_size:
            return self._refuse("proof of the wrong length", user)
        if not hmac.compare_digest(nonce_field[2:].encode(), exchange.nonce.encode()):
            return self._refuse("nonce does not match", user, malformed=False)
        if not hmac.compare_digest(cbind_input, exchange.gs2_header + exchange.cbind_data):
            return self._refuse("channel binding does not match", user, malformed=False)
        auth_message = b",".join(
            [exchange.client_first_bare, exchange.server_first, without_proof.encode()]
        )
        keys = exchange.keys
        signature = hmac.digest(keys.stored_key, auth_message, name)
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        valid = hmac.compare_digest(hashlib.new(name, client_key).digest(), keys.stored_key)
        if not (valid and exchange.known):
            return self._refuse(_WRONG, user, malformed=False)
        verifier = base64.b64encode(hmac.digest(keys.server_key, auth_message, name))

        def proven(step: Step) -> Step:
            if not isinstance(step, Proven):
                return step
            self._next = lambda answer: self._finish(step, answer)
            return Challenge(b"v=" + verifier, success=step)

        return authorize(self, keys.account, exchange.authzid, user).addCallback(proven)

    def _finish(self, proven: Proven, answer: bytes) -> Deferred[Step]:
        if answer:
            return self._refuse("non-empty answer to server-final", proven.authcid)
        return succeed(proven)


@register
class ScramSha1(_Scram):
    name = "SCRAM-SHA-1"
    algorithm = "SHA-1"


@register
class ScramSha256(_Scram):
    name = "SCRAM-SHA-256"
    algorithm = "SHA-256"


@register
class ScramSha1Plus(_Scram):
    name = "SCRAM-SHA-1-PLUS"
    algorithm = "SHA-1"
    plus = True


@register
class ScramSha256Plus(_Scram):
    name = "SCRAM-SHA-256-PLUS"
    algorithm = "SHA-256"
    plus = True
