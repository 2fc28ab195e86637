"""
End to end through the whole gateway: a message sent with smtplib to the
running plugin is in the Maildir before 250, and is then read and managed
with imaplib and poplib over TLS, against the real Maildir store.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import ssl

from twisted.trial.unittest import SynchronousTestCase

from tests.gatewayprocess import GatewayProcess

MESSAGE = (b"From: Carol <carol@else.example>\r\nTo: bob@example.test\r\n"
           b"Subject: end to end\r\nMessage-ID: <e2e@else.example>\r\n\r\n"
           b"first line\r\n.dotted line\r\nlast line\r\n")


class WholeGatewayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gw = GatewayProcess()
        self.addCleanup(self.gw.stop)
        self.gw.start()
        self.ctx = ssl.create_default_context(cafile=str(self.gw.certs.ca_certificate))

    def send(self) -> None:
        with smtplib.SMTP("127.0.0.1", self.gw.ports["smtp"], local_hostname="c.example",
                          timeout=20) as s:
            s.starttls(context=self.ctx)
            refused = s.sendmail("carol@else.example", ["bob@example.test"], MESSAGE)
            self.assertEqual(refused, {})
        inbox = self.gw.dir / "state" / "mail" / "example.test" / "bob"
        files = list(inbox.glob("new/*")) + list(inbox.glob("cur/*"))
        self.assertEqual(len(files), 1, "on disk before the client heard 250")

    def test_smtp_then_imap(self) -> None:
        self.send()
        c = imaplib.IMAP4("127.0.0.1", self.gw.ports["imap"], timeout=20)
        c.starttls(ssl_context=self.ctx)
        c.login("bob@example.test", "bob-password-2")
        typ, data = c.select("INBOX")
        self.assertEqual((typ, data), ("OK", [b"1"]))
        typ, data = c.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)] RFC822.SIZE)")
        self.assertEqual(typ, "OK")
        self.assertIn(b"Subject: end to end", data[0][1])
        typ, data = c.uid("FETCH", "1:*", "(BODY[TEXT])")
        self.assertIn(b".dotted line", data[0][1])
        typ, data = c.fetch("1", "(FLAGS)")
        self.assertIn(b"\\Seen", data[0])
        self.assertEqual(c.search(None, "SUBJECT", '"end to end"'), ("OK", [b"1"]))
        self.assertEqual(c.create("Archive/2026")[0], "OK")
        typ, data = c.uid("MOVE", "1", "Archive/2026")
        self.assertEqual(typ, "OK")
        self.assertEqual(c.status("Archive/2026", "(MESSAGES)")[1],
                         [b'"Archive/2026" (MESSAGES 1)'])
        self.assertEqual(c.select("INBOX"), ("OK", [b"0"]))
        c.logout()

    def test_smtp_then_pop3(self) -> None:
        self.send()
        p = poplib.POP3_SSL("127.0.0.1", self.gw.ports["pop3s"], context=self.ctx, timeout=20)
        p.user("bob@example.test")
        p.pass_("bob-password-2")
        count, size = p.stat()
        self.assertEqual(count, 1)
        _, lines, octets = p.retr(1)
        body = b"\r\n".join(lines) + b"\r\n"
        self.assertTrue(body.endswith(MESSAGE), body)
        self.assertEqual(octets, size)
        uid_before = p.uidl(1)
        p.dele(1)
        p.quit()
        p = poplib.POP3_SSL("127.0.0.1", self.gw.ports["pop3s"], context=self.ctx, timeout=20)
        p.user("bob@example.test")
        p.pass_("bob-password-2")
        self.assertEqual(p.stat()[0], 0)
        p.quit()
        self.assertTrue(uid_before.startswith(b"+OK 1 "))
