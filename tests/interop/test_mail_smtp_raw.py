"""
Raw-socket SMTP tests against the running gateway: the 2023 SMTP smuggling
probes (fake end-of-data markers must never split a message), and the
connection slots that every session must give back when it ends (a bug the
real clients found on the implicit-TLS listeners, fixed in
L{gateway.protocol.LineProtocol.disconnect}).  Split from
L{tests.interop.test_mail_smtp}, whose helpers it shares.
"""

from __future__ import annotations

import base64
import socket
import time

from tests.interop.mailclients import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    OUTSIDE,
    STRANGER,
    MailGateway,
    mail_gateway,
    shared_mail_gateway,
    swaks_run,
    token,
)
from tests.interop.test_mail_smtp import OUTSIDER, MailTestCase

# -- the SMTP smuggling probe (raw socket) -----------------------------------


class RawSMTP:
    """A client that sends exactly the bytes it is given."""

    def __init__(self, gw: MailGateway, listener: str, implicit_tls: bool = False) -> None:
        raw = socket.create_connection(("127.0.0.1", gw.port(listener)), timeout=10)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = (gw.context().wrap_socket(raw, server_hostname="localhost")
                     if implicit_tls else raw)
        self.file = self.sock.makefile("rb")

    def reply(self) -> bytes:
        """One whole (possibly multi-line) reply."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise AssertionError(f"connection closed; so far {lines}")
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def command(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def rest(self) -> list[bytes]:
        """Every line until the server closes the connection."""
        return self.file.read().splitlines()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


#: The line-end forms that some servers took for the end of DATA (SEC
#: Consult, December 2023): only CRLF.CRLF may end a message.
SMUGGLING_ENDS = (b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\n.\r", b"\r\n.\r")


class SmugglingTests(MailTestCase):
    """
    A message whose body holds a false end of data followed by a second
    transaction: a server that ended the first message there would deliver
    the second as if its client had sent it (spoofing its sender, or
    relaying).  The gateway must see one message, refuse it (bare CR/LF,
    550 5.6.0) and give exactly one reply for it, then answer QUIT.
    """

    def probe(self, gw: MailGateway, listener: str, *, implicit_tls: bool, auth: bool,
              sender: str, smuggled_sender: str, smuggled_to: str, end: bytes | None,
              split: bool = False) -> tuple[str, str, list[bytes]]:
        first, smuggled = token(), token()
        client = RawSMTP(gw, listener, implicit_tls)
        self.addCleanup(client.close)
        self.assertTrue(client.reply().startswith(b"220 "))
        self.assertTrue(client.command(b"EHLO probe.client.test").startswith(b"250"))
        if auth:
            plain = base64.b64encode(f"\0{ALICE}\0{ALICE_PASSWORD}".encode())
            self.assertTrue(client.command(b"AUTH PLAIN " + plain).startswith(b"235"))
        self.assertTrue(client.command(f"MAIL FROM:<{sender}>".encode()).startswith(b"250"))
        self.assertTrue(client.command(f"RCPT TO:<{BOB}>".encode()).startswith(b"250"))
        self.assertTrue(client.command(b"DATA").startswith(b"354"))
        head = f"Subject: first {first}\r\n\r\nfirst {first}".encode()
        second = (f"MAIL FROM:<{smuggled_sender}>\r\nRCPT TO:<{smuggled_to}>\r\nDATA\r\n"
                  f"From: <{smuggled_sender}>\r\nSubject: smuggled {smuggled}\r\n\r\n"
                  f"smuggled {smuggled}\r\n").encode()
        pieces = [head + b"\r\n", second] if end is None else [head, end, second]
        pieces.append(b".\r\nQUIT\r\n")
        if split:  # the false end in a TCP segment of its own, as separate reads
            for piece in pieces:
                client.sock.sendall(piece)
                time.sleep(0.05)
        else:
            client.sock.sendall(b"".join(pieces))
        return first, smuggled, client.rest()

    def test_control_a_clean_message_is_delivered(self) -> None:
        """The probe's own harness, with CRLF only: one message, 250, then 221."""
        gw = shared_mail_gateway()
        first, _, replies = self.probe(gw, "smtp", implicit_tls=False, auth=False,
                                       sender=STRANGER, smuggled_sender=ALICE,
                                       smuggled_to=ALICE, end=None)
        self.assertEqual([r[:3] for r in replies], [b"250", b"221"], replies)
        self.assertStoredOnce(gw, BOB, first, STRANGER)

    def check_refused(self, gw: MailGateway, first: str, smuggled: str, replies: list[bytes],
                      end: bytes) -> None:
        self.assertEqual(len(replies), 2, f"{end!r}: {replies}")
        self.assertTrue(replies[0].startswith(b"550 5.6.0 "), f"{end!r}: {replies}")
        self.assertTrue(replies[1].startswith(b"221 "), f"{end!r}: {replies}")
        self.assertEqual(gw.anywhere(smuggled), [], f"{end!r}: the smuggled message was stored")
        self.assertEqual(gw.anywhere(first), [], f"{end!r}: a message with bare CR/LF was stored")

    def test_mx_smuggling_a_spoofed_local_message(self) -> None:
        """
        On the mx listener, unauthenticated, a second message "from"
        alice to alice hidden behind each false end: never delivered.
        """
        gw = shared_mail_gateway()
        for end in SMUGGLING_ENDS:
            first, smuggled, replies = self.probe(
                gw, "smtp", implicit_tls=False, auth=False, sender=STRANGER,
                smuggled_sender=ALICE, smuggled_to=ALICE, end=end)
            self.check_refused(gw, first, smuggled, replies, end)

    def test_mx_smuggling_split_across_reads(self) -> None:
        """The same with the false end arriving in separate TCP segments."""
        gw = shared_mail_gateway()
        for end in (b"\n.\n", b"\r.\r", b"\r\n.\n"):
            first, smuggled, replies = self.probe(
                gw, "smtp", implicit_tls=False, auth=False, sender=STRANGER,
                smuggled_sender=ALICE, smuggled_to=ALICE, end=end, split=True)
            self.check_refused(gw, first, smuggled, replies, end)

    def test_smtps_smuggling_a_relayed_message(self) -> None:
        """
        On smtps, authenticated as alice: a second message to an outside
        address behind each false end never reaches the spool.
        """
        gw = shared_mail_gateway(trusted=OUTSIDER)
        spool_before = gw.spool_files()
        for end in SMUGGLING_ENDS:
            first, smuggled, replies = self.probe(
                gw, "smtps", implicit_tls=True, auth=True, sender=ALICE,
                smuggled_sender=ALICE, smuggled_to=OUTSIDE, end=end)
            self.check_refused(gw, first, smuggled, replies, end)
        self.assertEqual(gw.spool_files(), spool_before, "the spool changed")


