"""The relay policy as a decision table: one row per rule and per combination."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.smtp.policy import (
    Decision,
    PolicySettings,
    Session,
    check_recipient,
    check_sender,
    explain,
)


class Book:
    """A tiny address book: alice owns two addresses; 'staff' is an alias."""

    accounts = {"alice@example.edu": {"alice@example.edu", "a.smith@example.edu"},
                "bob@example.edu": {"bob@example.edu"}}
    aliases = {"staff@example.edu"}

    postmaster_routed = True

    def is_local_recipient(self, address: str) -> bool:
        address = address.lower()
        if address.partition("@")[0] == "postmaster":
            return self.postmaster_routed
        return address in self.aliases or any(address in a for a in self.accounts.values())

    def owns(self, account: str, address: str) -> bool:
        return address.lower() in self.accounts.get(account, set())


SETTINGS = PolicySettings(
    local_domains=("example.edu", "lists.example.edu"),
    trusted_networks=(ipaddress.ip_network("10.1.0.0/16"),),
    max_recipients=3,
    max_messages_per_connection=2,
)
OUTSIDE = "192.0.2.7"
INSIDE = "10.1.2.3"

# (role, client, account, sender, recipient, expected code, expected rule)
RCPT_TABLE = [
    ("mx", OUTSIDE, None, "x@else.org", "alice@example.edu", 250, "local-recipient"),
    ("mx", OUTSIDE, None, "x@else.org", "A.Smith@EXAMPLE.edu", 250, "local-recipient"),
    ("mx", OUTSIDE, None, "x@else.org", "staff@example.edu", 250, "local-recipient"),
    ("mx", OUTSIDE, None, "x@else.org", "nobody@example.edu", 550, "unknown-local-recipient"),
    ("mx", OUTSIDE, None, "x@else.org", "postmaster@example.edu", 250, "postmaster"),
    ("mx", OUTSIDE, None, "x@else.org", "PostMaster@lists.example.edu", 250, "postmaster"),
    ("mx", OUTSIDE, None, "x@else.org", "postmaster", 250, "postmaster"),
    ("mx", OUTSIDE, None, "x@else.org", "postmaster@else.org", 554, "relay-denied"),
    ("mx", OUTSIDE, None, "x@else.org", "y@else.org", 554, "relay-denied"),
    ("mx", OUTSIDE, None, "alice@example.edu", "y@else.org", 554, "relay-denied"),
    ("mx", INSIDE, None, "x@else.org", "y@else.org", 250, "relay-trusted-network"),
    ("mx", "::ffff:10.1.9.9", None, "x@else.org", "y@else.org", 250, "relay-trusted-network"),
    ("mx", OUTSIDE, "alice@example.edu", "alice@example.edu", "y@else.org", 250,
     "relay-authenticated"),
    ("submission", OUTSIDE, "bob@example.edu", "bob@example.edu", "y@else.org", 250,
     "relay-authenticated"),
    ("submission", OUTSIDE, "bob@example.edu", "bob@example.edu", "alice@example.edu", 250,
     "local-recipient"),
    ("submissions", INSIDE, "bob@example.edu", "bob@example.edu", "nobody@example.edu", 550,
     "unknown-local-recipient"),
]

# (role, client, account, sender, expected code, expected rule)
MAIL_TABLE = [
    ("mx", OUTSIDE, None, "x@else.org", 250, "accept-sender"),
    ("mx", OUTSIDE, None, "", 250, "accept-sender"),
    ("mx", OUTSIDE, None, "alice@example.edu", 250, "accept-sender"),
    ("submission", OUTSIDE, None, "alice@example.edu", 530, "submission-needs-auth"),
    ("submissions", INSIDE, None, "alice@example.edu", 530, "submission-needs-auth"),
    ("submission", OUTSIDE, "alice@example.edu", "alice@example.edu", 250, "accept-sender"),
    ("submission", OUTSIDE, "alice@example.edu", "A.Smith@example.edu", 250, "accept-sender"),
    ("submission", OUTSIDE, "alice@example.edu", "bob@example.edu", 553, "sender-owned"),
    ("submission", OUTSIDE, "alice@example.edu", "x@else.org", 553, "sender-owned"),
    ("submission", OUTSIDE, "alice@example.edu", "", 250, "accept-sender"),
    ("mx", OUTSIDE, "alice@example.edu", "bob@example.edu", 553, "sender-owned"),
]


class DecisionTableTests(SynchronousTestCase):
    def test_recipient_table(self) -> None:
        for role, client, account, _sender, rcpt, code, rule in RCPT_TABLE:
            session = Session(role, client, True, account)
            d = check_recipient(SETTINGS, Book(), session, rcpt, 0)
            self.assertEqual((d.code, d.rule, d.accept), (code, rule, code == 250),
                             (role, client, account, rcpt))

    def test_sender_table(self) -> None:
        for role, client, account, sender, code, rule in MAIL_TABLE:
            d = check_sender(SETTINGS, Book(), Session(role, client, True, account), sender)
            self.assertEqual((d.code, d.rule), (code, rule), (role, client, account, sender))

    def test_refusal_codes(self) -> None:
        session = Session("mx", OUTSIDE)
        self.assertEqual(check_recipient(SETTINGS, Book(), session, "y@else.org", 0).reply(),
                         "554 5.7.1 relay access denied")
        self.assertEqual(
            check_recipient(SETTINGS, Book(), session, "nobody@example.edu", 0).reply(),
            "550 5.1.1 recipient address rejected: user unknown")
        self.assertEqual(
            check_sender(SETTINGS, Book(), Session("submission", OUTSIDE), "a@b.c").reply(),
            "530 5.7.0 authentication required")

    def test_postmaster_without_route(self) -> None:
        book = Book()
        book.postmaster_routed = False
        d = check_recipient(SETTINGS, book, Session("mx", OUTSIDE), "postmaster@example.edu", 0)
        self.assertEqual((d.code, d.enhanced, d.rule), (550, "5.1.1", "postmaster-unrouted"))

    def test_too_many_recipients(self) -> None:
        session = Session("mx", OUTSIDE)
        d = check_recipient(SETTINGS, Book(), session, "alice@example.edu", 3)
        self.assertEqual((d.code, d.enhanced, d.rule), (452, "4.5.3", "too-many-recipients"))
        self.assertTrue(check_recipient(SETTINGS, Book(), session, "alice@example.edu", 2).accept)

    def test_messages_per_connection(self) -> None:
        d = check_sender(SETTINGS, Book(), Session("mx", OUTSIDE, messages=2), "x@else.org")
        self.assertEqual((d.code, d.rule, d.close), (421, "messages-per-connection", True))

    def test_any_sender_when_allowed(self) -> None:
        loose = PolicySettings(local_domains=("example.edu",), authenticated_any_sender=True)
        d = check_sender(loose, Book(), Session("submission", OUTSIDE, True, "alice@example.edu"),
                         "bob@example.edu")
        self.assertTrue(d.accept)

    def test_trusted_relay_can_be_off(self) -> None:
        strict = PolicySettings(local_domains=("example.edu",),
                                trusted_networks=SETTINGS.trusted_networks,
                                relay_from_trusted_networks=False)
        d = check_recipient(strict, Book(), Session("mx", INSIDE), "y@else.org", 0)
        self.assertEqual(d.rule, "relay-denied")

    def test_explain(self) -> None:
        steps = explain(SETTINGS, Book(), Session("mx", OUTSIDE), "x@else.org",
                        ["alice@example.edu", "y@else.org"])
        self.assertEqual([(what, d.rule) for what, d in steps], [
            ("MAIL FROM:<x@else.org>", "accept-sender"),
            ("RCPT TO:<alice@example.edu>", "local-recipient"),
            ("RCPT TO:<y@else.org>", "relay-denied"),
        ])

    def test_explain_stops_after_refused_sender(self) -> None:
        steps = explain(SETTINGS, Book(), Session("submission", OUTSIDE), "x@else.org", ["a@b.c"])
        self.assertEqual(len(steps), 1)

    @given(role=st.sampled_from(["mx", "submission", "submissions"]),
           client=st.one_of(st.ip_addresses().map(str), st.text(max_size=20)),
           account=st.one_of(st.none(), st.sampled_from(list(Book.accounts))),
           rcpt=st.text(max_size=40))
    def test_never_relays_for_strangers(self, role: str, client: str, account: str | None,
                                       rcpt: str) -> None:
        """The invariant: no relay to another domain for an unauthenticated outsider."""
        d = check_recipient(SETTINGS, Book(), Session(role, client, False, account), rcpt, 0)
        self.assertIsInstance(d, Decision)
        outside_domain = "@" in rcpt and rcpt.rpartition("@")[2].lower().rstrip(".") \
            not in SETTINGS.local_domains
        trusted = client.startswith("10.1.") or client.startswith("::ffff:10.1.")
        if d.accept and outside_domain:
            self.assertTrue(account is not None or trusted, (client, rcpt, d))
