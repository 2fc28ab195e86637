# -*- test-case-name: tests.test_sasl_crammd5 -*-
"""
CRAM-MD5 (RFC 2195): the server sends a unique challenge, the client answers
C{user SP hex(HMAC-MD5(password, challenge))}.

It needs a password-equivalent secret (L{IAuthBackend.legacy_secret}), so it
is a legacy mechanism, enabled per account.  Unlike Twisted's
C{CramMD5Credentials}, the challenge comes from L{secrets} and the digest is
compared in constant time.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed

from gateway.auth.sasl.base import Challenge, Mechanism, MechanismDone, Proven, SASLContext, Step
from gateway.auth.sasl.registry import register
from gateway.auth.verifiers import SASLprepError, saslprep

#: Our cap on the user name.
MAX_USER = 1024

_DIGEST = re.compile(rb"[0-9a-fA-F]{32}")
_WRONG = "wrong digest or unknown account"
# HMAC key for an account without a secret: the work and the answer are the
# same as for a wrong digest.
_NO_SECRET = secrets.token_bytes(16)


def make_challenge(hostname: str) -> bytes:
    """
    A fresh challenge in the RFC 2195 section 2 form
    C{<random-digits.timestamp@hostname>}; the random part makes it unique.
    """
    digits = secrets.randbelow(10**18)
    return f"<{digits}.{int(time.time())}@{hostname}>".encode()


@register
class CramMD5(Mechanism):
    """
    The server side of CRAM-MD5.

    @ivar challenge_source: makes the challenge from the host name; a test
        gives a fixed one.
    """

    name = "CRAM-MD5"
    legacy = True

    def __init__(
        self,
        context: SASLContext,
        *,
        challenge_source: Callable[[str], bytes] = make_challenge,
    ) -> None:
        super().__init__(context)
        self.challenge_source = challenge_source
        self._challenge: bytes | None = None

    def _start(self, initial: bytes | None) -> Deferred[Step]:
        # Server-first (RFC 2195 section 2): an initial response is a protocol
        # error; an empty one carries nothing and is taken as none.
        if initial:
            return succeed(self.failed("initial response to CRAM-MD5", malformed=True))
        self._challenge = self.challenge_source(self.context.hostname)
        return succeed(Challenge(self._challenge))

    def _step(self, response: bytes) -> Deferred[Step]:
        challenge, self._challenge = self._challenge, None
        if challenge is None:
            # Still waiting for the directory: the caller did not wait.
            raise MechanismDone(self.name)
        user_part, space, digest = response.rpartition(b" ")
        if not space or not _DIGEST.fullmatch(digest):
            return succeed(self.failed("not user SP 32 hex digits", malformed=True))
        if not user_part or len(user_part) > MAX_USER:
            return succeed(self.failed("empty or over-long user name", malformed=True))
        try:
            user = saslprep(user_part.decode("utf-8"))
        except (UnicodeDecodeError, SASLprepError):
            return succeed(self.failed("bad user name", malformed=True))
        if not user:
            return succeed(self.failed("empty user name", malformed=True))
        given = digest.lower()

        def verify(found: tuple[str, bytes] | None) -> Step:
            account, secret = found if found is not None else ("", _NO_SECRET)
            expected = hmac.new(secret, challenge, "md5").hexdigest().encode("ascii")
            if hmac.compare_digest(expected, given) and found is not None:
                return Proven(authcid=account, mechanism=self.name)
            return self.failed(_WRONG, authcid=user)

        d: Deferred[tuple[str, bytes] | None]
        d = self.context.backend.legacy_secret(user, "CRAM-MD5")
        return d.addCallback(verify)
