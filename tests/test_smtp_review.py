"""
The SMTP review: envelope parsing (RFC 5321 section 4.1.2, RFC 6531), the
relay check against every spelling of a local domain, aliases (loops, self
reference, chains cut), DSN reports (RFC 3461/3464/6522) and the one reply
after DATA for a multi-recipient message.  Regression tests are named after
what they prevent.
"""

from __future__ import annotations

import email
import email.policy
import ipaddress
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.directory import FileDirectory
from gateway.auth.usersfile import Account, UsersFile
from gateway.smtp import dsn
from gateway.smtp.address import (
    AddressError,
    canonical_recipient,
    parse_params,
    parse_path,
    split_command,
)
from gateway.smtp.addressbook import DirectoryAddressBook
from gateway.smtp.aliases import Aliases
from gateway.smtp.delivery import Delivery
from gateway.smtp.policy import PolicySettings, Session, check_recipient
from gateway.smtp.server import SMTPServices
from gateway.smtp.spool import Spool
from gateway.store.model import Quota
from gateway.testing import MemoryStore
from tests.test_policy import OUTSIDE, SETTINGS
from tests.test_policy import Book as PolicyBook
from tests.test_protocols import lines
from tests.test_smtp_transaction import Book, TransactionTestCase, sync_run


def refused(test: SynchronousTestCase, path: str, **kw: Any) -> AddressError:
    return test.assertRaises(AddressError, parse_path, path, **kw)


class PathSyntaxTests(SynchronousTestCase):
    """RFC 5321 section 4.1.2 paths, without a conversation."""

    def test_quoted_local_parts(self) -> None:
        for path in ('<"a b"@x.org>', '<"a\\"b"@x.org>', '<"a@b"@x.org>', '<"a>b"@x.org>'):
            self.assertEqual(parse_path(path), path[1:-1])

    def test_escaped_backslash_ends_the_quoted_string(self) -> None:
        """C{"a>\\\\"}: the second backslash is escaped, so the quote after
        it closes the string and the '>' after the domain ends the path
        (it was taken for an escaped quote, and the path cut at 'a>')."""
        path, params = split_command('FROM:<"a>\\\\"@x.org> SIZE=1', "FROM")
        self.assertEqual((path, params), ('<"a>\\\\"@x.org>', ["SIZE=1"]))
        self.assertEqual(parse_path(path), '"a>\\\\"@x.org')

    def test_source_route_accepted_and_ignored(self) -> None:
        self.assertEqual(parse_path("<@a.org,@[192.0.2.1]:u@d.org>"), "u@d.org")
        self.assertEqual(parse_path("<@relay.example:postmaster@d.org>", postmaster_ok=True),
                         "postmaster@d.org")

    def test_source_route_is_domains_only(self) -> None:
        """The route is ignored, but it is not a place for control
        characters, spaces or undeclared UTF-8 (anything but ',:' passed)."""
        for path in ("<@\x00:u@d.org>", "<@a b:u@d.org>", "<@:u@d.org>", "<@a,:u@d.org>"):
            self.assertEqual(refused(self, path).code, 501, path)
        self.assertEqual(refused(self, "<@bücher.de:u@d.org>").code, 553)
        self.assertEqual(parse_path("<@bücher.de:u@d.org>", utf8=True), "u@d.org")

    def test_address_literals(self) -> None:
        for good in ("u@[192.0.2.1]", "u@[IPv6:2001:db8::1]", "u@[IPv6:::ffff:192.0.2.1]"):
            self.assertEqual(parse_path(f"<{good}>"), good)

    def test_malformed_address_literals_refused(self) -> None:
        for bad in ("u@[999.1.1.1]", "u@[1..2.3.4]", "u@[IPv6:::::]", "u@[IPv6:1:2]"):
            e = refused(self, f"<{bad}>")
            self.assertEqual((e.code, e.enhanced), (501, "5.1.3"), bad)
        self.assertEqual(refused(self, "<u@[300.1.1.1]>", null_ok=True).enhanced, "5.1.7")

    def test_lengths(self) -> None:
        """RFC 5321 section 4.5.3.1: local part 64 octets, label 63, path 256."""
        self.assertEqual(parse_path("<" + "a" * 64 + "@x.org>"), "a" * 64 + "@x.org")
        self.assertEqual(refused(self, "<" + "a" * 65 + "@x.org>").text, "local part too long")
        self.assertEqual(refused(self, "<" + "ä" * 33 + "@x.org>", utf8=True).text,
                         "local part too long")  # 66 octets
        refused(self, "<a@" + "b" * 64 + ".org>")
        long_domain = ".".join(["d" * 60] * 5)  # 304 octets
        self.assertEqual(refused(self, f"<a@{long_domain}>").text, "address too long")

    def test_null_path_and_postmaster(self) -> None:
        self.assertEqual(parse_path("<>", null_ok=True), "")
        self.assertEqual(refused(self, "<>").code, 501)
        self.assertEqual(parse_path("<PostMaster>", postmaster_ok=True), "postmaster")
        refused(self, "<postmaster>")  # a sender needs a domain
        refused(self, "<alice>", postmaster_ok=True)

    def test_utf8_needs_smtputf8(self) -> None:
        e = refused(self, "<jürgen@bücher.de>")
        self.assertEqual((e.code, e.enhanced), (553, "5.6.7"))
        self.assertEqual(parse_path("<jürgen@bücher.de>", utf8=True), "jürgen@bücher.de")

    def test_trailing_dot_refused(self) -> None:
        refused(self, "<alice@example.edu.>")

    def test_parameters(self) -> None:
        self.assertEqual(parse_params(["size=10", "Body=8BITMIME", "SMTPUTF8"]),
                         {"SIZE": "10", "BODY": "8BITMIME", "SMTPUTF8": None})
        self.assertEqual(self.assertRaises(AddressError, parse_params,
                                           ["SIZE=1", "size=2"]).text, "parameter SIZE given twice")
        for bad in (["=x"], ["SIZE="], ["-X=1"], ["A=b=c"]):
            self.assertEqual(self.assertRaises(AddressError, parse_params, bad).code, 501, bad)


