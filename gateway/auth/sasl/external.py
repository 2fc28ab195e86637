# -*- test-case-name: tests.test_sasl_external -*-
"""
EXTERNAL (RFC 4422 appendix A): the client is who its verified TLS client
certificate says.

The TLS layer has already verified the certificate against the listener's
client CA (L{SASLContext.peer_certificate} is set only then); the directory
maps it to an account (L{IAuthBackend.account_for_certificate}).  The client's
one message is the authorization identity: empty to act as the mapped
account, else a name the account must be allowed to act as.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed

from gateway.auth.sasl.base import Challenge, Mechanism, MechanismDone, SASLContext, Step
from gateway.auth.sasl.registry import authorize
from gateway.auth.verifiers import SASLprepError, saslprep

#: Our cap on the authorization identity.
MAX_AUTHZID = 1024


class External(Mechanism):
    """The server side of EXTERNAL, over a TLS client certificate."""

    name = "EXTERNAL"

    def __init__(self, context: SASLContext) -> None:
        super().__init__(context)
        self._next: Callable[[bytes], Deferred[Step]] | None = None

    @classmethod
    def available(cls, context: SASLContext) -> bool:
        """Only on a connection whose client presented a verified certificate."""
        return context.peer_certificate is not None

    def _start(self, initial: bytes | None) -> Deferred[Step]:
        if self.context.peer_certificate is None:
            # The registry does not offer it then; a caller that starts it
            # anyway gets a failure, not a login.
            return succeed(self.failed("no verified client certificate"))
        if initial is None:
            # RFC 4422 section 5: an empty challenge asks for the message.
            self._next = self._message
            return succeed(Challenge(b""))
        return self._message(initial)

    def _step(self, response: bytes) -> Deferred[Step]:
        handler, self._next = self._next, None
        if handler is None:
            raise MechanismDone(self.name)
        return handler(response)

    def _message(self, message: bytes) -> Deferred[Step]:
        # RFC 4422 appendix A.1: the message is the authzid, UTF-8, possibly
        # empty.
        authzid: str | None = None
        if message:
            if len(message) > MAX_AUTHZID:
                return succeed(self.failed("over-long authzid", malformed=True))
            try:
                authzid = saslprep(message.decode("utf-8"))
            except (UnicodeDecodeError, SASLprepError):
                return succeed(self.failed("bad authzid", malformed=True))
            if not authzid:
                return succeed(self.failed("bad authzid", malformed=True))

        def mapped(account: str | None) -> Deferred[Step] | Step:
            if account is None:
                return self.failed("the certificate maps to no account")
            return authorize(self, account, authzid, account)

        d: Deferred[str | None]
        d = self.context.backend.account_for_certificate(self.context.peer_certificate)
        return d.addCallback(mapped)


# The registry imports this module at its end; register() exists by then.
from gateway.auth.sasl.registry import register  # noqa: E402

register(External)
