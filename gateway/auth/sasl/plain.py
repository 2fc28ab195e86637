# -*- test-case-name: tests.test_sasl_plain -*-
"""
The plain-text mechanisms: PLAIN (RFC 4616) and LOGIN
(draft-murchison-sasl-login).

Both carry the password in clear, so the registry hides them before TLS
unless the operator allows it.  The password is checked by the directory
(L{IAuthBackend.check_password}); a failure carries a fingerprint of the tried
password so that the throttle counts one stale password once.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed

from gateway.auth.sasl.base import Challenge, Mechanism, MechanismDone, Step
from gateway.auth.sasl.registry import authorize, register
from gateway.auth.verifiers import SASLprepError, password_fingerprint, saslprep

#: Our cap on each of authzid, authcid and passwd.  RFC 4616 section 2 asks
#: servers to take at least 255 octets of each.
MAX_FIELD = 1024

_WRONG = "wrong password or unknown account"


def _identity(raw: bytes) -> str | None:
    """
    Decode and prepare a user name (RFC 4616 section 4 recommends SASLprep).

    @return: the prepared name, or C{None} when it is not UTF-8, is empty, is
        too long, or has characters SASLprep prohibits (controls among them).
    """
    if not raw or len(raw) > MAX_FIELD:
        return None
    try:
        prepared = saslprep(raw.decode("utf-8"))
    except (UnicodeDecodeError, SASLprepError):
        return None
    return prepared or None


class _PlainText(Mechanism):
    """What PLAIN and LOGIN share: the next step, and the password check."""

    plaintext = True
    _next: Callable[[bytes], Deferred[Step]] | None = None

    def _step(self, response: bytes) -> Deferred[Step]:
        handler, self._next = self._next, None
        if handler is None:
            # Still waiting for the directory: the caller did not wait.
            raise MechanismDone(self.name)
        return handler(response)

    def _malformed(self, reason: str, authcid: str | None = None) -> Deferred[Step]:
        return succeed(self.failed(reason, authcid=authcid, malformed=True))

    def _check(self, authcid: str, password: bytes, authzid: str | None) -> Deferred[Step]:
        def checked(account: str | None) -> Deferred[Step] | Step:
            if account is None:
                return self.failed(
                    _WRONG,
                    authcid=authcid,
                    fingerprint=password_fingerprint(authcid, password),
                )
            return authorize(self, account, authzid, authcid)

        d: Deferred[str | None] = self.context.backend.check_password(authcid, password)
        return d.addCallback(checked)


@register
class Plain(_PlainText):
    """
    PLAIN, RFC 4616: one message C{[authzid] NUL authcid NUL passwd} in UTF-8.
    """

    name = "PLAIN"

    def _start(self, initial: bytes | None) -> Deferred[Step]:
        if initial is None:
            # RFC 4422 section 5: an empty challenge asks for the message.
            self._next = self._message
            return succeed(Challenge(b""))
        return self._message(initial)

    def _message(self, message: bytes) -> Deferred[Step]:
        fields = message.split(b"\0")
        if len(fields) != 3:
            return self._malformed("not authzid NUL authcid NUL passwd")
        raw_authzid, raw_authcid, password = fields
        authcid = _identity(raw_authcid)
        if authcid is None:
            return self._malformed("bad authcid")
        if not password or len(password) > MAX_FIELD:
            return self._malformed("empty or over-long password", authcid)
        try:
            password.decode("utf-8")
        except UnicodeDecodeError:
            return self._malformed("password is not UTF-8", authcid)
        authzid = None
        if raw_authzid:
            authzid = _identity(raw_authzid)
            if authzid is None:
                return self._malformed("bad authzid", authcid)
        return self._check(authcid, password, authzid)


@register
class Login(_PlainText):
    """
    LOGIN, draft-murchison-sasl-login: the server asks C{Username:} then
    C{Password:}; an initial response is the user name.  It has no authzid.
    """

    name = "LOGIN"

    def _start(self, initial: bytes | None) -> Deferred[Step]:
        if not initial:
            # No user name yet.  An empty initial response cannot be one
            # either; some clients send it for "none", so ask as usual.
            self._next = self._username
            return succeed(Challenge(b"Username:"))
        return self._username(initial)

    def _username(self, response: bytes) -> Deferred[Step]:
        username = _identity(response)
        if username is None:
            return self._malformed("bad user name")
        self._next = lambda password: self._password(username, password)
        return succeed(Challenge(b"Password:"))

    def _password(self, username: str, password: bytes) -> Deferred[Step]:
        # No charset is defined for LOGIN: a password that is not UTF-8 is
        # passed on as it is, and the verifier uses its octets.
        if not password or len(password) > MAX_FIELD:
            return self._malformed("empty or over-long password", username)
        return self._check(username, password, None)