class CanonicalRecipientTests(SynchronousTestCase):
    LOCAL = ("example.edu", "xn--bcher-kva.de", "straße.de")

    def test_local_domain_spellings(self) -> None:
        for given_, want in [
            ("Alice@EXAMPLE.EDU", "Alice@example.edu"),  # the local part keeps its case
            ("a@example.edu.", "a@example.edu"),
            ("a@bücher.de", "a@xn--bcher-kva.de"),
            ("a@BÜCHER.DE", "a@xn--bcher-kva.de"),
            ("a@xn--strae-oqa.de", "a@straße.de"),
            ("postmaster", "postmaster@example.edu"),
        ]:
            self.assertEqual(canonical_recipient(given_, self.LOCAL), want, given_)

    def test_other_addresses_unchanged(self) -> None:
        """Only our own domains are respelt: a lookalike, IDNA 2003's
        ß -> ss, a literal and an outside domain are left as they are."""
        for address in ("a@ex\u0430mple.edu", "a@strasse.de", "a@[192.0.2.1]", "a@else.org",
                        '"x@else.org"@other.org'):
            self.assertEqual(canonical_recipient(address, self.LOCAL), address)
        self.assertEqual(canonical_recipient("postmaster", ()), "postmaster")


class IDNBook(PolicyBook):
    """The test_policy book, with an account in an IDN domain."""

    def is_local_recipient(self, address: str) -> bool:
        return address.lower() == "jürgen@xn--bcher-kva.de" or super().is_local_recipient(address)


IDN_SETTINGS = PolicySettings(local_domains=("example.edu", "xn--bcher-kva.de"),
                              trusted_networks=SETTINGS.trusted_networks)

# (recipient, code, rule): an outsider, unauthenticated, on the MX.
SPELLING_TABLE = [
    ("ALICE@EXAMPLE.EDU", 250, "local-recipient"),
    ("alice@example.edu.", 250, "local-recipient"),
    ("alice@Example.Edu.", 250, "local-recipient"),
    ("jürgen@bücher.de", 250, "local-recipient"),
    ("jürgen@BÜCHER.de", 250, "local-recipient"),
    ("nobody@bücher.de", 550, "unknown-local-recipient"),
    ("alice@ex\u0430mple.edu", 554, "relay-denied"),  # a Cyrillic a: elsewhere
    ("user%else.org@example.edu", 550, "unknown-local-recipient"),
    ("else.org!user@example.edu", 550, "unknown-local-recipient"),
    ('"user@else.org"@example.edu', 550, "unknown-local-recipient"),
    ("alice@[192.0.2.1]", 554, "relay-denied"),
    ("alice@[IPv6:2001:db8::1]", 554, "relay-denied"),
    ("postmaster@EXAMPLE.edu.", 250, "postmaster"),
]


