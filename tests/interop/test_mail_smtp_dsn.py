"""
Delivery status notifications (RFC 3461, 3464) and the SMTP timeouts (RFC
5321 section 4.5.3.2) against the real gateway under twistd, with clients
written by others: Python's smtplib (which sends any MAIL and RCPT
parameter, one set per recipient) and msmtp (C{dsn_notify},
C{dsn_return}); a raw smtplib session for the timeouts.

What counts:
  - EHLO advertises DSN; C{NOTIFY=SUCCESS} for a local recipient puts a
    C{multipart/report} "delivered" notice, from C{<>}, in the sender's
    Maildir before the client hears 250, with the ENVID, the ORCPT and
    the original header but not the body;
  - for a recipient elsewhere, the spool's envelope keeps NOTIFY, ORCPT,
    RET and ENVID for the outbound queue;
  - a malformed parameter is refused (501 5.5.4) as the client sees it;
  - a client that stops in the middle of a message hears 421 4.4.2 after
    C{data_timeout_smtp} and nothing is stored; one that is slow but keeps
    sending is not cut off.

swaks 20201014 (Debian's) has no DSN options, so it is not used here.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import time
from pathlib import Path
from typing import Any

from tests.interop.clients import Run
from tests.interop.mailclients import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    OUTSIDE,
    STRANGER,
    MailGateway,
    mail_gateway,
    message,
    program,
    run,
    shared_mail_gateway,
    temporary_directory,
    token,
)
from tests.interop.test_mail_smtp import MailTestCase


def xtext(address: str) -> str:
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}" for c in address)


class DSNTestCase(MailTestCase):
    def notice(self, gw: MailGateway, account: str, mark: str) -> Any:
        """The one DSN in C{account}'s INBOX about the message marked C{mark}."""
        found = gw.inbox_with(account, mark)
        self.assertEqual(len(found), 1, f"{account}: {len(found)} messages with {mark}; "
                         f"everywhere: {gw.anywhere(mark)}\n{gw.log_tail()}")
        data = found[0]
        self.assertTrue(data.startswith(b"Return-Path: <>\r\n"), data[:200])
        self.assertNotIn(f"body of {mark}".encode(), data)  # the header only
        report = email.message_from_bytes(data, policy=email.policy.compat32)
        self.assertEqual(report.get_content_type(), "multipart/report")
        self.assertEqual(report.get_param("report-type"), "delivery-status")
        return report

    def status_groups(self, report: Any) -> list[Any]:
        text, status, headers = report.get_payload()
        self.assertEqual(status.get_content_type(), "message/delivery-status")
        self.assertEqual(headers.get_content_type(), "text/rfc822-headers")
        return status.get_payload()


