"""
Mail submission and reception against the real gateway under twistd, with
clients written by others: swaks, msmtp, curl and Python's smtplib, plus a
raw socket for the 2023 SMTP smuggling probe.

What counts:
  - mail for a local account is in its Maildir when the client's command
    returns, that is before the client heard 250 (no sleep, no polling),
    with C{Return-Path:} and a C{Received:} header naming the protocol
    (RFC 3848: ESMTPS after TLS, ESMTPSA when authenticated);
  - mail for an address elsewhere is relayed only for authenticated clients
    or trusted networks, and is then waiting in the outbound spool
    (C{state/spool/new/ID.json} listing the recipients, C{ID.eml});
  - every refusal (relay, AUTH before TLS, MAIL before AUTH, a sender the
    account does not own, an oversized message, a smuggled message) is seen
    by a real client, and nothing refused is stored anywhere.

The tests share one gateway per configuration (the default, 127.0.0.1 as
an outsider, a 4 KiB size limit, an empty aliases file) and mark their
messages with a unique token, which is what is looked for in the Maildirs
and the spool; the connection-slot tests, which exhaust a limit, start
their own.

Gateway bugs these tests found (now fixed; the tests are their regression tests):
L{ConnectionSlotTests.test_smtps_auth_failure_disconnects_release_their_connection}
and L{CurlTests.test_mail_from_auth_parameter}.

What these clients cannot do, and is therefore not tested with them:
  - swaks 20201014 checks the certificate chain (C{--tls-verify}), not the
    host name, and never sends a mechanism the server did not advertise,
    so AUTH PLAIN before STARTTLS is refused on its side ("not available");
    smtplib, which sends what it is told, shows the server's 538;
  - swaks and msmtp do not send C{SIZE=}; curl does, so curl meets the
    size limit at MAIL FROM and swaks after the data;
  - smtplib turns bare CR and LF into CRLF, so the smuggling probe is a raw
    socket.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Sequence
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.interop.clients import Run
from tests.interop.mailclients import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    BOB_PASSWORD,
    OUTSIDE,
    STRANGER,
    MailGateway,
    curl_run,
    first_received,
    message,
    msmtp_run,
    other_ca,
    queue_id,
    shared_mail_gateway,
    swaks_run,
    temporary_directory,
    token,
)

#: A relay policy where 127.0.0.1 is an outsider.
OUTSIDER = "[]"


class MailTestCase(SynchronousTestCase):
    """Checks shared by every client's tests."""

    def submission(self, gw: MailGateway) -> smtplib.SMTP:
        """smtplib on the submission listener: STARTTLS, logged in as alice."""
        smtp = self.mx(gw, "submission")
        smtp.login(ALICE, ALICE_PASSWORD)
        return smtp

    def mx(self, gw: MailGateway, listener: str = "smtp") -> smtplib.SMTP:
        """smtplib on C{listener}, after STARTTLS (checked against the test CA)."""
        smtp = smtplib.SMTP("localhost", gw.port(listener), local_hostname="smtplib.test",
                            timeout=20)
        self.addCleanup(smtp.close)
        smtp.starttls(context=gw.context())
        return smtp

    def assertStoredOnce(self, gw: MailGateway, account: str,
                         mark: str, sender: str) -> bytes:
        """
        Exactly one message carrying C{mark} is in C{account}'s INBOX, in
        C{new/}, with the Return-Path of C{sender}; returns it.
        """
        found = gw.inbox_with(account, mark)
        self.assertEqual(len(found), 1,
                         f"{account} holds {len(found)} copies of {mark}; everywhere: "
                         f"{gw.anywhere(mark)}\n{gw.log_tail()}")
        news = [p for p in (gw.maildir(account) / "new").iterdir() if mark.encode() in p.read_bytes()]
        self.assertEqual(len(news), 1, "the new message is not in new/")
        data = found[0]
        self.assertTrue(data.startswith(f"Return-Path: <{sender}>\r\n".encode()), data[:200])
        return data

    def assertSpooledOnce(self, gw: MailGateway, mark: str,
                          recipients: list[str], sender: str) -> bytes:
        """Exactly one spooled message carries C{mark}, for C{recipients}."""
        found = gw.spooled_with(mark)
        self.assertEqual(len(found), 1, f"spool: {gw.spooled()}\n{gw.log_tail()}")
        self.assertEqual(sorted(r.lower() for r in found[0].envelope["recipients"]),
                         sorted(r.lower() for r in recipients))
        self.assertEqual(found[0].envelope["sender"], sender)
        self.assertFalse(found[0].data.startswith(b"Return-Path:"),
                         "Return-Path belongs to final delivery, not to the relay spool")
        return found[0].data

    def assertNowhere(self, gw: MailGateway, mark: str) -> None:
        self.assertEqual(gw.anywhere(mark), [], f"{mark} was stored")

    def assertReceived(self, data: bytes, protocol: str,
                       queue: str | None = None, helo: str | None = None) -> str:
        """
        The topmost Received header is ours, says C{with PROTOCOL} (exactly:
        ESMTPS is not ESMTPSA) and, when TLS was used, names its version.
        """
        received = first_received(data)
        self.assertIn("by localhost (mailgateway)", received)
        self.assertIn(f" with {protocol} ", received + " ")
        if "S" in protocol.replace("SMTP", ""):
            self.assertRegex(received, rf"with {protocol} \(TLSv1\.[23] ")
        if queue is not None:
            self.assertIn(f"id {queue}", received)
        if helo is not None:
            self.assertTrue(received.startswith(f"from {helo} ([127.0.0.1])"), received)
        return received

    def assertLoggedIn(self, gw: MailGateway, offset: int,
                       listener: str, mechanism: str, account: str = ALICE) -> None:
        line = f"{listener}: 127.0.0.1 logged in as {account} ({mechanism})"
        self.assertIn(line, gw.wait_for_log(offset, line))