class RelaySpellingTests(SynchronousTestCase):
    def test_local_domain_in_any_spelling(self) -> None:
        """
        The policy decides on the same form the server delivers: a local
        domain in upper case, with a trailing dot, or as a U-label for its
        configured A-label, is local (it was relay-denied as a U-label,
        and relayed to ourselves for a trusted client); a lookalike, the
        percent hack, a quoted '@' and an address literal never reach an
        outside domain for an outsider.
        """
        for rcpt, code, rule in SPELLING_TABLE:
            d = check_recipient(IDN_SETTINGS, IDNBook(), Session("mx", OUTSIDE), rcpt, 0)
            self.assertEqual((d.code, d.rule), (code, rule), rcpt)

    def test_idn_local_domain_is_not_relayed_for_trusted_clients(self) -> None:
        """A trusted client writing our IDN domain as a U-label: local
        delivery (550 for an unknown user), never the outbound relay."""
        d = check_recipient(IDN_SETTINGS, IDNBook(), Session("mx", "10.1.2.3"),
                            "nobody@bücher.de", 0)
        self.assertEqual(d.rule, "unknown-local-recipient")


def users_dir(test: SynchronousTestCase, *accounts: Account) -> FileDirectory:
    root = Path(test.mktemp())
    root.mkdir()
    users = UsersFile(str(root / "users.json"))
    users.save({a.name: a for a in accounts})
    return FileDirectory(users, default_domain="example.edu", run_in_thread=sync_run)


class DirectoryConversationCase(TransactionTestCase):
    """Conversations over the real address book: L{FileDirectory} and the
    aliases file."""

    aliases = ""
    local_domains: tuple[str, ...] = ("example.edu",)
    accounts: tuple[Account, ...] = (
        Account("alice@example.edu", addresses=("a.smith@example.edu",)),
        Account("bob@example.edu"),
    )

    def setUp(self) -> None:
        super().setUp()
        self.aliases_path = Path(self.mktemp())
        self.aliases_path.write_text(self.aliases)
        self.book = DirectoryAddressBook(users_dir(self, *self.accounts), self.local_domains,
                                         self.aliases_path)
        self.delivery = Delivery(self.store, self.spool, self.book, "mail.example.edu",
                                 self.clock)
        self.policy = PolicySettings(local_domains=self.local_domains,
                                     trusted_networks=(ipaddress.ip_network("10.0.0.0/8"),),
                                     max_recipients=5)

    def open(self, *a: Any, **kw: Any) -> tuple[Any, Any]:
        proto, t = super().open(*a, **kw)
        proto.services = SMTPServices(self.policy, self.book, self.delivery)
        return proto, t

    def send(self, *rcpts: bytes, sender: bytes = b"x@else.org", peer: str = OUTSIDE,
             body: bytes = b"Subject: t\r\n\r\nhi\r\n") -> list[bytes]:
        proto, t = self.open(peer=peer)
        proto.dataReceived(b"MAIL FROM:<" + sender + b">\r\n"
                           + b"".join(b"RCPT TO:<" + r + b">\r\n" for r in rcpts)
                           + b"DATA\r\n" + body + b".\r\n")
        return lines(t)


class PostmasterTests(DirectoryConversationCase):
    aliases = "postmaster@example.edu: alice\n"
    accounts = DirectoryConversationCase.accounts + (Account("hostmaster@example.edu"),)

    def test_bare_postmaster_reaches_the_domain_postmaster(self) -> None:
        """RCPT TO:<postmaster> (RFC 5321 section 4.1.1.3) is the first local
        domain's postmaster: its domain alias routes it (it was refused as
        unrouted)."""
        replies = self.send(b"postmaster")
        self.assertEqual(replies[1], b"250 2.1.5 recipient OK")
        self.assertTrue(replies[-1].startswith(b"250 2.0.0 OK queued as "), replies)
        self.assertEqual(len(self.inbox("alice@example.edu")), 1)
        self.assertEqual(self.spool.pending(), [])


