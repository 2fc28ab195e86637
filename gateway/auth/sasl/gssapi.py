# -*- test-case-name: tests.test_sasl_gssapi -*-
"""
GSSAPI (RFC 4752): Kerberos 5 through the optional C{gssapi} package.

Without the package this module still imports; the mechanism then says it is
not available (L{GSSAPI.available}) and the registry does not offer it.

The exchange (RFC 4752 section 3.1)::

    C: token            S: token  (GSS_Accept_sec_context, as often as needed)
    C: (empty)                    (only if the last accept step made a token)
    S: wrap(01 000000)            (layers offered: none; max size 0)
    C: wrap(01 xxxxxx authzid)    (the client chose "no security layer")

The server credentials come from a keytab: the path given, or else the
library's default (which honours C{KRB5_KTNAME}).  The initiator's principal,
C{user@REALM}, becomes an account through an injectable mapping, by default
L{realm_rule}: strip the realm, which must be the server's own.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from types import ModuleType
from typing import Any, ClassVar, Union

from twisted.internet.defer import Deferred, maybeDeferred, succeed

from gateway.auth.sasl.base import Challenge, Mechanism, MechanismDone, SASLContext, Step
from gateway.auth.sasl.registry import authorize
from gateway.auth.verifiers import SASLprepError, saslprep

try:
    import gssapi as _gssapi
    from gssapi import exceptions as _gss_exceptions  # noqa: F401 (loads gssapi.exceptions)
except ImportError:  # the optional dependency is absent
    _gssapi = None  # type: ignore[assignment]  # (the usual optional import)

#: RFC 4752 section 3.3: the security layer bit for "no security layer".
NO_SECURITY_LAYER = 0x01

#: What the mapping returns: the account, C{None} for "no account", or a
#: L{Deferred} of either (for a directory look-up).
MappedAccount = Union[str, None, "Deferred[str | None]"]

#: C{(initiator principal, the server's realm or None) -> account}.
PrincipalMapping = Callable[[str, Union[str, None]], MappedAccount]


def split_principal(principal: str) -> tuple[str, str] | None:
    """
    C{"user@REALM"} -> C{("user", "REALM")}; C{None} if there is no realm.
    The realm follows the last unescaped C{@} (RFC 1964 section 2.1.1).
    """
    index = len(principal)
    while True:
        index = principal.rfind("@", 0, index)
        if index <= 0:
            return None
        backslashes = len(principal[:index]) - len(principal[:index].rstrip("\\"))
        if backslashes % 2 == 0:
            return principal[:index], principal[index + 1 :]


def realm_rule(
    domain: str | None = None, realms: Collection[str] | None = None
) -> PrincipalMapping:
    """
    The simple mapping: C{user@REALM} -> C{user@domain} (or C{user} without a
    domain).

    @param realms: the realms whose users may log in; C{None} for the server's
        own realm only (that of the principal the client got a ticket for).
    @return: a mapping that refuses principals with an instance
        (C{user/admin@REALM}), escapes, or another realm.
    """

    def rule(principal: str, server_realm: str | None) -> str | None:
        parts = split_principal(principal)
        if parts is None:
            return None
        user, realm = parts
        allowed = realms if realms is not None else ([server_realm] if server_realm else [])
        if realm not in allowed or not user or any(c in user for c in "/\\@"):
            return None
        return user if domain is None else f"{user}@{domain}"

    return rule


class GSSAPI(Mechanism):
    """
    The server side of GSSAPI.

    @cvar keytab: the default keytab path; C{None} for the library's default.
    @cvar map_principal: the default mapping (L{realm_rule}).
    """

    name = "GSSAPI"
    keytab: ClassVar[str | None] = None
    map_principal: ClassVar[PrincipalMapping | None] = None

    def __init__(
        self,
        context: SASLContext,
        *,
        keytab: str | None = None,
        map_principal: PrincipalMapping | None = None,
        gssapi_module: ModuleType | Any | None = None,
    ) -> None:
        """
        @param gssapi_module: the C{gssapi} package; a test may pass a stand-in.
        """
        super().__init__(context)
        self._gss = gssapi_module if gssapi_module is not None else _gssapi
        self._keytab = (keytab if keytab is not None
                        else context.options.get("gssapi.keytab", type(self).keytab))
        configured = type(self).map_principal
        self._map: PrincipalMapping = (map_principal or configured
                                       or realm_rule(context.options.get("gssapi.domain")))
        self._ctx: Any = None
        self._next: Callable[[bytes], Deferred[Step]] | None = None

    @classmethod
    def available(cls, context: SASLContext) -> bool:
        """
        Only when the C{gssapi} package is installed and a keytab is
        configured (C{auth.gssapi_keytab}): without one the library would fall
        back to the host's default keytab, which is not ours to use.
        """
        if _gssapi is None:
            return False
        options = context.options if context is not None else {}
        return bool(options.get("gssapi.keytab", cls.keytab))

    # -- the exchange ---------------------------------------------------------

    def _step(self, response: bytes) -> Deferred[Step]:
        handler, self._next = self._next, None
        if handler is None:
            raise MechanismDone(self.name)
        return handler(response)

    def _gss_failed(self, what: str, error: Exception) -> Deferred[Step]:
        return succeed(self.failed(f"GSSAPI {what}: {error}"))

    def _start(self, initial: bytes | None) -> Deferred[Step]:
        gss = self._gss
        if gss is None:
            return succeed(self.failed("the gssapi package is not installed"))
        try:
            server = gss.Name(
                f"{self.context.service}@{self.context.hostname}",
                name_type=gss.NameType.hostbased_service,
            )
            if self._keytab is None:
                creds = gss.Credentials(name=server, usage="accept")
            else:
                creds = gss.Credentials(
                    name=server, usage="accept", store={"keytab": self._keytab}
                )
            self._ctx = gss.SecurityContext(creds=creds, usage="accept")
        except (gss.exceptions.GSSError, NotImplementedError) as e:
            return self._gss_failed("server credentials", e)
        if initial is None:
            # RFC 4422 section 5: an empty challenge asks for the first token.
            self._next = self._accept
            return succeed(Challenge(b""))
        return self._accept(initial)

    def _accept(self, token: bytes) -> Deferred[Step]:
        if not token:
            return succeed(self.failed("empty context token", malformed=True))
        try:
            out = self._ctx.step(token)
            # The gssapi package does not raise from step() when the failure
            # came with an error token for the peer (a KRB-ERROR: a ticket
            # for another service, a replay, a failed integrity check): it
            # returns that token and raises the error at the next use of the
            # context.  Reading complete is that use, so it stays in the try.
            complete = self._ctx.complete
            flags = self._ctx.actual_flags if complete else ()
        except self._gss.exceptions.GSSError as e:
            return self._gss_failed("context", e)
        if not complete:
            self._next = self._accept
            return succeed(Challenge(out or b""))
        if self._gss.RequirementFlag.anonymity in flags:
            return succeed(self.failed("anonymous GSSAPI context"))
        if out:
            # RFC 4752 section 3.1: send the last token, expect an empty reply.
            self._next = self._acknowledged
            return succeed(Challenge(out))
        return self._offer_layers()

    def _acknowledged(self, response: bytes) -> Deferred[Step]:
        if response:
            return succeed(self.failed("expected an empty response", malformed=True))
        return self._offer_layers()

    def _offer_layers(self) -> Deferred[Step]:
        # RFC 4752 section 3.1: the layers we offer (none) and our maximum
        # message size (0: there will be no wrapped messages).
        try:
            wrapped = self._ctx.wrap(bytes([NO_SECURITY_LAYER, 0, 0, 0]), False).message
        except self._gss.exceptions.GSSError as e:
            return self._gss_failed("wrap", e)
        self._next = self._choose
        return succeed(Challenge(wrapped))

    def _choose(self, response: bytes) -> Deferred[Step]:
        try:
            message = self._ctx.unwrap(response).message
        except self._gss.exceptions.GSSError as e:
            return self._gss_failed("unwrap", e)
        if len(message) < 4:
            return succeed(self.failed("short security layer message", malformed=True))
        if message[0] != NO_SECURITY_LAYER:
            return succeed(self.failed("client chose a layer not offered", malformed=True))
        # The client's maximum size (octets 2-4) means nothing without a layer.
        authzid: str | None = None
        if message[4:]:
            try:
                authzid = saslprep(message[4:].decode("utf-8"))
            except (UnicodeDecodeError, SASLprepError):
                return succeed(self.failed("bad authzid", malformed=True))
        try:
            principal = str(self._ctx.initiator_name)
            target = self._ctx.target_name
        except self._gss.exceptions.GSSError as e:
            return self._gss_failed("context names", e)
        server = split_principal(str(target)) if target is not None else None
        server_realm = server[1] if server else None

        def mapped(account: str | None) -> Deferred[Step] | Step:
            if account is None:
                return self.failed(f"{principal!r} maps to no account", authcid=principal)
            return authorize(self, account, authzid, principal)

        # (maybeDeferred's overloads take no union of a value and a Deferred)
        d: Deferred[str | None] = maybeDeferred(  # type: ignore[call-overload]
            self._map, principal, server_realm)
        return d.addCallback(mapped)


# The registry imports this module at its end; register() exists by then.
from gateway.auth.sasl.registry import register  # noqa: E402

register(GSSAPI)
