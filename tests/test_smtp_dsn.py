"""
RFC 3461 parameters and the RFC 3464 success report, without sockets:
L{gateway.smtp.dsn}.
"""

from __future__ import annotations

import email
import email.policy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.smtp import dsn
from gateway.smtp.address import AddressError
from gateway.smtp.spool import Spool


class XtextTests(SynchronousTestCase):
    def test_decode(self) -> None:
        self.assertEqual(dsn.decode_xtext("a+2Bb+3Dc@x.org"), "a+b=c@x.org")
        self.assertEqual(dsn.decode_xtext("plain"), "plain")
        self.assertEqual(dsn.decode_xtext(""), "")

    def test_malformed(self) -> None:
        for bad in ("a+2b", "a+2", "a+", "a=b", "a b", "a\x7fb", "+ZZ", "é"):
            self.assertRaises(ValueError, dsn.decode_xtext, bad)

    def test_encode(self) -> None:
        self.assertEqual(dsn.encode_xtext("a+b=c d@x"), "a+2Bb+3Dc+20d@x")
        self.assertEqual(dsn.encode_xtext("ü"), "+C3+BC")

    @given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127)))
    def test_round_trip(self, text: str) -> None:
        encoded = dsn.encode_xtext(text)
        self.assertTrue(all("!" <= c <= "~" and c != "=" for c in encoded))
        self.assertEqual(dsn.decode_xtext(encoded), text)


class ParameterTests(SynchronousTestCase):
    def refused(self, parse: object, params: dict[str, str | None]) -> AddressError:
        error = self.assertRaises(AddressError, parse, params)
        self.assertEqual((error.code, error.enhanced), (501, "5.5.4"), params)
        return error

    def test_mail(self) -> None:
        self.assertIsNone(dsn.parse_mail({"SIZE": "10"}))
        t = dsn.parse_mail({"RET": "hdrs", "ENVID": "QQ+2B314"})
        assert t is not None
        self.assertEqual((t.ret, t.envid), ("HDRS", "QQ+314"))
        t = dsn.parse_mail({"ENVID": "x"})
        assert t is not None
        self.assertEqual((t.ret, t.envid), (None, "x"))

    def test_mail_malformed(self) -> None:
        cases: list[dict[str, str | None]] = [
            {"RET": None}, {"RET": "BODY"}, {"ENVID": None}, {"ENVID": "a+zz"},
            {"ENVID": "x" * 101}, {"ENVID": "a+0Ab"}, {"ENVID": "+C3+BC"}]
        for params in cases:
            self.refused(dsn.parse_mail, params)
        self.assertEqual(self.refused(dsn.parse_mail, {"RET": "X"}).text,
                         "malformed RET parameter")

    def test_rcpt(self) -> None:
        self.assertIsNone(dsn.parse_rcpt({}))
        r = dsn.parse_rcpt({"NOTIFY": "success,Delay"})
        assert r is not None
        self.assertEqual((r.notify, r.orcpt), (("SUCCESS", "DELAY"), None))
        self.assertTrue(r.wants("SUCCESS"))
        self.assertFalse(r.wants("FAILURE"))
        r = dsn.parse_rcpt({"NOTIFY": "NEVER", "ORCPT": "rfc822;a+2Bb@x.org"})
        assert r is not None
        self.assertEqual(r.notify, ("NEVER",))
        self.assertFalse(r.wants("SUCCESS"))
        self.assertEqual(r.orcpt, "rfc822;a+2Bb@x.org")  # kept as received, for the next hop
        self.assertEqual(r.original_recipient, "rfc822;a+b@x.org")  # decoded, for a report
        r = dsn.parse_rcpt({"ORCPT": "x-unknown-type;whatever"})
        assert r is not None
        self.assertEqual(r.orcpt, "x-unknown-type;whatever")

    def test_rcpt_malformed(self) -> None:
        cases: list[dict[str, str | None]] = [
            {"NOTIFY": None}, {"NOTIFY": "SOMETIMES"}, {"NOTIFY": "SUCCESS,"},
            {"NOTIFY": "SUCCESS,SUCCESS"}, {"ORCPT": None}, {"ORCPT": "rfc822"},
            {"ORCPT": "rfc822;"}, {"ORCPT": ";a@b"}, {"ORCPT": "rfc 822;a@b"},
            {"ORCPT": "rfc822;a+4"}, {"ORCPT": "rfc822;a+0Db@x"},
            {"ORCPT": "rfc822;" + "a" * 494}]
        for params in cases:
            self.refused(dsn.parse_rcpt, params)
        self.assertEqual(dsn.parse_rcpt({"ORCPT": "rfc822;" + "a" * 487}).orcpt,  # type: ignore[union-attr]
                         "rfc822;" + "a" * 487)

    def test_never_is_exclusive(self) -> None:
        for value in ("NEVER,SUCCESS", "FAILURE,NEVER"):
            error = self.refused(dsn.parse_rcpt, {"NOTIFY": value})
            self.assertEqual(error.text, "NOTIFY=NEVER cannot be combined with other values")

    @given(st.sampled_from(["RET", "ENVID", "NOTIFY", "ORCPT"]),
           st.none() | st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E)))
    def test_any_value_is_parsed_or_refused(self, key: str, value: str | None) -> None:
        """Whatever the client sends as a value (the address parser lets
        only printable ASCII through), the answer is a result or a 501."""
        parse = dsn.parse_mail if key in ("RET", "ENVID") else dsn.parse_rcpt
        try:
            result = parse({key: value})
        except AddressError as e:
            self.assertEqual((e.code, e.enhanced), (501, "5.5.4"))
        else:
            self.assertIsNotNone(result)
            if isinstance(result, dsn.RecipientParameters) and result.orcpt is not None:
                self.assertIsInstance(result.original_recipient, str)

    def test_first_parameters_of_a_repeated_recipient_kept(self) -> None:
        t = dsn.Transaction()
        t.add("a@x", dsn.RecipientParameters(("SUCCESS",)))
        t.add("a@x", dsn.RecipientParameters(("NEVER",)))
        self.assertEqual(t.of("a@x").notify, ("SUCCESS",))
        self.assertEqual(t.of("b@x"), dsn.RecipientParameters())