class PostmasterAccountTests(DirectoryConversationCase):
    accounts = DirectoryConversationCase.accounts + (Account("postmaster@example.edu"),)

    def test_bare_postmaster_is_stored_not_spooled(self) -> None:
        """With a postmaster account and no alias, RCPT TO:<postmaster> was
        accepted and then handed to the outbound spool as the domainless
        address 'postmaster'."""
        replies = self.send(b"postmaster")
        self.assertTrue(replies[-1].startswith(b"250 2.0.0 OK queued as "), replies)
        self.assertEqual(len(self.inbox("postmaster@example.edu")), 1)
        self.assertEqual(self.spool.pending(), [])


class IDNConversationTests(DirectoryConversationCase):
    local_domains = ("example.edu", "xn--bcher-kva.de")
    accounts = (Account("alice@xn--bcher-kva.de"),)

    def test_u_label_of_our_domain_is_delivered(self) -> None:
        """SMTPUTF8 mail to our A-label domain written as U-labels reaches
        the mailbox (it was refused as a relay attempt)."""
        proto, t = self.open()
        proto.dataReceived("MAIL FROM:<x@else.org> SMTPUTF8\r\nRCPT TO:<Alice@BÜCHER.de>\r\n"
                           "DATA\r\nhi\r\n.\r\n".encode())
        replies = lines(t)
        self.assertEqual(replies[1], b"250 2.1.5 recipient OK")
        self.assertTrue(replies[-1].startswith(b"250 2.0.0"), replies)
        self.assertEqual(len(self.inbox("alice@xn--bcher-kva.de")), 1)
        self.assertIn(b"for <Alice@xn--bcher-kva.de>", self.inbox("alice@xn--bcher-kva.de")[0])

    def test_u_label_of_our_domain_never_relayed(self) -> None:
        """A trusted client: our domain as U-labels is local, not a relay
        to ourselves through the spool."""
        proto, t = self.open(peer="10.1.2.3")
        proto.dataReceived("MAIL FROM:<x@else.org> SMTPUTF8\r\nRCPT TO:<nobody@bücher.de>\r\n"
                           .encode())
        self.assertEqual(lines(t)[-1], b"550 5.1.1 recipient address rejected: user unknown")


class NoRelayPropertyTests(DirectoryConversationCase):
    """An outsider's message reaches the spool only through an alias the
    operator made."""

    aliases = "fwd: someone@partner.org\n"

    @settings(max_examples=150, deadline=None)
    @given(local=st.sampled_from(["alice", "ALICE", '"alice"', '"x@else.org"', "x%else.org",
                                  "else.org!x", "fwd", "postmaster", "nobody", "a.smith"]),
           domain=st.sampled_from(["example.edu", "EXAMPLE.EDU", "example.edu.",
                                   "example.edu..", "else.org", "[192.0.2.1]",
                                   "[IPv6:::1]", "ex\u0430mple.edu", "example.edu.else.org",
                                   "else.org@example.edu", "sub.example.edu"]),
           route=st.sampled_from(["", "@example.edu:", "@else.org,@example.edu:"]),
           utf8=st.booleans())
    def test_outsider_never_relays(self, local: str, domain: str, route: str,
                                   utf8: bool) -> None:
        self.spool = Spool(str(Path(self.mktemp()).absolute()), run_in_thread=sync_run,
                           clock=self.clock)
        self.delivery = Delivery(self.store, self.spool, self.book, "mail.example.edu",
                                 self.clock)
        proto, t = self.open()
        proto.dataReceived(f"MAIL FROM:<x@else.org>{' SMTPUTF8' if utf8 else ''}\r\n"
                           f"RCPT TO:<{route}{local}@{domain}>\r\nDATA\r\nhi\r\n.\r\n".encode())
        lines(t)
        for envelope in self.spool.pending():
            self.assertEqual(envelope["recipients"], ["someone@partner.org"],
                             (route, local, domain))