# -- swaks -------------------------------------------------------------------


class SwaksTests(MailTestCase):
    """swaks: the mx listener, both submission listeners, every refusal."""

    def test_mx_starttls_local_recipient_without_auth(self) -> None:
        """
        Anyone may send to a local account on the mx listener: after
        STARTTLS and without AUTH, the message is in bob's Maildir when
        swaks has its 250, with Return-Path and C{Received: ... with
        ESMTPS (TLSv1.x ...) id QUEUE-ID for <bob@example.test>}.
        """
        gw = shared_mail_gateway()
        mark = token()
        done = swaks_run(gw, "smtp", tls="starttls", sender=STRANGER, to=[BOB], mark=mark)
        self.assertEqual(done.status, 0, str(done))
        self.assertIn("STARTTLS", done.output)
        qid = queue_id(done)
        data = self.assertStoredOnce(gw, BOB, mark, STRANGER)
        received = self.assertReceived(data, "ESMTPS", qid, helo="swaks.client.test")
        self.assertIn(f"for <{BOB}>", received)
        self.assertEqual(gw.spooled_with(mark), [], "a local recipient's mail went to the relay spool")

    def test_mx_plain_text_local_recipient(self) -> None:
        """Without TLS (a legacy MTA): delivered, C{with ESMTP}, no TLS claimed."""
        gw = shared_mail_gateway()
        mark = token()
        done = swaks_run(gw, "smtp", tls="none", sender=STRANGER, to=[BOB], mark=mark)
        self.assertEqual(done.status, 0, str(done))
        data = self.assertStoredOnce(gw, BOB, mark, STRANGER)
        received = self.assertReceived(data, "ESMTP", queue_id(done))
        self.assertNotIn("TLS", received)

    def test_pipelining(self) -> None:
        """
        C{--pipeline}: MAIL, three RCPTs and DATA go in one write; the
        replies come back in order, the refused recipient's 550 in its
        place, and the message reaches the two accepted accounts once each.
        """
        gw = shared_mail_gateway()
        mark = token()
        nobody = "nobody-here@example.test"
        done = swaks_run(gw, "smtp", tls="starttls", sender=STRANGER, to=[BOB, nobody, ALICE],
                         mark=mark, options=["--pipeline"])
        self.assertEqual(done.status, 0, str(done))
        self.assertIn("<~  250-PIPELINING", done.output)
        lines = done.output.splitlines()
        mail = next(i for i, line in enumerate(lines) if line.startswith(" ~> MAIL FROM:"))
        first_reply = next(i for i in range(mail, len(lines)) if lines[i].startswith("<~"))
        sent = [line[4:].split(":")[0].split()[0] for line in lines[mail:first_reply]
                if line.startswith(" ~> ")]
        self.assertEqual(sent, ["MAIL", "RCPT", "RCPT", "RCPT", "DATA"],
                         "swaks did not pipeline:\n" + str(done))
        codes = [line[4:7] for line in lines[first_reply:] if line.startswith("<~")][:5]
        self.assertEqual(codes, ["250", "250", "550", "250", "354"], str(done))
        self.assertIn(f"RCPT TO:<{nobody}>", done.output)
        self.assertStoredOnce(gw, BOB, mark, STRANGER)
        self.assertStoredOnce(gw, ALICE, mark, STRANGER)
        self.assertEqual(set(gw.mailboxes_with(mark)), {f"{BOB}/new", f"{ALICE}/new"})

    def test_relay_from_trusted_network_without_auth(self) -> None:
        """127.0.0.1 in trusted_networks (the default here): relayed, in the spool."""
        gw = shared_mail_gateway()
        mark = token()
        done = swaks_run(gw, "smtp", tls="starttls", sender=STRANGER, to=[OUTSIDE], mark=mark)
        self.assertEqual(done.status, 0, str(done))
        self.assertIn("recipient OK (relay)", done.output)
        data = self.assertSpooledOnce(gw, mark, [OUTSIDE], STRANGER)
        self.assertReceived(data, "ESMTPS", queue_id(done))
        self.assertEqual(gw.mailboxes_with(mark), {})

    def test_relay_refused_to_an_outsider_without_auth(self) -> None:
        """
        From an outsider, unauthenticated, with or without TLS: 554 5.7.1 at
        RCPT, swaks gives up (exit 24: no recipient accepted), and nothing
        reaches the spool.
        """
        gw = shared_mail_gateway(trusted=OUTSIDER)
        spool_before = gw.spool_files()
        for tls in ("starttls", "none"):
            mark = token()
            done = swaks_run(gw, "smtp", tls=tls, sender=STRANGER, to=[OUTSIDE], mark=mark)
            self.assertEqual(done.status, 24, str(done))
            self.assertIn("554 5.7.1 relay access denied", done.output)
            self.assertNotIn(" ~> DATA", done.output)
            self.assertNowhere(gw, mark)
        self.assertEqual(gw.spool_files(), spool_before, "the spool changed")

    def test_relay_refused_local_part_still_delivered(self) -> None:
        """
        An outsider's message for bob and for an outside address: the
        outside address is refused (554), bob still gets his copy, and the
        spool stays empty.
        """
        gw = shared_mail_gateway(trusted=OUTSIDER)
        spool_before = gw.spool_files()
        mark = token()
        done = swaks_run(gw, "smtp", tls="starttls", sender=STRANGER, to=[OUTSIDE, BOB], mark=mark)
        self.assertEqual(done.status, 0, str(done))
        self.assertIn("554 5.7.1 relay access denied", done.output)
        self.assertStoredOnce(gw, BOB, mark, STRANGER)
        self.assertEqual(gw.spool_files(), spool_before, "the spool changed")

    def test_relay_for_an_authenticated_outsider_on_mx(self) -> None:
        """The same outsider after STARTTLS and AUTH PLAIN: relayed, C{with ESMTPSA}."""
        gw = shared_mail_gateway(trusted=OUTSIDER)
        mark = token()
        offset = gw.log_offset()
        done = swaks_run(gw, "smtp", tls="starttls", sender=ALICE, to=[OUTSIDE], mark=mark,
                         auth="PLAIN")
        self.assertEqual(done.status, 0, str(done))
        data = self.assertSpooledOnce(gw, mark, [OUTSIDE], ALICE)
        self.assertReceived(data, "ESMTPSA", queue_id(done))
        self.assertLoggedIn(gw, offset, "smtp", "PLAIN")

    def test_auth_before_starttls_on_submission(self) -> None:
        """
        Before STARTTLS the submission listener does not offer PLAIN or
        LOGIN, so swaks, asked for either, does not send its password (exit
        28); no one logged in.  (smtplib, which sends them anyway, gets 538:
        L{SmtplibTests.test_auth_before_starttls_538}.)
        """
        gw = shared_mail_gateway()
        offset = gw.log_offset()
        for mechanism in ("PLAIN", "LOGIN"):
            mark = token()
            done = swaks_run(gw, "submission", tls="none", sender=ALICE, to=[BOB], mark=mark,
                             auth=mechanism)
            self.assertEqual(done.status, 28, str(done))
            auth_line = next(line for line in done.output.splitlines() if "250 AUTH" in line)
            self.assertNotIn(" PLAIN", auth_line)
            self.assertNotIn(" LOGIN", auth_line)
            self.assertNotIn(ALICE_PASSWORD, done.output)
            self.assertNotIn(" -> AUTH", done.output)
            self.assertNowhere(gw, mark)
        self.assertNotIn("logged in", gw.log_since(offset))

    def test_mail_before_auth_on_submission(self) -> None:
        """MAIL before AUTH on submission and on smtps: 530 5.7.0 (swaks exit 23)."""
        gw = shared_mail_gateway()
        for listener, tls in (("submission", "starttls"), ("smtps", "implicit")):
            mark = token()
            done = swaks_run(gw, listener, tls=tls, sender=ALICE, to=[BOB], mark=mark)
            self.assertEqual(done.status, 23, str(done))
            self.assertIn("530 5.7.0 authentication required", done.output)
            self.assertNowhere(gw, mark)

    def test_sender_not_owned(self) -> None:
        """alice, authenticated, sending as bob: 553 5.7.1 (swaks exit 23)."""
        gw = shared_mail_gateway()
        mark = token()
        done = swaks_run(gw, "submission", tls="starttls", sender=BOB, to=[OUTSIDE], mark=mark,
                         auth="PLAIN")
        self.assertEqual(done.status, 23, str(done))
        self.assertIn("235 2.7.0", done.output)
        self.assertIn("553 5.7.1 sender address rejected: not owned by alice@example.test",
                      done.output)
        self.assertNowhere(gw, mark)

    def test_oversized_message(self) -> None:
        """
        With C{max_message_size = 4096}: EHLO says C{SIZE 4096}; an 8 KiB
        message is read to its end and refused with 552 5.3.4 (swaks exit
        26), stored nowhere; a 1 KiB one on the same gateway is delivered.
        """
        gw = shared_mail_gateway(extra="[limits]\nmax_message_size = 4096\n")
        spool_before = gw.spool_files()
        big, small = token(), token()
        done = swaks_run(gw, "smtp", tls="starttls", sender=STRANGER, to=[BOB, OUTSIDE], mark=big,
                         body=("x" * 70 + "\n") * 115)
        self.assertIn("250-SIZE 4096", done.output)
        self.assertEqual(done.status, 26, str(done))
        self.assertIn("552 5.3.4 message exceeds the size limit", done.output)
        self.assertNowhere(gw, big)
        self.assertEqual(gw.spool_files(), spool_before, "the spool changed")
        done = swaks_run(gw, "smtp", tls="starttls", sender=STRANGER, to=[BOB], mark=small,
                         body=("y" * 70 + "\n") * 14)
        self.assertEqual(done.status, 0, str(done))
        self.assertStoredOnce(gw, BOB, small, STRANGER)