class Resolver:
    accounts = {"alice@example.edu": "alice", "a.smith@example.edu": "alice",
                "bob@example.edu": "bob"}
    aliases = {"staff@example.edu": ["alice@example.edu", "bob@example.edu", "help@partner.org"],
               "fwd@example.edu": ["far@partner.org"]}

    def expand(self, address: str) -> list[str]:
        return self.aliases.get(address.lower(), [address])

    def receiver_of(self, address: str) -> str | None:
        return self.accounts.get(address.lower())


SUCCESS = dsn.RecipientParameters(("SUCCESS", "FAILURE"), "rfc822;alice+40example.edu")


class SettleTests(SynchronousTestCase):
    def test_delivered_locally(self) -> None:
        t = dsn.Transaction()
        t.add("alice@example.edu", SUCCESS)
        t.add("bob@example.edu", dsn.RecipientParameters(("FAILURE",)))
        s = dsn.settle(t, ["alice@example.edu", "bob@example.edu"], Resolver(),
                       stored=("alice", "bob"), spooled=())
        self.assertEqual(s.successes, (dsn.Status("alice@example.edu", "delivered",
                                                  "rfc822;alice@example.edu"),))
        self.assertIsNone(s.spool)

    def test_refused_by_the_store_is_spooled_with_its_parameters(self) -> None:
        t = dsn.Transaction()
        t.add("alice@example.edu", SUCCESS)
        s = dsn.settle(t, ["alice@example.edu"], Resolver(), stored=(),
                       spooled=["alice@example.edu"])
        self.assertEqual(s.successes, ())
        self.assertEqual(s.spool, {"ret": None, "envid": None, "recipients": {
            "alice@example.edu": {"notify": ["SUCCESS", "FAILURE"],
                                  "orcpt": "rfc822;alice+40example.edu",
                                  "rcpt": "alice@example.edu"}}})

    def test_remote_recipients_keep_their_parameters(self) -> None:
        t = dsn.Transaction(ret="HDRS", envid="E1")
        t.add("y@else.org", dsn.RecipientParameters(("NEVER",), "rfc822;y+40else.org"))
        s = dsn.settle(t, ["y@else.org", "z@else.org", "fwd@example.edu"], Resolver(), stored=(),
                       spooled=["y@else.org", "z@else.org", "far@partner.org"])
        self.assertEqual(s.spool, {"ret": "HDRS", "envid": "E1", "recipients": {
            "y@else.org": {"notify": ["NEVER"], "orcpt": "rfc822;y+40else.org",
                           "rcpt": "y@else.org"},
            "z@else.org": {"notify": None, "orcpt": None, "rcpt": "z@else.org"},
            # forwarding: the alias's address is what the client gave
            "far@partner.org": {"notify": None, "orcpt": None, "rcpt": "fwd@example.edu"}}})

    def test_list_is_expanded_and_its_members_lose_success(self) -> None:
        t = dsn.Transaction()
        t.add("staff@example.edu", dsn.RecipientParameters(("SUCCESS", "DELAY")))
        s = dsn.settle(t, ["staff@example.edu"], Resolver(), stored=("alice", "bob"),
                       spooled=["help@partner.org"])
        self.assertEqual(s.successes, (dsn.Status("staff@example.edu", "expanded"),))
        assert s.spool is not None
        self.assertEqual(s.spool["recipients"]["help@partner.org"]["notify"], ["DELAY"])

    def test_list_member_notify_success_only_becomes_never(self) -> None:
        t = dsn.Transaction()
        t.add("staff@example.edu", dsn.RecipientParameters(("SUCCESS",)))
        s = dsn.settle(t, ["staff@example.edu"], Resolver(), stored=("alice", "bob"),
                       spooled=["help@partner.org"])
        assert s.spool is not None
        self.assertEqual(s.spool["recipients"]["help@partner.org"]["notify"], ["NEVER"])

    def test_no_success_asked(self) -> None:
        t = dsn.Transaction()
        t.add("alice@example.edu", dsn.RecipientParameters(None, "rfc822;alice+40example.edu"))
        s = dsn.settle(t, ["alice@example.edu"], Resolver(), stored=("alice",), spooled=())
        self.assertEqual(s.successes, ())