class AliasTests(DirectoryConversationCase):
    aliases = """
loop1: loop2
loop2: loop1
me: me
bob: bob, bob@backup.org
staff: alice, bob, A.Smith, alice@example.edu
fwd: someone@partner.org
""" + "".join(f"c{i}: c{i + 1}\n" for i in range(12)) + "c12: alice\n"

    def test_loops_and_self_reference_refused(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<loop1@example.edu>\r\n"
                           b"RCPT TO:<me@example.edu>\r\n")
        self.assertEqual(lines(t)[1:], [b"550 5.1.1 recipient address rejected: user unknown"] * 2)

    def test_chain_too_deep_never_spooled_to_ourselves(self) -> None:
        """A chain cut at the depth limit ended at an alias of ours, which
        went to the outbound spool (and would come back here for ever):
        it leads nowhere, so it is refused."""
        self.assertEqual(self.book.expand("c0@example.edu"), [])
        replies = self.send(b"c0@example.edu")
        self.assertEqual(replies[1], b"550 5.1.1 recipient address rejected: user unknown")
        self.assertEqual(self.spool.pending(), [])

    def test_alias_naming_itself_keeps_its_mailbox(self) -> None:
        """'bob: bob, bob@backup.org' delivers to bob's mailbox and forwards
        (bob's copy was dropped as a loop)."""
        replies = self.send(b"bob@example.edu")
        self.assertTrue(replies[-1].startswith(b"250 2.0.0"), replies)
        self.assertEqual(len(self.inbox("bob@example.edu")), 1)
        [envelope] = self.spool.pending()
        self.assertEqual(envelope["recipients"], ["bob@backup.org"])

    def test_one_copy_per_account(self) -> None:
        replies = self.send(b"staff@example.edu", b"alice@example.edu", b"A.SMITH@example.edu",
                            b"bob@EXAMPLE.edu")
        self.assertTrue(replies[-1].startswith(b"250 2.0.0"), replies)
        self.assertEqual(len(self.inbox("alice@example.edu")), 1)
        self.assertEqual(len(self.inbox("bob@example.edu")), 1)
        [envelope] = self.spool.pending()
        self.assertEqual(envelope["recipients"], ["bob@backup.org"])

    def test_outsider_reaches_an_outside_target_only_through_an_alias(self) -> None:
        """The documented rule: a local alias is a local recipient for
        anyone, and its outside targets are forwarded; the same outside
        address given directly is relay-denied."""
        replies = self.send(b"fwd@example.edu")
        self.assertTrue(replies[-1].startswith(b"250 2.0.0"), replies)
        [envelope] = self.spool.pending()
        self.assertEqual(envelope["recipients"], ["someone@partner.org"])
        replies = self.send(b"someone@partner.org")
        self.assertEqual(replies[1], b"554 5.7.1 relay access denied")

    def test_broken_reload_keeps_the_table(self) -> None:
        self.aliases_path.write_text("fwd: <bad>\nno colon\n")
        self.book.reload()
        self.assertEqual(self.book.expand("fwd@example.edu"), ["someone@partner.org"])
        self.aliases_path.write_text("fwd: alice\n")
        self.book.reload()
        self.assertEqual(self.book.expand("fwd@example.edu"), ["alice@example.edu"])

    def test_aliases_module(self) -> None:
        """Aliases.expand itself: self reference is final, loops add nothing."""
        a = Aliases.parse("bob: bob, x@else.org\nl1: l2\nl2: l1\n")
        self.assertEqual(a.expand("Bob@example.edu", ("example.edu",), "example.edu"),
                         ["Bob@example.edu", "x@else.org"])
        self.assertEqual(a.expand("l1@example.edu", ("example.edu",), "example.edu"), [])