def _swaks_auth_case(listener: str, tls: str, mechanism: str) -> Callable[[SwaksTests], None]:
    def test(self: SwaksTests) -> None:
        gw = shared_mail_gateway()
        mark = token()
        offset = gw.log_offset()
        done = swaks_run(gw, listener, tls=tls, sender=ALICE, to=[OUTSIDE, BOB], mark=mark,
                         auth=mechanism)
        self.assertEqual(done.status, 0, str(done))
        self.assertIn(f"AUTH {mechanism}", done.output)
        self.assertIn("235 2.7.0 authentication successful", done.output)
        qid = queue_id(done)
        stored = self.assertStoredOnce(gw, BOB, mark, ALICE)
        self.assertReceived(stored, "ESMTPSA", qid)
        spooled = self.assertSpooledOnce(gw, mark, [OUTSIDE], ALICE)
        self.assertReceived(spooled, "ESMTPSA", qid)
        self.assertLoggedIn(gw, offset, listener, mechanism)

    test.__name__ = f"test_{listener}_{mechanism.lower().replace('-', '_')}_relay_and_local"
    test.__doc__ = (f"swaks on {listener} ({tls} TLS), AUTH {mechanism} as alice, to an "
                    "outside address and to bob: 250; bob's copy in his Maildir, the outside "
                    "recipient's in the spool, both C{with ESMTPSA}.")
    return test