class SmtplibDSNTests(DSNTestCase):
    """smtplib, one set of parameters per recipient."""

    def test_success_notice_and_spooled_parameters(self) -> None:
        """
        alice sends to bob (NOTIFY=SUCCESS) and to an outside address
        (NOTIFY=FAILURE,DELAY, ORCPT): when DATA returns, bob has the
        message, alice the "delivered" notice, and the spool's envelope
        keeps the outside recipient's parameters and the ENVID.
        """
        gw = shared_mail_gateway()
        mark = token()
        smtp = self.submission(gw)
        self.assertTrue(smtp.has_extn("dsn"), smtp.esmtp_features)
        self.assertEqual(smtp.mail(ALICE, ["RET=HDRS", f"ENVID={mark}"])[0], 250)
        code, text = smtp.rcpt(BOB, ["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;{xtext(BOB)}"])
        self.assertEqual(code, 250, text)
        code, text = smtp.rcpt(OUTSIDE, ["NOTIFY=FAILURE,DELAY",
                                         f"ORCPT=rfc822;{xtext(OUTSIDE)}"])
        self.assertEqual(code, 250, text)
        code, text = smtp.data(message(mark, sender=ALICE, to=BOB))
        self.assertEqual(code, 250, text)

        self.assertStoredOnce(gw, BOB, mark, ALICE)
        report = self.notice(gw, ALICE, mark)
        self.assertEqual(report["From"], "Mail Delivery System <MAILER-DAEMON@localhost>")
        per_message, bob = self.status_groups(report)
        self.assertEqual(per_message["Reporting-MTA"], "dns; localhost")
        self.assertEqual(per_message["Original-Envelope-Id"], mark)
        self.assertEqual((bob["Original-Recipient"], bob["Final-Recipient"], bob["Action"],
                          bob["Status"]),
                         (f"rfc822;{BOB}", f"rfc822; {BOB}", "delivered", "2.0.0"))
        self.assertIn(f"Subject: test {mark}", report.get_payload()[2].get_payload())

        [spooled] = gw.spooled_with(mark)
        self.assertEqual(spooled.envelope["recipients"], [OUTSIDE])
        self.assertEqual(spooled.envelope["dsn"], {
            "ret": "HDRS", "envid": mark, "recipients": {
                OUTSIDE: {"notify": ["FAILURE", "DELAY"], "orcpt": f"rfc822;{xtext(OUTSIDE)}",
                          "rcpt": OUTSIDE}}})

    def test_notice_for_an_outside_sender_is_spooled(self) -> None:
        """On the mx listener, a stranger asks for NOTIFY=SUCCESS: the notice
        waits in the spool, from <> to the stranger."""
        gw = shared_mail_gateway()
        mark = token()
        smtp = self.mx(gw)
        refused = smtp.sendmail(STRANGER, [BOB], message(mark), rcpt_options=["NOTIFY=SUCCESS"])
        self.assertEqual(refused, {})
        self.assertStoredOnce(gw, BOB, mark, STRANGER)
        [notice] = gw.spooled_with(mark)
        self.assertEqual((notice.envelope["sender"], notice.envelope["recipients"]),
                         ("", [STRANGER]))
        self.assertIn(b"Action: delivered", notice.data)
        self.assertNotIn(f"body of {mark}".encode(), notice.data)

    def test_null_sender_gets_no_notice(self) -> None:
        gw = shared_mail_gateway()
        mark = token()
        smtp = self.mx(gw)
        self.assertEqual(smtp.sendmail("<>", [BOB], message(mark),
                                       rcpt_options=["NOTIFY=SUCCESS"]), {})
        self.assertStoredOnce(gw, BOB, mark, "")
        self.assertEqual(gw.spooled_with(mark), [])

    def test_malformed_parameters_refused(self) -> None:
        gw = shared_mail_gateway()
        smtp = self.submission(gw)
        self.assertEqual(smtp.mail(ALICE, ["RET=BODY"]),
                         (501, b"5.5.4 malformed RET parameter"))
        self.assertEqual(smtp.mail(ALICE, ["ENVID=x+y"]),
                         (501, b"5.5.4 malformed ENVID parameter"))
        self.assertEqual(smtp.mail(ALICE)[0], 250)
        self.assertEqual(smtp.rcpt(BOB, ["NOTIFY=NEVER,SUCCESS"]),
                         (501, b"5.5.4 NOTIFY=NEVER cannot be combined with other values"))
        self.assertEqual(smtp.rcpt(BOB, [f"ORCPT={BOB}"]),
                         (501, b"5.5.4 malformed ORCPT parameter"))
        self.assertEqual(smtp.rcpt(BOB, ["NOTIFY=NEVER"])[0], 250)