class MultiRecipientTests(TransactionTestCase):
    """RFC 5321 has one reply after DATA for the whole message."""

    def quota_store(self, quotas: dict[str, Quota]) -> None:
        self.store = MemoryStore(clock=self.clock,
                                 quota_for=lambda account: quotas.get(account, Quota()))
        self.delivery = Delivery(self.store, self.spool, Book(), "mail.example.edu", self.clock)

    def test_temporary_refusal_wins_over_permanent(self) -> None:
        """
        alice's mailbox is full (452, temporary), bob's quota is smaller
        than the message (552, permanent), nothing is stored: the client
        must keep the message (452), whatever the recipients' order; the
        552 made it bounce alice's copy too.
        """
        for order in ((b"alice", b"bob"), (b"bob", b"alice")):
            self.quota_store({"alice@example.edu": Quota(max_messages=0),
                              "bob@example.edu": Quota(max_bytes=10)})
            proto, t = self.open()
            proto.dataReceived(b"MAIL FROM:<x@else.org>\r\n"
                               + b"".join(b"RCPT TO:<%s@example.edu>\r\n" % n for n in order)
                               + b"DATA\r\n" + b"x" * 100 + b"\r\n.\r\n")
            self.assertEqual(lines(t)[-1], b"452 4.2.2 mailbox full, try again later", order)

    def test_all_permanent_is_permanent(self) -> None:
        self.quota_store({"alice@example.edu": Quota(max_bytes=10),
                          "bob@example.edu": Quota(max_bytes=10)})
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<alice@example.edu>\r\n"
                           b"RCPT TO:<bob@example.edu>\r\nDATA\r\n" + b"x" * 100 + b"\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"552 5.2.2 "))

    def test_one_stored_one_refused_is_250_and_spooled(self) -> None:
        self.quota_store({"alice@example.edu": Quota(max_messages=0)})
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<alice@example.edu>\r\n"
                           b"RCPT TO:<bob@example.edu>\r\nDATA\r\nhi\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0 OK queued as "))
        self.assertEqual(len(self.inbox("bob@example.edu")), 1)
        [envelope] = self.spool.pending()
        self.assertEqual(envelope["recipients"], ["alice@example.edu"])

    def test_refused_recipients_do_not_count_toward_the_limit(self) -> None:
        """max_recipients (3) counts accepted recipients: refused ones do
        not use it up, and the fourth accepted one is 452 4.5.3."""
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\n"
                           + b"RCPT TO:<nobody@example.edu>\r\n" * 4
                           + b"RCPT TO:<y@else.org>\r\n"
                           + b"RCPT TO:<alice@example.edu>\r\n" * 3
                           + b"RCPT TO:<bob@example.edu>\r\n")
        replies = lines(t)
        self.assertEqual([r[:3] for r in replies],
                         [b"250"] + [b"550"] * 4 + [b"554"] + [b"250"] * 3 + [b"452"])
        self.assertEqual(replies[-1], b"452 4.5.3 too many recipients")