for _listener, _tls in (("submission", "starttls"), ("smtps", "implicit")):
    for _mechanism in ("PLAIN", "LOGIN", "CRAM-MD5"):
        _case = _swaks_auth_case(_listener, _tls, _mechanism)
        setattr(SwaksTests, _case.__name__, _case)


class MsmtpTests(MailTestCase):
    """msmtp (GnuTLS, GNU SASL) on submission (STARTTLS) and smtps."""

    def send(self, listener: str, recipients: list[str], auth: str = "on",
             ca: Path | None = None) -> tuple[MailGateway, str, int, Run]:
        """msmtp sends a new message from alice; returns it all and the log offset."""
        gw = shared_mail_gateway()
        mark = token()
        directory = temporary_directory(self, "msmtp")
        offset = gw.log_offset()
        done = msmtp_run(gw, directory, listener, recipients,
                         message(mark, sender=ALICE, to=", ".join(recipients)), auth=auth, ca=ca)
        return gw, mark, offset, done

    def check_sent(self, listener: str, recipients: list[str], auth: str = "on",
                   mechanism: str = "PLAIN") -> None:
        gw, mark, offset, done = self.send(listener, recipients, auth)
        self.assertEqual(done.status, 0, str(done))
        qid = queue_id(done)
        local = [r for r in recipients if r.endswith("@example.test")]
        for account in local:
            self.assertReceived(self.assertStoredOnce(gw, account, mark, ALICE), "ESMTPSA", qid)
        remote = [r for r in recipients if r not in local]
        if remote:
            self.assertReceived(self.assertSpooledOnce(gw, mark, remote, ALICE), "ESMTPSA", qid)
        else:
            self.assertEqual(gw.spooled_with(mark), [])
        self.assertLoggedIn(gw, offset, listener, mechanism)

    def test_submission_local_recipient(self) -> None:
        """STARTTLS, C{auth on} (msmtp picks PLAIN under TLS), to bob: in his Maildir."""
        self.check_sent("submission", [BOB])

    def test_submission_external_recipient(self) -> None:
        """STARTTLS, to an outside address: in the spool, no Maildir touched."""
        self.check_sent("submission", [OUTSIDE])

    def test_smtps_local_recipient(self) -> None:
        """Implicit TLS, to bob: in his Maildir."""
        self.check_sent("smtps", [BOB])

    def test_smtps_external_recipient(self) -> None:
        """Implicit TLS, to an outside address: in the spool."""
        self.check_sent("smtps", [OUTSIDE])

    def test_smtps_scram_sha_256_both(self) -> None:
        """C{auth scram-sha-256}, one transaction for bob and an outside address."""
        self.check_sent("smtps", [BOB, OUTSIDE], auth="scram-sha-256", mechanism="SCRAM-SHA-256")

    def test_submission_without_auth_refused(self) -> None:
        """C{auth off} on submission: msmtp reports the server's 530 5.7.0."""
        gw, mark, _, done = self.send("submission", [OUTSIDE], auth="off")
        self.assertNotEqual(done.status, 0, str(done))
        self.assertIn("530 5.7.0", done.output)
        self.assertNowhere(gw, mark)

    def test_wrong_ca_refused_by_msmtp(self) -> None:
        """Checked against another CA the gateway's certificate fails: nothing sent."""
        gw, mark, _, done = self.send("smtps", [BOB], ca=other_ca())
        self.assertNotEqual(done.status, 0, str(done))
        self.assertNotIn("235 ", done.output)
        self.assertNowhere(gw, mark)