class MsmtpDSNTests(DSNTestCase):
    """msmtp's C{dsn_notify} and C{dsn_return} (C{--dsn-notify}, C{--dsn-return})."""

    def msmtp(self, gw: MailGateway, directory: Path, recipients: list[str],
              data: bytes, *options: str) -> Run:
        lines = [
            "account gateway", "host 127.0.0.1", f"port {gw.port('submission')}",
            "domain msmtp.client.test", "tls on", "tls_starttls on", f"tls_trust_file {gw.ca}",
            "tls_host_override localhost", f"from {ALICE}", "timeout 20", "auth on",
            f"user {ALICE}", f"password {ALICE_PASSWORD}", "account default : gateway",
        ]
        config = directory / "msmtprc"
        config.write_text("\n".join(lines) + "\n")
        config.chmod(0o600)
        return run([program("msmtp"), "-C", str(config), "--debug", *options, "--",
                    *recipients], stdin=data)

    def test_notify_success(self) -> None:
        gw = shared_mail_gateway()
        mark = token()
        done = self.msmtp(gw, temporary_directory(self, "msmtp"), [BOB],
                          message(mark, sender=ALICE), "--dsn-notify=success,failure",
                          "--dsn-return=headers")
        self.assertEqual(done.status, 0, str(done))
        self.assertIn("NOTIFY=SUCCESS,FAILURE", done.output)  # msmtp --debug shows it sent them
        self.assertStoredOnce(gw, BOB, mark, ALICE)
        _, bob = self.status_groups(self.notice(gw, ALICE, mark))
        self.assertEqual((bob["Final-Recipient"], bob["Action"]), (f"rfc822; {BOB}", "delivered"))
        self.assertIsNone(bob["Original-Recipient"])  # msmtp sends no ORCPT

    def test_notify_never_outside(self) -> None:
        """NOTIFY=NEVER and RET=FULL for an outside address: kept in the spool."""
        gw = shared_mail_gateway()
        mark = token()
        done = self.msmtp(gw, temporary_directory(self, "msmtp"), [OUTSIDE],
                          message(mark, sender=ALICE, to=OUTSIDE), "--dsn-notify=never",
                          "--dsn-return=full")
        self.assertEqual(done.status, 0, str(done))
        [spooled] = gw.spooled_with(mark)
        self.assertEqual(spooled.envelope["dsn"], {"ret": "FULL", "envid": None, "recipients": {
            OUTSIDE: {"notify": ["NEVER"], "orcpt": None, "rcpt": OUTSIDE}}})
        self.assertEqual(gw.inbox_with(ALICE, mark), [])


class TimeoutTests(MailTestCase):
    """C{data_timeout_smtp} of a running gateway, with one second."""

    def gateway(self) -> MailGateway:
        return mail_gateway(self, extra="[limits]\ndata_timeout_smtp = 1.0\n")

    def start_data(self, gw: MailGateway) -> smtplib.SMTP:
        smtp = self.mx(gw)
        smtp.ehlo()
        self.assertEqual(smtp.mail(STRANGER)[0], 250)
        self.assertEqual(smtp.rcpt(BOB)[0], 250)
        smtp.putcmd("data")
        self.assertEqual(smtp.getreply()[0], 354)
        return smtp

    def test_half_a_message_then_silence(self) -> None:
        gw = self.gateway()
        mark = token()
        smtp = self.start_data(gw)
        smtp.send(message(mark)[:40])
        started = time.monotonic()
        code, text = smtp.getreply()
        waited = time.monotonic() - started
        self.assertEqual((code, text),
                         (421, b"4.4.2 localhost timeout waiting for data, closing connection"))
        self.assertGreater(waited, 0.8)
        self.assertLess(waited, 10)
        self.assertNowhere(gw, mark)

    def test_slow_sender_not_cut_off(self) -> None:
        """A line every 0.4 s for 2.5 s in all, with a 1 s data timeout: stored."""
        gw = self.gateway()
        mark = token()
        smtp = self.start_data(gw)
        for line in message(mark).split(b"\r\n")[:-1]:
            smtp.send(line + b"\r\n")
            time.sleep(0.4)
        smtp.send(b".\r\n")
        code, text = smtp.getreply()
        self.assertEqual(code, 250, text)
        self.assertStoredOnce(gw, BOB, mark, STRANGER)