class ParameterConversationTests(TransactionTestCase):
    def test_auth_parameter_must_be_xtext(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org> AUTH=a+zz@b\r\n")
        self.assertEqual(lines(t), [b"501 5.5.4 malformed AUTH parameter"])
        proto.dataReceived(b"MAIL FROM:<x@else.org> AUTH=<>\r\nRSET\r\n"
                           b"MAIL FROM:<x@else.org> AUTH=x+2By@else.org\r\n")
        self.assertEqual(lines(t), [b"250 2.1.0 sender OK", b"250 2.0.0 OK",
                                    b"250 2.1.0 sender OK"])

    def test_parameter_errors(self) -> None:
        proto, t = self.open()
        for command, reply in [
            (b"MAIL FROM:<x@else.org> SIZE=1 size=2", b"501 5.5.4 parameter SIZE given twice"),
            (b"MAIL FROM:<x@else.org> RET=FULL RET=HDRS", b"501 5.5.4 parameter RET given twice"),
            (b"MAIL FROM:<x@else.org> SIZE=12a", b"501 5.5.4 SIZE needs a number"),
            (b"MAIL FROM:<x@else.org> BODY=BINARYMIME",
             b"501 5.5.4 BODY must be 7BIT or 8BITMIME"),
            (b"MAIL FROM:<x@else.org> SMTPUTF8=yes", b"501 5.5.4 SMTPUTF8 takes no value"),
            (b"MAIL FROM:<x@else.org> XYZZY", b"555 5.5.4 unsupported parameter XYZZY"),
            (b"MAIL FROM:<x@else.org> ENVID=" + b"x" * 101, b"501 5.5.4 malformed ENVID parameter"),
            (b"MAIL FROM:<x@else.org> ENVID=a\xc3\xa9", b"501 5.5.4 malformed parameter"),
        ]:
            proto.dataReceived(command + b"\r\n")
            self.assertEqual(lines(t), [reply], command)
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\n")
        lines(t)
        for command, reply in [
            (b"RCPT TO:<bob@example.edu> NOTIFY=NEVER,FAILURE",
             b"501 5.5.4 NOTIFY=NEVER cannot be combined with other values"),
            (b"RCPT TO:<bob@example.edu> NOTIFY=SUCCESS,SUCCESS",
             b"501 5.5.4 malformed NOTIFY parameter"),
            (b"RCPT TO:<bob@example.edu> ORCPT=rfc822;a+4", b"501 5.5.4 malformed ORCPT parameter"),
            (b"RCPT TO:<bob@example.edu> ORCPT=rfc822;a+0Ab",
             b"501 5.5.4 malformed ORCPT parameter"),
            (b"RCPT TO:<bob@example.edu> SIZE=10", b"555 5.5.4 unsupported parameter SIZE"),
            (b"RCPT TO:<postmaster@else.org>", b"554 5.7.1 relay access denied"),
            (b"RCPT TO:<>", b"501 5.1.3 the null address is not a recipient"),
        ]:
            proto.dataReceived(command + b"\r\n")
            self.assertEqual(lines(t), [reply], command)


class DSNReviewTests(TransactionTestCase):
    def test_one_report_for_a_recipient_given_twice(self) -> None:
        """bob@ and BOB@ are one mailbox and one copy: one 'delivered'
        (two were reported)."""
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<alice@example.edu>\r\n"
                           b"RCPT TO:<bob@example.edu> NOTIFY=SUCCESS\r\n"
                           b"RCPT TO:<BOB@example.edu> NOTIFY=SUCCESS\r\n"
                           b"RCPT TO:<staff@example.edu> NOTIFY=SUCCESS\r\n"
                           b"RCPT TO:<Staff@example.edu> NOTIFY=SUCCESS\r\n"
                           b"DATA\r\nSubject: x\r\n\r\nx\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0"))
        self.assertEqual(len(self.inbox("bob@example.edu")), 1)
        [notice] = [m for m in self.inbox("alice@example.edu") if m.startswith(b"Return-Path: <>")]
        self.assertEqual(notice.count(b"Action: delivered"), 1)
        self.assertEqual(notice.count(b"Action: expanded"), 1)

    def test_report_structure_and_no_report_for_a_report(self) -> None:
        """The notice goes to the sender from <> (RFC 3461 section 6.2), is
        an RFC 3464 report, and asks for nothing itself; a notice's own
        delivery never makes another."""
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<alice@example.edu> ENVID=E1\r\n"
                           b"RCPT TO:<bob@example.edu> NOTIFY=SUCCESS ORCPT=rfc822;Bob+40x.org\r\n"
                           b"DATA\r\nSubject: s\r\n\r\nbody\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0"))
        [notice] = self.inbox("alice@example.edu")
        self.assertTrue(notice.startswith(b"Return-Path: <>\r\n"))
        self.assertEqual(len(self.inbox("bob@example.edu")), 1)
        self.assertEqual(self.spool.pending(), [])
        m: Any = email.message_from_bytes(notice, policy=email.policy.compat32)
        self.assertEqual((m.get_content_type(), m.get_param("report-type")),
                         ("multipart/report", "delivery-status"))
        per_message, bob = m.get_payload()[1].get_payload()
        self.assertEqual(per_message["Original-Envelope-Id"], "E1")
        self.assertEqual((bob["Original-Recipient"], bob["Final-Recipient"]),
                         ("rfc822;Bob@x.org", "rfc822; bob@example.edu"))
        self.assertNotIn(b"body", notice.partition(b"text/rfc822-headers")[2])

    def test_international_report_type_names_its_part(self) -> None:
        """RFC 6522 section 3: report-type is the second part's subtype, so
        global-delivery-status for an SMTPUTF8 report (it said
        delivery-status)."""
        data = dsn.success_report(
            hostname="mail.example.edu", sender="jürgen@bücher.de", queue_id="Q", envid=None,
            arrival=0.0, now=0.0, statuses=[dsn.Status("bob@example.edu", "delivered")],
            message=b"Subject: x\r\n\r\n")
        m: Any = email.message_from_bytes(data, policy=email.policy.compat32)
        self.assertEqual(m.get_param("report-type"), "global-delivery-status")
        self.assertEqual(m.get_payload()[1].get_content_type(), "message/global-delivery-status")