# -- curl --------------------------------------------------------------------


class CurlTests(MailTestCase):
    """
    curl (OpenSSL): C{smtp://} with C{--ssl-reqd} (STARTTLS required) and
    C{smtps://}, its host name check for C{localhost} (C{--connect-to}
    127.0.0.1), C{--login-options AUTH=...} to choose a mechanism (without
    it curl picks DIGEST-MD5 here, the strongest it knows that is offered).
    """

    def upload(self, gw: MailGateway, scheme: str, listener: str, recipients: list[str],
               mark: str, options: Sequence[str] = (), user: str | None = ALICE,
               sender: str = ALICE, data: bytes | None = None) -> Run:
        directory = temporary_directory(self, "curl")
        upload = directory / "message.eml"
        upload.write_bytes(data if data is not None else message(mark, sender=sender))
        args = ["--mail-from", sender, "--upload-file", str(upload)]
        for rcpt in recipients:
            args += ["--mail-rcpt", rcpt]
        if scheme == "smtp":
            args.append("--ssl-reqd")
        return curl_run(gw, scheme, listener, options=args + list(options), user=user)

    def check(self, scheme: str, listener: str, login: str | None, mechanism: str) -> None:
        gw = shared_mail_gateway()
        mark = token()
        offset = gw.log_offset()
        options = ["--login-options", f"AUTH={login}"] if login else []
        done = self.upload(gw, scheme, listener, [BOB, OUTSIDE], mark, options)
        self.assertEqual(done.status, 0, str(done))
        self.assertIn(f"> AUTH {mechanism}", done.output)
        qid = queue_id(done)
        self.assertReceived(self.assertStoredOnce(gw, BOB, mark, ALICE), "ESMTPSA", qid)
        self.assertReceived(self.assertSpooledOnce(gw, mark, [OUTSIDE], ALICE), "ESMTPSA", qid)
        self.assertLoggedIn(gw, offset, listener, mechanism)

    def test_submission_ssl_reqd_default_mechanism(self) -> None:
        """C{smtp:// --ssl-reqd}, curl's own choice (DIGEST-MD5 for alice)."""
        self.check("smtp", "submission", None, "DIGEST-MD5")

    def test_submission_ssl_reqd_plain(self) -> None:
        self.check("smtp", "submission", "PLAIN", "PLAIN")

    def test_submission_ssl_reqd_cram_md5(self) -> None:
        self.check("smtp", "submission", "CRAM-MD5", "CRAM-MD5")

    def test_smtps_plain(self) -> None:
        self.check("smtps", "smtps", "PLAIN", "PLAIN")

    def test_smtps_login(self) -> None:
        self.check("smtps", "smtps", "LOGIN", "LOGIN")

    def test_smtps_default_mechanism(self) -> None:
        self.check("smtps", "smtps", None, "DIGEST-MD5")

    def test_without_user_refused(self) -> None:
        """No C{--user} on submission: curl exits 55 with the server's 530."""
        gw = shared_mail_gateway()
        mark = token()
        done = self.upload(gw, "smtp", "submission", [BOB], mark, user=None)
        self.assertEqual(done.status, 55, str(done))
        self.assertIn("530", done.stderr)
        self.assertNowhere(gw, mark)

    def test_relay_refused_to_an_outsider(self) -> None:
        """An outsider on mx without AUTH: curl exits 55 on the 554 5.7.1; spool empty."""
        gw = shared_mail_gateway(trusted=OUTSIDER)
        spool_before = gw.spool_files()
        mark = token()
        done = self.upload(gw, "smtp", "smtp", [OUTSIDE], mark, user=None, sender=STRANGER)
        self.assertEqual(done.status, 55, str(done))
        self.assertIn("554 5.7.1 relay access denied", done.output)
        self.assertNowhere(gw, mark)
        self.assertEqual(gw.spool_files(), spool_before, "the spool changed")

    def test_declared_size_over_the_limit(self) -> None:
        """curl declares C{SIZE=}: over the limit it meets 552 5.3.4 at MAIL FROM."""
        gw = shared_mail_gateway(extra="[limits]\nmax_message_size = 4096\n")
        mark = token()
        data = message(mark, sender=ALICE, body=("z" * 70 + "\r\n") * 115)
        done = self.upload(gw, "smtps", "smtps", [BOB], mark, ["--login-options", "AUTH=PLAIN"],
                           data=data)
        self.assertEqual(done.status, 55, str(done))
        self.assertRegex(done.output, r"> MAIL FROM:<alice@example.test> SIZE=\d+")
        self.assertIn("552 5.3.4", done.output)
        self.assertNowhere(gw, mark)

    def test_mail_from_auth_parameter(self) -> None:
        """
        C{--mail-auth}: after AUTH, curl adds RFC 4954 section 5's C{AUTH=}
        parameter to MAIL FROM, which a server advertising AUTH must take
        (section 3, item 5): C{AUTH=<alice@example.test>} on smtps, and
        C{AUTH=<>} ("submitter unknown", as relaying MTAs send it) on
        submission.  Both messages are delivered.
        """
        gw = shared_mail_gateway()
        for scheme, listener, identity in (("smtps", "smtps", ALICE), ("smtp", "submission", "")):
            mark = token()
            done = self.upload(gw, scheme, listener, [BOB], mark,
                               ["--mail-auth", identity, "--login-options", "AUTH=PLAIN"])
            self.assertIn(f"> MAIL FROM:<{ALICE}> AUTH=<{identity}>", done.output)
            self.assertEqual(done.status, 0, str(done))
            self.assertStoredOnce(gw, BOB, mark, ALICE)


    def test_wrong_ca_refused_by_curl(self) -> None:
        gw = shared_mail_gateway()
        mark = token()
        directory = temporary_directory(self, "curl")
        upload = directory / "message.eml"
        upload.write_bytes(message(mark, sender=ALICE))
        done = curl_run(gw, "smtps", "smtps", ca=other_ca(),
                        options=["--mail-from", ALICE, "--mail-rcpt", BOB, "--upload-file",
                                 str(upload)])
        self.assertEqual(done.status, 60, str(done))  # peer certificate cannot be authenticated
        self.assertNowhere(gw, mark)


