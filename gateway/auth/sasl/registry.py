# -*- test-case-name: tests.test_sasl_registry -*-
"""
Which SASL mechanisms exist, and which to offer on a connection now.

Each mechanism module registers its classes with L{register} when imported;
this module imports the project's mechanism modules at its end, so that
L{MECHANISMS} is complete once it is imported.

A mechanism class may define a classmethod C{available(context) -> bool}
saying whether it can run on a connection (SCRAM-*-PLUS needs channel-binding
data, EXTERNAL a client certificate).  Without one it is always available.
On top of that, L{offered} applies rules that hold whatever a module says:

  - a plain-text mechanism is hidden before TLS unless the operator allows it
    (RFC 4616 section 6);
  - a C{-PLUS} mechanism needs channel-binding data (RFC 5802 section 6);
  - C{EXTERNAL} needs a verified client certificate.

A mechanism with a C{-PLUS} sibling (SCRAM, and any GS2 family) takes a
keyword C{plus_advertised}: L{create} sets it when the sibling was offered, so
that the mechanism refuses a client saying "y" (RFC 5802 section 6: a
downgrade of the mechanism list).

L{authorize} is the authzid rule shared by the mechanisms that carry one.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence

from twisted.internet.defer import Deferred, succeed

from gateway.auth.sasl.base import Mechanism, Proven, SASLContext, Step

#: Mechanism name -> class, in registration order.
MECHANISMS: dict[str, type[Mechanism]] = {}

# RFC 4422 section 3.1: 1 to 20 characters from A-Z, 0-9, "-" and "_".
_NAME = re.compile(r"[A-Z0-9_-]{1,20}")

#: The modules that hold the project's mechanisms, imported below.
MODULES = (
    "gateway.auth.sasl.plain",
    "gateway.auth.sasl.crammd5",
    "gateway.auth.sasl.digestmd5",
    "gateway.auth.sasl.scram",
    "gateway.auth.sasl.external",
    "gateway.auth.sasl.otp",
    "gateway.auth.sasl.gssapi",
)


def register(cls: type[Mechanism]) -> type[Mechanism]:
    """
    Add a mechanism class to L{MECHANISMS}; usable as a class decorator.

    @raise ValueError: if its name is not a valid SASL name, or is already
        taken by another class.
    """
    name = cls.name
    if not _NAME.fullmatch(name):
        raise ValueError(f"{cls.__qualname__}: {name!r} is not a SASL mechanism name")
    known = MECHANISMS.get(name)
    if known is not None and known is not cls:
        raise ValueError(f"{name} is already registered by {known.__qualname__}")
    MECHANISMS[name] = cls
    return cls


def unknown(names: Sequence[str]) -> list[str]:
    """The names in C{names} that no module registered (for config checks)."""
    return [name for name in names if _lookup(name) is None]


def available(cls: type[Mechanism], context: SASLContext) -> bool:
    """
    Whether C{cls} can run on the connection C{context} describes, by the
    registry's rules and the class's own C{available}, if it has one.
    """
    if cls.name.endswith("-PLUS") and not context.channel_binding:
        return False
    if cls.name == "EXTERNAL" and context.peer_certificate is None:
        return False
    check = getattr(cls, "available", None)
    return check is None or bool(check(context))


def offered(
    names: Sequence[str],
    *,
    encrypted: bool,
    plaintext_without_tls: bool,
    context: SASLContext,
) -> list[str]:
    """
    The mechanisms to advertise now, in the configured order.

    @param names: the listener's configured mechanisms; unknown names are
        skipped (L{unknown} is for refusing them in the configuration).
    @param encrypted: whether the connection is under TLS now.
    @param plaintext_without_tls: the operator allows PLAIN and LOGIN without
        TLS.
    @param context: the connection, for the mechanisms' C{available}.
    @return: the canonical (upper-case) names, without duplicates.
    """
    result: list[str] = []
    for name in names:
        cls = _lookup(name)
        if cls is None or cls.name in result:
            continue
        if cls.plaintext and not (encrypted or plaintext_without_tls):
            continue
        if available(cls, context):
            result.append(cls.name)
    return result


def create(
    name: str,
    context: SASLContext,
    *,
    names: Sequence[str] | None = None,
    plaintext_without_tls: bool = False,
) -> Mechanism | None:
    """
    Start the mechanism a client chose, if it is offered on this connection.

    @param name: the client's choice (compared case-insensitively).
    @param names: the listener's configured mechanisms; C{None} for all
        registered ones.
    @return: a fresh mechanism, or C{None} for an unknown or not offered name.
    """
    now = offered(
        list(MECHANISMS) if names is None else names,
        encrypted=context.encrypted,
        plaintext_without_tls=plaintext_without_tls,
        context=context,
    )
    cls = _lookup(name)
    if cls is None or cls.name not in now:
        return None
    if cls.name + "-PLUS" in MECHANISMS:
        return cls(context, plus_advertised=cls.name + "-PLUS" in now)  # type: ignore[call-arg]
    return cls(context)


def authorize(
    mechanism: Mechanism, account: str, authzid: str | None, claimed: str
) -> Deferred[Step]:
    """
    End a successful exchange by the authorization rule every mechanism with
    an authzid shares (PLAIN, DIGEST-MD5, SCRAM, EXTERNAL): no authzid, or one
    naming the account itself, gives C{Proven(authzid=None)}; another gives
    C{Proven(authzid=authzid)} only if the directory says C{account} may act
    for it (L{IAuthBackend.may_act_as}), else L{Failed}.

    @param account: the canonical account the client proved it holds.
    @param claimed: the name the client authenticated as, for L{Failed}.
    """
    if not authzid or authzid == account:
        return succeed(Proven(authcid=account, mechanism=mechanism.name))

    def decided(allowed: bool) -> Step:
        if allowed:
            return Proven(authcid=account, mechanism=mechanism.name, authzid=authzid)
        return mechanism.failed(f"{account!r} may not act as {authzid!r}", authcid=claimed)

    d: Deferred[bool] = mechanism.context.backend.may_act_as(account, authzid)
    return d.addCallback(decided)


def directory_key(context: SASLContext, name: str) -> str:
    """
    The form under which the directory finds the account a client names:
    what the fake answers for unknown names (SCRAM's salt, OTP's challenge)
    must be keyed on.  Two names the directory takes as one account get the
    same real answer; if two unknown names it would take as one got
    different fake answers, comparing the answers for C{bob} and
    C{bob@example.edu} (a default domain) or for C{stra\u00dfe@...} and
    C{strasse@...} (lower case against case folding) would list the
    accounts.

    @return: the directory's own C{canonical_name} of C{name} when it has
        one (L{gateway.auth.directory.FileDirectory}); else C{name}
        case-folded.
    """
    canonical = getattr(context.backend, "canonical_name", None)
    if callable(canonical):
        try:
            return str(canonical(name))
        except Exception:
            pass
    return name.casefold()


def _lookup(name: str) -> type[Mechanism] | None:
    if not name.isascii():
        return None
    return MECHANISMS.get(name.upper())


def _load(modules: Sequence[str] = MODULES) -> None:
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            # A module not written yet, or one whose optional dependency (the
            # gssapi package) is not installed: nothing to offer from it.  A
            # missing module of our own inside it is a bug and propagates.
            if e.name != module and (e.name or "gateway").startswith("gateway"):
                raise


# At the end: the mechanism modules import register() from here.
_load()