MESSAGE = (b"Received: from c.example ([192.0.2.7])\r\n\tby mail.example.edu; Thu, 1 Jan 2026\r\n"
           b"Subject: the report\r\nFrom: x@else.org\r\n\r\nsecret body\r\n")


class ReportTests(SynchronousTestCase):
    def report(self, **kw: object) -> tuple[bytes, Any]:
        args: dict[str, object] = {
            "hostname": "mail.example.edu", "sender": "x@else.org", "queue_id": "ABC123",
            "envid": "QQ314", "arrival": 1_800_000_000.0, "now": 1_800_000_001.0,
            "statuses": [dsn.Status("alice@example.edu", "delivered", "rfc822;A@example.edu"),
                         dsn.Status("staff@example.edu", "expanded")],
            "message": MESSAGE}
        args.update(kw)
        data = dsn.success_report(**args)  # type: ignore[arg-type]
        return data, email.message_from_bytes(data, policy=email.policy.compat32)

    def test_structure(self) -> None:
        data, m = self.report()
        self.assertNotIn(b"\n", data.replace(b"\r\n", b""))
        self.assertTrue(data.isascii())
        self.assertEqual(m["From"], "Mail Delivery System <MAILER-DAEMON@mail.example.edu>")
        self.assertEqual(m["To"], "<x@else.org>")
        self.assertEqual(m["Auto-Submitted"], "auto-replied")
        self.assertEqual(m.get_content_type(), "multipart/report")
        self.assertEqual(m.get_param("report-type"), "delivery-status")
        parts = m.get_payload()
        self.assertEqual([p.get_content_type() for p in parts],
                         ["text/plain", "message/delivery-status", "text/rfc822-headers"])
        self.assertIn("<alice@example.edu>: delivered to the mailbox", parts[0].get_payload())

    def test_delivery_status_fields(self) -> None:
        _, m = self.report()
        status = m.get_payload()[1]
        groups = status.get_payload()  # the email package parses the field groups
        per_message, alice, staff = groups
        self.assertEqual(per_message["Reporting-MTA"], "dns; mail.example.edu")
        self.assertEqual(per_message["Original-Envelope-Id"], "QQ314")
        self.assertIsNotNone(per_message["Arrival-Date"])
        self.assertEqual((alice["Original-Recipient"], alice["Final-Recipient"], alice["Action"],
                          alice["Status"]),
                         ("rfc822;A@example.edu", "rfc822; alice@example.edu", "delivered",
                          "2.0.0"))
        self.assertIsNone(staff["Original-Recipient"])  # no ORCPT: no field (RFC 3464 2.3.1)
        self.assertEqual((staff["Final-Recipient"], staff["Action"]),
                         ("rfc822; staff@example.edu", "expanded"))

    def test_no_envid_no_field(self) -> None:
        data, _ = self.report(envid=None)
        self.assertNotIn(b"Original-Envelope-Id", data)

    def test_headers_only(self) -> None:
        """A report without failures returns the header, never the body
        (RFC 3461 section 4.3), whatever RET asked."""
        data, m = self.report()
        returned = m.get_payload()[2].get_payload()
        self.assertIn("Subject: the report", returned)
        self.assertIn("\tby mail.example.edu", returned)
        self.assertNotIn(b"secret body", data)

    def test_returned_header_is_bounded(self) -> None:
        """Whoever asks for a notice chooses where it goes: what it carries
        back is at most RETURNED_HEADER_LIMIT octets of whole header lines,
        even from a message that is all header."""
        line = b"X-Filler: " + b"y" * 88 + b"\r\n"
        for message in (line * 20_000, line * 20_000 + b"\r\nbody\r\n",
                        b"Subject: one line\r\n" + b"z" * 60_000 + b"\r\n",
                        b"X-Long: " + b"z" * 60_000 + b"\r\n\r\nbody\r\n"):
            data, m = self.report(message=message)
            returned = m.get_payload()[2].get_payload().encode()
            self.assertLessEqual(len(returned), dsn.RETURNED_HEADER_LIMIT)
            self.assertLess(len(data), dsn.RETURNED_HEADER_LIMIT + 4096)
            self.assertNotIn(b"body", returned)
        _, m = self.report(message=b"Subject: s\r\nX-A: b\r\n")
        self.assertIn("X-A: b", m.get_payload()[2].get_payload())

    def test_international(self) -> None:
        data, m = self.report(sender="jürgen@bücher.de",
                              message="Subject: grüße\r\n\r\nbody\r\n".encode())
        parts = m.get_payload()
        self.assertEqual([p.get_content_type() for p in parts],
                         ["text/plain", "message/global-delivery-status",
                          "message/global-headers"])
        self.assertIn(b"Content-Transfer-Encoding: 8bit", data)