# -- smtplib -----------------------------------------------------------------


class SmtplibTests(MailTestCase):
    """Python's smtplib: transactions with several recipients, postmaster, 538."""

    def test_several_local_recipients_one_copy_per_account(self) -> None:
        """
        One transaction for alice, bob and alice again in other case: one
        copy each, in their Maildirs when sendmail returns; nothing spooled.
        """
        gw = shared_mail_gateway()
        mark = token()
        smtp = self.submission(gw)
        refused = smtp.sendmail(ALICE, [ALICE, BOB, "Alice@Example.TEST"],
                                message(mark, sender=ALICE))
        self.assertEqual(refused, {})
        self.assertStoredOnce(gw, ALICE, mark, ALICE)
        self.assertStoredOnce(gw, BOB, mark, ALICE)
        self.assertEqual(gw.mailboxes_with(mark), {f"{ALICE}/new": 1, f"{BOB}/new": 1})
        self.assertEqual(gw.spooled_with(mark), [])

    def test_alias_with_local_and_outside_members(self) -> None:
        """
        The test gateway's aliases file has C{team: alice, bob,
        outside@partner.example}; to alice and team in one transaction:
        alice and bob once each, the outside member in the spool.
        """
        gw = shared_mail_gateway()
        aliases = getattr(gw.gateway, "aliases", None)
        if aliases is None or "team:" not in aliases.read_text():
            self.skipTest("this GatewayProcess has no 'team' alias")
        mark = token()
        smtp = self.mx(gw)
        self.assertEqual(smtp.sendmail(STRANGER, [ALICE, "team@example.test"], message(mark)), {})
        self.assertStoredOnce(gw, ALICE, mark, STRANGER)
        self.assertStoredOnce(gw, BOB, mark, STRANGER)
        self.assertSpooledOnce(gw, mark, ["outside@partner.example"], STRANGER)

    def test_postmaster(self) -> None:
        """
        RFC 5321 section 4.5.1: postmaster@ a local domain, and the bare
        C{postmaster}, are accepted; the mail lands in a mailbox (the test
        gateway's aliases file routes postmaster to alice), not in the relay
        spool and not nowhere.
        """
        gw = shared_mail_gateway()
        smtp = self.mx(gw)
        for rcpt in ("postmaster@example.test", "postmaster", "POSTMASTER@example.test"):
            mark = token()
            smtp.ehlo()
            self.assertEqual(smtp.mail(STRANGER)[0], 250)
            code, text = smtp.rcpt(rcpt)
            self.assertEqual(code, 250, f"RCPT TO:<{rcpt}> -> {code} {text!r}")
            code, text = smtp.data(message(mark, to=rcpt))
            self.assertEqual(code, 250, text)
            self.assertEqual(gw.spooled_with(mark), [],
                             f"mail for <{rcpt}> went to the outbound spool")
            self.assertEqual(list(gw.mailboxes_with(mark).values()), [1],
                             f"mail for <{rcpt}> accepted but in no mailbox: "
                             f"{gw.anywhere(mark)}")

    def test_postmaster_without_route_never_lost(self) -> None:
        """
        With an empty aliases file nothing routes postmaster: the gateway
        may refuse it at RCPT (saying so) or deliver it to a mailbox, but
        never answer 250 and drop it or hand it to the relay spool.
        """
        gw = shared_mail_gateway(aliases="")
        mark = token()
        smtp = self.mx(gw)
        smtp.ehlo()
        smtp.mail(STRANGER)
        code, text = smtp.rcpt("postmaster@example.test")
        if code == 250:
            self.assertEqual(smtp.data(message(mark, to="postmaster@example.test"))[0], 250)
            self.assertEqual(gw.spooled_with(mark), [], "postmaster mail put in the relay spool")
            self.assertNotEqual(gw.mailboxes_with(mark), {}, "postmaster mail accepted and lost")
        else:
            self.assertEqual(code // 100, 5, text)
            self.assertNowhere(gw, mark)

    def test_smtps_login_relay(self) -> None:
        """SMTP_SSL + login() (smtplib picks CRAM-MD5 first) to an outside address: spooled."""
        gw = shared_mail_gateway(trusted=OUTSIDER)
        mark = token()
        offset = gw.log_offset()
        with smtplib.SMTP_SSL("localhost", gw.port("smtps"), context=gw.context(),
                              timeout=20) as smtp:
            smtp.login(ALICE, ALICE_PASSWORD)
            self.assertEqual(smtp.sendmail(ALICE, [OUTSIDE], message(mark, sender=ALICE)), {})
            self.assertReceived(self.assertSpooledOnce(gw, mark, [OUTSIDE], ALICE), "ESMTPSA")
        self.assertLoggedIn(gw, offset, "smtps", "CRAM-MD5")

    def test_auth_before_starttls_538(self) -> None:
        """
        AUTH PLAIN and AUTH LOGIN sent before STARTTLS on submission (as
        smtplib does when told): 538 5.7.11, and nobody logged in.
        """
        gw = shared_mail_gateway()
        offset = gw.log_offset()
        smtp = smtplib.SMTP("127.0.0.1", gw.port("submission"), timeout=20)
        self.addCleanup(smtp.close)
        smtp.ehlo()
        smtp.user, smtp.password = BOB, BOB_PASSWORD
        for mechanism, method in (("PLAIN", smtp.auth_plain), ("LOGIN", smtp.auth_login)):
            with self.assertRaises(smtplib.SMTPAuthenticationError) as caught:
                smtp.auth(mechanism, method)
            self.assertEqual(caught.exception.smtp_code, 538)
            self.assertTrue(caught.exception.smtp_error.startswith(b"5.7.11 "))
        self.assertNotIn("logged in", gw.log_since(offset))

    def test_unknown_local_recipient(self) -> None:
        gw = shared_mail_gateway()
        mark = token()
        smtp = self.mx(gw)
        with self.assertRaises(smtplib.SMTPRecipientsRefused) as caught:
            smtp.sendmail(STRANGER, ["nobody-here@example.test"], message(mark))
        self.assertEqual(caught.exception.recipients["nobody-here@example.test"][0], 550)
        self.assertNowhere(gw, mark)
