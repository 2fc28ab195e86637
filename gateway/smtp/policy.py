# -*- test-case-name: tests.test_policy -*-
"""
The relay policy: a pure, table-driven decision.

Inputs are facts about the session (listener role, client address, TLS,
authenticated account) and the envelope (MAIL FROM, RCPT TO); the output is a
L{Decision}: accept or refuse, with the reply code, the RFC 3463 enhanced code,
the text, and the name of the rule that decided, so that
C{mailgateway policy explain} can show why.  Nothing here does I/O: the
directory is consulted through the synchronous L{AddressBook} given in.

The rules, in the order they are tried (first match decides):

MAIL FROM
  - C{messages-per-connection}: too many messages on this connection
    (421 4.7.0, and the connection is closed);
  - C{submission-needs-auth}: on C{submission}/C{submissions}, MAIL before
    AUTH (530 5.7.0);
  - C{sender-owned}: an authenticated client may use only its account's own
    addresses, or the null sender (553 5.7.1), unless
    C{policy.authenticated_any_sender};
  - C{accept-sender}.

RCPT TO
  - C{too-many-recipients} (452 4.5.3);
  - C{postmaster}: C{postmaster} and C{postmaster@} each local domain are
    accepted (RFC 5321 section 4.5.1) when the aliases file or an account
    routes them; C{postmaster-unrouted} otherwise (a configuration error
    that C{mailgateway check} reports);
  - C{local-recipient} / C{unknown-local-recipient}: a local domain's
    recipient is accepted from anyone if it is an account or an alias, else
    550 5.1.1;
  - C{relay-authenticated}, C{relay-trusted-network}: a recipient elsewhere is
    accepted from an authenticated client or a trusted network;
  - C{relay-denied}: otherwise 554 5.7.1 "Relay access denied" (the seed
    document's rule: no mail from an outside host to an outside address
    without authentication).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.smtp.address import ace, canonical_recipient

SUBMISSION_ROLES = ("submission", "submissions")


class AddressBook(Protocol):
    """What the policy asks of the directory (synchronously)."""

    def is_local_recipient(self, address: str) -> bool:
        """An account, one of its addresses, or an alias, in a local domain."""

    def owns(self, account: str, address: str) -> bool:
        """May C{account} use C{address} as its sender?"""


@dataclass(frozen=True)
class PolicySettings:
    local_domains: tuple[str, ...]
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_recipients: int = 100
    max_messages_per_connection: int = 100
    authenticated_any_sender: bool = False
    relay_from_trusted_networks: bool = True

    @classmethod
    def from_config(cls, config: Any) -> PolicySettings:
        """From a L{gateway.config.GatewayConfig}."""
        return cls(
            local_domains=config.server.local_domains,
            trusted_networks=config.server.trusted_networks,
            max_recipients=config.policy.max_recipients,
            max_messages_per_connection=config.policy.max_messages_per_connection,
            authenticated_any_sender=config.policy.authenticated_any_sender,
            relay_from_trusted_networks=config.policy.relay_from_trusted_networks,
        )


@dataclass(frozen=True)
class Session:
    """The facts of one SMTP session."""

    role: str
    client: str
    encrypted: bool = False
    account: str | None = None
    messages: int = 0  # messages already accepted on this connection


@dataclass(frozen=True)
class Decision:
    accept: bool
    code: int
    enhanced: str
    text: str
    rule: str
    close: bool = False

    def reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


def _accept(rule: str, text: str = "OK") -> Decision:
    return Decision(True, 250, "2.1.0" if rule.endswith("sender") else "2.1.5", text, rule)


def domain_of(address: str) -> str:
    """The domain part in its comparable form (L{ace}: lower case, no
    trailing dot, A-labels); empty for C{postmaster} and the null path."""
    return ace(address.rpartition("@")[2]) if "@" in address else ""


def _trusted(settings: PolicySettings, client: str) -> bool:
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in settings.trusted_networks)


def check_sender(settings: PolicySettings, book: AddressBook, session: Session,
                 sender: str) -> Decision:
    """Decide MAIL FROM (C{sender} is the path without brackets; "" is null)."""
    if session.messages >= settings.max_messages_per_connection:
        return Decision(False, 421, "4.7.0", "too many messages on this connection",
                        "messages-per-connection", close=True)
    if session.role in SUBMISSION_ROLES and session.account is None:
        return Decision(False, 530, "5.7.0", "authentication required",
                        "submission-needs-auth")
    if (session.account is not None and sender
            and not settings.authenticated_any_sender
            and not book.owns(session.account, sender)):
        return Decision(False, 553, "5.7.1",
                        f"sender address rejected: not owned by {session.account}",
                        "sender-owned")
    return _accept("accept-sender", "sender OK")


def check_recipient(settings: PolicySettings, book: AddressBook, session: Session,
                    recipient: str, accepted_so_far: int) -> Decision:
    """
    Decide one RCPT TO, given how many recipients were already accepted.

    The recipient is first put in the form the server keeps
    (L{canonical_recipient}), so that a local domain in another spelling
    (upper case, a trailing dot, U-label for A-label) is the local domain
    for the address book too, as in a real session.
    """
    if accepted_so_far >= settings.max_recipients:
        return Decision(False, 452, "4.5.3", "too many recipients", "too-many-recipients")
    recipient = canonical_recipient(recipient, settings.local_domains)
    domain = domain_of(recipient)
    local_part = recipient.rpartition("@")[0] if "@" in recipient else recipient
    local_domain = domain in {ace(d) for d in settings.local_domains}
    if local_part.lower() == "postmaster" and (local_domain or not domain):
        if book.is_local_recipient(recipient):
            return _accept("postmaster", "recipient OK")
        # RFC 5321 section 4.5.1 wants it accepted; without an alias or an
        # account it has nowhere to go ('mailgateway check' warns).
        return Decision(False, 550, "5.1.1", "postmaster has no mailbox here (configuration)",
                        "postmaster-unrouted")
    if local_domain:
        if book.is_local_recipient(recipient):
            return _accept("local-recipient", "recipient OK")
        return Decision(False, 550, "5.1.1", "recipient address rejected: user unknown",
                        "unknown-local-recipient")
    if session.account is not None:
        return _accept("relay-authenticated", "recipient OK (relay)")
    if settings.relay_from_trusted_networks and _trusted(settings, session.client):
        return _accept("relay-trusted-network", "recipient OK (relay)")
    return Decision(False, 554, "5.7.1", "relay access denied", "relay-denied")


def explain(settings: PolicySettings, book: AddressBook, session: Session, sender: str,
            recipients: list[str]) -> list[tuple[str, Decision]]:
    """
    The dry run: every decision a real session would meet, in order, as
    C{(what, decision)} pairs; stops after a refused MAIL FROM.
    """
    steps = [(f"MAIL FROM:<{sender}>", check_sender(settings, book, session, sender))]
    if not steps[0][1].accept:
        return steps
    accepted = 0
    for rcpt in recipients:
        decision = check_recipient(settings, book, session, rcpt, accepted)
        steps.append((f"RCPT TO:<{rcpt}>", decision))
        accepted += decision.accept
    return steps