# -- msmtp -------------------------------------------------------------------


# -- a gateway bug seen by a real client -------------------------------------


class ConnectionSlotTests(MailTestCase):
    """
    Every connection gives its slot back when it ends: the per-address
    limit (C{max_connections_per_address}, 3 here, for an untrusted
    127.0.0.1) counts open connections, not past ones.  swaks, given a
    wrong password and C{--auth} without a type, tries CRAM-MD5, LOGIN and
    PLAIN in turn, and the gateway closes the connection after the third
    failure (421 4.7.0); three such sessions, then one with the right
    password.
    """

    def failures(self, listener: str, tls: str) -> None:
        gw = mail_gateway(self, trusted=OUTSIDER,
                          extra=("[auth.throttle]\nfree_failures = 100\n"
                                 "[limits]\nmax_connections_per_address = 3\n"))
        for _ in range(3):
            mark = token()
            done = swaks_run(gw, listener, tls=tls, sender=ALICE, to=[BOB], mark=mark, auth="*",
                             password="not-her-password")
            self.assertEqual(done.status, 28, str(done))
            self.assertIn("421 4.7.0 localhost too many authentication failures", done.output)
            self.assertNowhere(gw, mark)
        mark = token()
        done = swaks_run(gw, listener, tls=tls, sender=ALICE, to=[BOB], mark=mark, auth="PLAIN")
        self.assertEqual(done.status, 0, str(done))
        self.assertStoredOnce(gw, BOB, mark, ALICE)

    def test_submission_auth_failure_disconnects_release_their_connection(self) -> None:
        self.failures("submission", "starttls")

    def test_smtps_auth_failure_disconnects_release_their_connection(self) -> None:
        self.failures("smtps", "implicit")