class SpoolRecordTests(SynchronousTestCase):
    """The spool keeps the parameters as an optional member of its envelope."""

    def spool(self) -> Spool:
        return Spool(self.mktemp(), run_in_thread=lambda f, *a, **kw: succeed(f(*a, **kw)),
                     clock=Clock())

    def test_without_parameters_the_envelope_is_unchanged(self) -> None:
        spool = self.spool()
        self.successResultOf(spool.enqueue("a@x.org", ["b@y.org"], b"m\r\n", "Q1"))
        self.assertEqual(spool.pending(), [{"version": 1, "id": "Q1", "sender": "a@x.org",
                                            "recipients": ["b@y.org"], "received": 0.0}])

    def test_parameters_kept(self) -> None:
        spool = self.spool()
        record = {"ret": "HDRS", "envid": "E", "recipients": {
            "b@y.org": {"notify": ["NEVER"], "orcpt": "rfc822;b+40y.org", "rcpt": "b@y.org"}}}
        self.successResultOf(spool.enqueue("a@x.org", ["b@y.org"], b"m\r\n", "Q2", dsn=record))
        [envelope] = spool.pending()
        self.assertEqual(envelope["version"], 1)  # old readers still understand it
        self.assertEqual(envelope["recipients"], ["b@y.org"])
        self.assertEqual(envelope["dsn"], record)
