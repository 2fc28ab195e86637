"""
Mail collection over POP3 against the real gateway under twistd, with
clients written by others: fetchmail, getmail6, curl and Python's poplib.

The mail is put in place end to end: sent through the gateway's own mx
listener (smtplib, STARTTLS), then downloaded.  What counts:
  - each client downloads every message byte for byte as the Maildir holds
    it (clients that hand mail to a local program get LF line ends; fetchmail
    runs C{invisible}, getmail with C{delivered_to} and C{received} off, so
    that neither adds a header), over each listener and each mechanism it
    has, and the gateway logged that account in with that mechanism;
  - what it deleted is gone from the Maildir once it has quit, and nothing
    else is;
  - a client that tries a plain-text login before STLS is refused with
    C{-ERR [AUTH]}, and a client that checks certificates refuses the
    gateway's when told to trust another CA;
  - pipelined RETRs (none of these clients pipelines: poplib's socket is
    driven by hand) come back in order and byte for byte to a client that
    is slow to read, and the connection closes after QUIT, over TLS too;
    LOGIN-DELAY is advertised and enforced.

POP3 downloads and deletes, so each test takes an account of its own (with
an empty mailbox) on a gateway the tests share; the connection-slot tests,
which exhaust a limit, start their own gateway.

Gateway bugs these tests found (now fixed; the tests are their regression tests):
L{ConnectionSlotTests.test_pop3s_polls_release_their_connection} and
L{ConnectionSlotTests.test_pop3s_auth_failure_disconnects_release_their_connection}.

What these clients cannot do, and is therefore not tested with them:
  - fetchmail 6.4 checks the certificate's DNS names only (not its IP
    addresses), so it polls C{localhost} via 127.0.0.1 with
    C{sslcommonname localhost}; it has no SCRAM;
  - getmail6 6.18 has no STLS (C{SimplePOP3Retriever} is plain text only):
    over the STLS listener it can only use APOP, and its USER/PASS there is
    refused;
  - curl 7.88 has no SCRAM, and sends no USER/PASS when the server offers
    SASL (as the gateway does before TLS); its choice without
    C{--login-options} is DIGEST-MD5 here; its RETR output is compared
    byte for byte, but it stayed the same when the gateway's byte-stuffing
    was removed on purpose, so stuffing is checked through fetchmail,
    getmail and poplib;
  - fetchmail 6.4.37 with C{protocol apop} sends APOP without STLS even
    with C{sslproto 'tls1.2+'}, so its APOP is tested in clear and on pop3s;
  - poplib has no AUTH command: its SASL exchanges are written here with
    poplib's own line functions and L{tests.sasl_client}.
"""

from __future__ import annotations

import base64
import poplib
import time
from collections.abc import Callable
from dataclasses import dataclass

from twisted.trial.unittest import SynchronousTestCase

from tests.interop.clients import Run
from tests.interop.mailclients import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    BOB_PASSWORD,
    Fetched,
    MailGateway,
    curl_run,
    curl_stdout_bytes,
    fetchmail_run,
    getmail_run,
    lf,
    mail_gateway,
    message,
    other_ca,
    shared_mail_gateway,
    temporary_directory,
    token,
)
from tests.sasl_client import ScramClient, cram_md5, plain

#: A body that exercises byte-stuffing and transparency both ways: lines
#: that start with dots (one is a lone dot), 8-bit text, a long line.
TRICKY_BODY = "\r\n".join([
    ".leading dot", ".", "..two dots", ". dot space", "caf\u00e9 \u2615 8-bit",
    "x" * 900, "", "last line",
])


def fill(gw: MailGateway, account: str, count: int = 2) -> list[tuple[str, bytes]]:
    """
    Send C{count} messages to C{account} through the mx listener (the first
    with L{TRICKY_BODY}); returns C{(token, bytes as stored)} in delivery
    order, which is the order of POP3 message numbers.
    """
    marks = [token() for _ in range(count)]
    messages = [message(mark, to=account, body=TRICKY_BODY if i == 0 else "")
                for i, mark in enumerate(marks)]
    gw.deliver(messages, [account], mail_options=["BODY=8BITMIME"])
    stored = []
    for mark in marks:
        found = gw.inbox_with(account, mark)
        assert len(found) == 1, f"{mark} stored {len(found)} times"
        stored.append((mark, found[0]))
    return stored


def header_of(data: bytes) -> bytes:
    """The header and the blank line after it."""
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[:end + 4]


#: Tests per process that take a mailbox of their own on the shared gateway.
POOL = 48


@dataclass(frozen=True)
class Box:
    """A mailbox of its own for one test, on the shared gateway."""

    gw: MailGateway
    account: str
    password: str


class POP3TestCase(SynchronousTestCase):
    def mailbox(self) -> Box:
        """
        A fresh account on the gateway the POP3 tests share (one gateway
        start instead of one per test); it has the legacy secret for
        CRAM-MD5, DIGEST-MD5 and APOP, like alice.
        """
        gw = shared_mail_gateway(pool=POOL)
        account, password = gw.take_account()
        return Box(gw, account, password)

    def connect(self, gw: MailGateway, listener: str = "pop3") -> poplib.POP3:
        if listener == "pop3s":
            client: poplib.POP3 = poplib.POP3_SSL("localhost", gw.port("pop3s"),
                                                  context=gw.context(), timeout=20)
        else:
            client = poplib.POP3("localhost", gw.port(listener), timeout=20)
        self.addCleanup(self.close_quietly, client)
        return client

    @staticmethod
    def close_quietly(client: poplib.POP3) -> None:
        try:
            client.close()
        except OSError:
            pass  # the test dropped the connection itself

    def assertLoggedIn(self, box: Box, offset: int, listener: str, mechanism: str) -> None:
        line = f"{listener}: 127.0.0.1 logged in as {box.account} ({mechanism})"
        self.assertIn(line, box.gw.wait_for_log(offset, line))

    def assertNoLogin(self, box: Box, offset: int) -> None:
        self.assertNotIn(f"logged in as {box.account}", box.gw.log_since(offset))

    def assertDownloaded(self, got: list[bytes], stored: list[tuple[str, bytes]],
                         run: Run | None = None) -> None:
        """Every stored message was downloaded once, as LF text, byte for byte."""
        self.assertEqual(sorted(got), sorted(lf(data) for _, data in stored), str(run))

    def assertEmptied(self, box: Box) -> None:
        self.assertEqual(box.gw.inbox(box.account), [], "messages left in the Maildir")

    def assertUntouched(self, box: Box, stored: list[tuple[str, bytes]]) -> None:
        self.assertEqual(sorted(p.read_bytes() for p in box.gw.inbox(box.account)),
                         sorted(data for _, data in stored))

    def fetchmail(self, box: Box, listener: str, **kwargs: object) -> Fetched:
        return fetchmail_run(box.gw, temporary_directory(self, "fetchmail"), listener,
                             user=box.account, password=box.password, **kwargs)  # type: ignore[arg-type]

    def getmail(self, box: Box, listener: str, **kwargs: object) -> Fetched:
        return getmail_run(box.gw, temporary_directory(self, "getmail"), listener,
                           user=box.account, password=box.password, **kwargs)  # type: ignore[arg-type]


# -- fetchmail ---------------------------------------------------------------


class FetchmailTests(POP3TestCase):
    """fetchmail (OpenSSL), certificate checked (C{sslcertck}) against the test CA."""

    def test_plain_text_login_before_stls_refused(self) -> None:
        """
        C{sslproto ''} (no STLS) with USER/PASS on the STLS listener: the
        gateway answers USER with C{-ERR [AUTH]}; fetchmail reports an
        authentication failure (exit 3), never sends the password, and the
        mailbox is untouched.
        """
        box = self.mailbox()
        stored = fill(box.gw, box.account)
        offset = box.gw.log_offset()
        fetched = self.fetchmail(box, "pop3", auth="password", tls="none")
        self.assertEqual(fetched.run.status, 3, str(fetched.run))
        self.assertIn(f"POP3> USER {box.account}", fetched.run.output)
        self.assertIn("POP3< -ERR [AUTH] ", fetched.run.output)
        self.assertNotIn("POP3> PASS", fetched.run.output)
        self.assertEqual(fetched.messages, [])
        self.assertUntouched(box, stored)
        self.assertNoLogin(box, offset)

    def test_wrong_ca_refused(self) -> None:
        """Told to trust another CA, fetchmail refuses the gateway (exit 2) on both listeners."""
        box = self.mailbox()
        stored = fill(box.gw, box.account)
        for listener, tls in (("pop3s", "implicit"), ("pop3", "stls")):
            fetched = self.fetchmail(box, listener, tls=tls, ca=other_ca())
            self.assertEqual(fetched.run.status, 2, str(fetched.run))
            self.assertIn("certificate verif", fetched.run.output.lower())
            self.assertNotIn("POP3> PASS", fetched.run.output)
            self.assertEqual(fetched.messages, [])
        self.assertUntouched(box, stored)

    def test_keep(self) -> None:
        """C{keep}: everything downloaded, nothing deleted."""
        box = self.mailbox()
        stored = fill(box.gw, box.account)
        fetched = self.fetchmail(box, "pop3s", tls="implicit", keep=True)
        self.assertEqual(fetched.run.status, 0, str(fetched.run))
        self.assertDownloaded(fetched.messages, stored, fetched.run)
        self.assertNotIn("POP3> DELE", fetched.run.output)
        self.assertEqual(len(box.gw.inbox(box.account)), len(stored))


def _fetchmail_case(listener: str, tls: str, protocol: str, auth: str,
                    mechanism: str) -> Callable[[FetchmailTests], None]:
    def test(self: FetchmailTests) -> None:
        box = self.mailbox()
        stored = fill(box.gw, box.account, 3)
        offset = box.gw.log_offset()
        fetched = self.fetchmail(box, listener, protocol=protocol, auth=auth, tls=tls)
        self.assertEqual(fetched.run.status, 0, str(fetched.run))
        if tls == "stls":
            self.assertIn("POP3> STLS", fetched.run.output)
            self.assertIn("upgrade to TLS succeeded", fetched.run.output)
        self.assertDownloaded(fetched.messages, stored, fetched.run)
        self.assertEqual(fetched.run.output.count("POP3> DELE"), len(stored), str(fetched.run))
        self.assertEmptied(box)
        self.assertLoggedIn(box, offset, listener, mechanism)

    name = mechanism.lower().replace("-", "_")
    test.__name__ = f"test_{listener}_{tls}_{name}"
    test.__doc__ = (f"fetchmail, {protocol} {auth} on {listener} (TLS: {tls}): three messages "
                    f"downloaded byte for byte and deleted; logged in with {mechanism}.")
    return test


for _case in (
    _fetchmail_case("pop3", "none", "apop", "password", "APOP"),
    _fetchmail_case("pop3", "stls", "pop3", "password", "PASSWORD"),
    _fetchmail_case("pop3", "stls", "pop3", "cram-md5", "CRAM-MD5"),
    _fetchmail_case("pop3s", "implicit", "apop", "password", "APOP"),
    _fetchmail_case("pop3s", "implicit", "pop3", "password", "PASSWORD"),
    _fetchmail_case("pop3s", "implicit", "pop3", "cram-md5", "CRAM-MD5"),
):
    setattr(FetchmailTests, _case.__name__, _case)


# -- getmail6 ----------------------------------------------------------------


class GetmailTests(POP3TestCase):
    """getmail6 into a Maildir, C{delete = true}."""

    def fetch(self, listener: str, apop: bool, mechanism: str) -> None:
        box = self.mailbox()
        stored = fill(box.gw, box.account, 3)
        offset = box.gw.log_offset()
        fetched = self.getmail(box, listener, apop=apop)
        self.assertEqual(fetched.run.status, 0, str(fetched.run))
        self.assertDownloaded(fetched.messages, stored, fetched.run)
        self.assertEmptied(box)
        self.assertLoggedIn(box, offset, listener, mechanism)

    def test_pop3s_user_pass(self) -> None:
        """SimplePOP3SSLRetriever (certificate checked), USER/PASS."""
        self.fetch("pop3s", False, "PASSWORD")

    def test_pop3s_apop(self) -> None:
        """SimplePOP3SSLRetriever, C{use_apop}."""
        self.fetch("pop3s", True, "APOP")

    def test_pop3_apop_in_clear(self) -> None:
        """SimplePOP3Retriever (no STLS in getmail6), C{use_apop}: APOP needs no TLS."""
        self.fetch("pop3", True, "APOP")

    def test_pop3_user_pass_in_clear_refused(self) -> None:
        """SimplePOP3Retriever, USER/PASS in clear: C{-ERR [AUTH]}, nothing taken."""
        box = self.mailbox()
        stored = fill(box.gw, box.account)
        offset = box.gw.log_offset()
        fetched = self.getmail(box, "pop3")
        self.assertNotEqual(fetched.run.status, 0, str(fetched.run))
        self.assertIn("-ERR [AUTH] ", fetched.run.output)
        self.assertEqual(fetched.messages, [])
        self.assertUntouched(box, stored)
        self.assertNoLogin(box, offset)

    def test_wrong_ca_refused(self) -> None:
        box = self.mailbox()
        stored = fill(box.gw, box.account)
        fetched = self.getmail(box, "pop3s", ca=other_ca())
        self.assertNotEqual(fetched.run.status, 0, str(fetched.run))
        self.assertIn("CERTIFICATE_VERIFY_FAILED", fetched.run.output)
        self.assertEqual(fetched.messages, [])
        self.assertUntouched(box, stored)


# -- curl --------------------------------------------------------------------


class CurlTests(POP3TestCase):
    """
    curl: C{pop3://} with C{--ssl-reqd} (STLS required) and C{pop3s://};
    LIST, UIDL, RETR (C{/N}), TOP and DELE (C{-X DELE -I}) each in a
    session of its own.
    """

    def test_plain_pop3_without_ssl_reqd_offers_no_password(self) -> None:
        """
        Without C{--ssl-reqd} on the STLS listener curl does not upgrade;
        asked for PLAIN, which the gateway does not offer in clear, it sends
        no password at all (curl's "Login denied", exit 67).
        """
        box = self.mailbox()
        offset = box.gw.log_offset()
        done = curl_run(box.gw, "pop3", "pop3", user=box.account, password=box.password,
                        options=["--login-options", "AUTH=PLAIN"])
        self.assertEqual(done.status, 67, str(done))
        self.assertNotIn("> STLS", done.output)
        self.assertNotIn("> AUTH", done.output)
        self.assertNotIn("> USER", done.output)
        self.assertNoLogin(box, offset)


def _curl_case(listener: str, login: str | None, mechanism: str) -> Callable[[CurlTests], None]:
    scheme = "pop3s" if listener == "pop3s" else "pop3"

    def test(self: CurlTests) -> None:
        box = self.mailbox()
        gw = box.gw
        stored = fill(gw, box.account)
        offset = gw.log_offset()
        options = ["--login-options", f"AUTH={login}"] if login else []
        if scheme == "pop3":
            options.append("--ssl-reqd")
        who = {"user": box.account, "password": box.password}

        done = curl_run(gw, scheme, listener, options=options, **who)
        self.assertEqual(done.status, 0, str(done))
        if scheme == "pop3":
            self.assertIn("> STLS", done.output)
        self.assertIn("> APOP " if mechanism == "APOP" else f"> AUTH {mechanism}", done.output)
        self.assertEqual(done.stdout.splitlines(),
                         [f"{i} {len(data)}" for i, (_, data) in enumerate(stored, 1)])
        self.assertLoggedIn(box, offset, listener, mechanism)

        uidl = curl_run(gw, scheme, listener, options=options + ["--request", "UIDL"], **who)
        self.assertEqual(uidl.status, 0, str(uidl))
        numbers = [line.split()[0] for line in uidl.stdout.splitlines()]
        self.assertEqual(numbers, [str(i) for i in range(1, len(stored) + 1)])

        for number, (_, data) in enumerate(stored, 1):
            got, body = curl_stdout_bytes(gw, scheme, listener, path=f"/{number}",
                                          options=options, **who)
            self.assertEqual(got.status, 0, str(got))
            self.assertEqual(body, data, f"RETR {number} differs from the Maildir file")

        got, top = curl_stdout_bytes(gw, scheme, listener,
                                     options=options + ["--request", "TOP 1 0"], **who)
        self.assertEqual(got.status, 0, str(got))
        self.assertEqual(top, header_of(stored[0][1]))

        dele = curl_run(gw, scheme, listener, path="/1",
                        options=options + ["--request", "DELE", "--head"], **who)
        self.assertEqual(dele.status, 0, str(dele))
        self.assertIn("> DELE 1", dele.output)
        self.assertEqual(sorted(p.read_bytes() for p in gw.inbox(box.account)),
                         [data for _, data in stored[1:]])
        after = curl_run(gw, scheme, listener, options=options, **who)
        self.assertEqual(after.stdout.splitlines(), [f"1 {len(stored[1][1])}"])

    name = (login or "default").lower().replace("-", "_").replace("+", "")
    test.__name__ = f"test_{listener}_{name}_list_uidl_retr_top_dele"
    test.__doc__ = (f"curl {scheme}:// on {listener}, {login or 'its own choice'} "
                    f"(the gateway logs {mechanism}): LIST sizes are the Maildir files' sizes, "
                    "RETR gives the files byte for byte, TOP 1 0 their header, DELE removes "
                    "exactly one.")
    return test


for _listener in ("pop3", "pop3s"):
    for _login, _mechanism in ((None, "DIGEST-MD5"), ("PLAIN", "PLAIN"), ("LOGIN", "LOGIN"),
                               ("CRAM-MD5", "CRAM-MD5"), ("+APOP", "APOP")):
        _curl = _curl_case(_listener, _login, _mechanism)
        setattr(CurlTests, _curl.__name__, _curl)


# -- poplib ------------------------------------------------------------------


class PoplibTests(POP3TestCase):
    """Python's poplib."""

    def stls_login(self, box: Box) -> poplib.POP3:
        client = self.connect(box.gw)
        client.stls(box.gw.context())
        client.user(box.account)
        client.pass_(box.password)
        return client

    def login_retrying(self, box: Box) -> poplib.POP3:
        """
        A new session after a dropped one: the gateway releases the
        mailbox when it sees the connection go, which may take a moment
        (C{-ERR [IN-USE]} until then).
        """
        deadline = time.monotonic() + 5
        while True:
            try:
                return self.stls_login(box)
            except poplib.error_proto as e:
                if b"[IN-USE]" not in e.args[0] or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def retr(self, client: poplib.POP3, number: int) -> bytes:
        _, lines, _ = client.retr(number)
        return b"".join(line + b"\r\n" for line in lines)

    def test_apop_in_clear(self) -> None:
        """APOP on the STLS listener without STLS (APOP sends no password)."""
        box = self.mailbox()
        stored = fill(box.gw, box.account)
        offset = box.gw.log_offset()
        client = self.connect(box.gw)
        self.assertIn(b"<", client.getwelcome())
        client.apop(box.account, box.password)
        self.assertLoggedIn(box, offset, "pop3", "APOP")
        self.assertEqual(client.stat(), (len(stored), sum(len(d) for _, d in stored)))
        for number, (_, data) in enumerate(stored, 1):
            self.assertEqual(self.retr(client, number), data)
            client.dele(number)
        client.quit()
        self.assertEmptied(box)

    def test_stls_user_pass_retr_top(self) -> None:
        """
        CAPA before STLS lists STLS and no USER; after it, USER and no
        STLS.  RETR gives the Maildir file (poplib undoes the byte-stuffing
        of the dotted lines); TOP 1 0 the header; TOP 1 3 the header and
        three body lines.
        """
        box = self.mailbox()
        stored = fill(box.gw, box.account)
        client = self.connect(box.gw)
        before = client.capa()
        self.assertIn("STLS", before)
        self.assertNotIn("USER", before)
        client.stls(box.gw.context())
        after = client.capa()
        self.assertIn("USER", after)
        self.assertNotIn("STLS", after)
        offset = box.gw.log_offset()
        client.user(box.account)
        client.pass_(box.password)
        self.assertLoggedIn(box, offset, "pop3", "PASSWORD")
        listing = client.list()[1]
        self.assertEqual(listing, [f"{i} {len(d)}".encode() for i, (_, d) in enumerate(stored, 1)])
        tricky = stored[0][1]
        self.assertEqual(self.retr(client, 1), tricky)
        self.assertEqual(self.retr(client, 2), stored[1][1])
        _, lines, _ = client.top(1, 0)
        self.assertEqual(b"".join(line + b"\r\n" for line in lines), header_of(tricky))
        _, lines, _ = client.top(1, 3)
        head = header_of(tricky)
        body_lines = tricky[len(head):].split(b"\r\n")[:3]
        self.assertEqual(b"".join(line + b"\r\n" for line in lines),
                         head + b"".join(line + b"\r\n" for line in body_lines))
        self.assertEqual(body_lines, [b".leading dot", b".", b"..two dots"])
        client.quit()
        self.assertUntouched(box, stored)

    def test_sasl_on_pop3s(self) -> None:
        """
        AUTH PLAIN (initial response), AUTH CRAM-MD5 and AUTH SCRAM-SHA-256
        (the server's signature checked), each in a session of its own on
        pop3s; the last downloads and deletes everything.
        """
        box = self.mailbox()
        stored = fill(box.gw, box.account)

        def auth_plain(client: poplib.POP3) -> None:
            client._shortcmd("AUTH PLAIN " + plain(box.account, box.password).decode())

        def auth_cram(client: poplib.POP3) -> None:
            client._putcmd("AUTH CRAM-MD5")
            line, _ = client._getline()
            self.assertTrue(line.startswith(b"+ "), line)
            client._putcmd(cram_md5(box.account, box.password, line[2:]).decode())
            client._getresp()

        def auth_scram(client: poplib.POP3) -> None:
            scram = ScramClient(box.account, box.password)
            client._putcmd("AUTH SCRAM-SHA-256 " + scram.first().decode())
            line, _ = client._getline()
            self.assertTrue(line.startswith(b"+ "), line)
            client._putcmd(scram.final(line[2:]).decode())
            line, _ = client._getline()
            self.assertTrue(line.startswith(b"+ "), line)
            self.assertTrue(scram.verify(line[2:]), "the server's SCRAM signature is wrong")
            client._putcmd("")
            client._getresp()

        for mechanism, login in (("PLAIN", auth_plain), ("CRAM-MD5", auth_cram),
                                 ("SCRAM-SHA-256", auth_scram)):
            offset = box.gw.log_offset()
            client = self.connect(box.gw, "pop3s")
            login(client)
            self.assertLoggedIn(box, offset, "pop3s", mechanism)
            self.assertEqual(client.stat()[0], len(stored))
            if mechanism == "SCRAM-SHA-256":
                for number, (_, data) in enumerate(stored, 1):
                    self.assertEqual(self.retr(client, number), data)
                    client.dele(number)
            client.quit()
        self.assertEmptied(box)

    def test_dele_quit_removes(self) -> None:
        """DELE 2 then QUIT: that file is gone, the others stay, numbering restarts."""
        box = self.mailbox()
        stored = fill(box.gw, box.account, 3)
        client = self.stls_login(box)
        client.dele(2)
        self.assertEqual(client.stat()[0], 2)
        with self.assertRaises(poplib.error_proto):
            client.retr(2)
        client.quit()
        self.assertEqual(sorted(p.read_bytes() for p in box.gw.inbox(box.account)),
                         sorted([stored[0][1], stored[2][1]]))
        client = self.stls_login(box)
        self.assertEqual(client.list()[1], [f"1 {len(stored[0][1])}".encode(),
                                            f"2 {len(stored[2][1])}".encode()])
        client.quit()

    def test_rset_undoes_dele(self) -> None:
        box = self.mailbox()
        stored = fill(box.gw, box.account)
        client = self.stls_login(box)
        client.dele(1)
        client.dele(2)
        client.rset()
        client.quit()
        self.assertUntouched(box, stored)

    def test_dropped_connection_after_dele_removes_nothing(self) -> None:
        """DELE of everything, then the connection drops without QUIT: all is still there."""
        box = self.mailbox()
        stored = fill(box.gw, box.account)
        client = self.stls_login(box)
        client.dele(1)
        client.dele(2)
        client.sock.close()
        client.file.close()
        self.assertUntouched(box, stored)
        again = self.login_retrying(box)
        self.assertEqual(again.stat()[0], len(stored))
        again.quit()
        self.assertUntouched(box, stored)

    def test_uidl_stable_across_sessions(self) -> None:
        """
        The UIDLs survive RETR (which marks the message seen and moves its
        file to cur/), new mail, and the deletion of another message.
        """
        box = self.mailbox()
        fill(box.gw, box.account, 3)
        client = self.stls_login(box)
        first = dict(line.split() for line in client.uidl()[1])
        self.assertEqual(len(set(first.values())), 3)
        for number, uid in first.items():
            self.assertRegex(uid.decode(), r"^[\x21-\x7e]{1,70}$")
            self.assertEqual(client.uidl(int(number)).split()[-1], uid)
        self.retr(client, 1)
        client.quit()
        self.assertTrue(any(p.parent.name == "cur" for p in box.gw.inbox(box.account)))

        (new_mark, _), = fill(box.gw, box.account, 1)
        client = self.stls_login(box)
        second = dict(line.split() for line in client.uidl()[1])
        self.assertEqual({k: second[k] for k in first}, first)
        self.assertNotIn(second[b"4"], first.values())
        client.dele(2)
        client.quit()

        client = self.stls_login(box)
        third = [line.split()[1] for line in client.uidl()[1]]
        self.assertEqual(third, [first[b"1"], first[b"3"], second[b"4"]])
        self.assertIn(new_mark.encode(), self.retr(client, 3))
        client.quit()

    def test_plain_text_login_before_stls_refused(self) -> None:
        """USER, PASS and AUTH PLAIN before STLS: each C{-ERR [AUTH]}; no login."""
        box = self.mailbox()
        offset = box.gw.log_offset()
        client = self.connect(box.gw)
        initial = base64.b64encode(f"\0{box.account}\0{box.password}".encode()).decode()
        for command in (lambda: client.user(box.account), lambda: client.pass_(box.password),
                        lambda: client._shortcmd("AUTH PLAIN " + initial)):
            with self.assertRaises(poplib.error_proto) as caught:
                command()
            self.assertTrue(caught.exception.args[0].startswith(b"-ERR [AUTH] "),
                            caught.exception.args)
        client.quit()
        self.assertNoLogin(box, offset)

    def test_second_session_in_use(self) -> None:
        """A second session on the same mailbox: C{-ERR [IN-USE]}."""
        box = self.mailbox()
        fill(box.gw, box.account, 1)
        first = self.stls_login(box)
        with self.assertRaises(poplib.error_proto) as caught:
            self.stls_login(box)
        self.assertTrue(caught.exception.args[0].startswith(b"-ERR [IN-USE] "),
                        caught.exception.args)
        first.quit()


# -- a gateway bug seen by real clients -------------------------------------

#: The bug the implicit-TLS cases below caught (fixed in LineProtocol._resume).
SLOT_LEAK = (
    "gateway bug: on an implicit-TLS listener a connection the gateway closes while its "
    "transport is paused (LineProtocol.serialize/_pause: POP3 QUIT committing deletions, the "
    "'too many authentication failures' disconnect) never reaches connectionLost: "
    "loseConnection is called while paused and LineProtocol._resume skips resumeProducing "
    "because transport.disconnecting is set, so the TLS layer never reads the client's "
    "close_notify/EOF; the slot in ConnectionLimitingFactory (total, by_address), the file "
    "descriptor and the login session are never released, and the next connection beyond "
    "max_connections_per_address gets '-ERR [SYS/TEMP] too many connections'")

#: An untrusted 127.0.0.1 with a small per-address limit, and no throttle
#: delay for the few failures these tests make.
FEW_SLOTS = ("[auth.throttle]\nfree_failures = 100\n"
             "[limits]\nmax_connections_per_address = 3\n")


class ConnectionSlotTests(POP3TestCase):
    """
    Every connection gives its slot back when it ends: the per-address
    limit (C{max_connections_per_address}, 3 here, for an untrusted
    127.0.0.1) counts open connections, not past ones.
    """

    def polls(self, listener: str, tls: str) -> None:
        """fetchmail polls four times, each time downloading and deleting one new message."""
        gw = mail_gateway(self, trusted="[]", extra=FEW_SLOTS)
        box = Box(gw, ALICE, ALICE_PASSWORD)
        for poll in range(4):
            stored = fill(gw, ALICE, 1)
            fetched = self.fetchmail(box, listener, tls=tls)
            self.assertEqual(fetched.run.status, 0, f"poll {poll + 1}:\n{fetched.run}")
            self.assertDownloaded(fetched.messages, stored, fetched.run)
            self.assertEmptied(box)

    def test_stls_polls_release_their_connection(self) -> None:
        self.polls("pop3", "stls")

    def test_pop3s_polls_release_their_connection(self) -> None:
        self.polls("pop3s", "implicit")


    def failures(self, listener: str) -> None:
        """
        Three sessions each closed by the gateway after three wrong
        passwords (poplib), then a fourth session with the right one.
        """
        gw = mail_gateway(self, trusted="[]", extra=FEW_SLOTS)
        for _ in range(3):
            client = self.connect(gw, listener)
            if listener == "pop3":
                client.stls(gw.context())
            for _ in range(3):
                client.user(ALICE)
                with self.assertRaises(poplib.error_proto) as caught:
                    client.pass_("not-her-password")
                self.assertTrue(caught.exception.args[0].startswith(b"-ERR [AUTH] "))
            self.assertEqual(client.file.read(), b"", "the gateway did not close the session")
            client.close()
        client = self.connect(gw, listener)
        if listener == "pop3":
            client.stls(gw.context())
        client.user(ALICE)
        self.assertTrue(client.pass_(ALICE_PASSWORD).startswith(b"+OK"))
        client.quit()

    def test_stls_auth_failure_disconnects_release_their_connection(self) -> None:
        self.failures("pop3")

    def test_pop3s_auth_failure_disconnects_release_their_connection(self) -> None:
        self.failures("pop3s")



# -- pipelining and LOGIN-DELAY, with poplib's connection ----------------------


def unstuff(reply: bytes) -> bytes:
    """A RETR reply's message: the status line, the dot-stuffing and the
    terminating line taken off (RFC 1939 section 3)."""
    _, _, body = reply.partition(b"\r\n")
    assert body.endswith(b"\r\n.\r\n") or body == b".\r\n", body[-20:]
    lines = body[:-3].split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


class PipeliningTests(POP3TestCase):
    """
    A client that pipelines every RETR (RFC 2449 PIPELINING) and then QUIT,
    and reads nothing for a while: the gateway holds back (it reads ahead
    only what the transport has room for) and, once the client reads, sends
    every message in order, byte for byte, then +OK and closes, over TLS too
    (a producer still registered with a TLS transport would keep it from
    closing).
    """

    def pipeline(self, listener: str) -> None:
        box = self.mailbox()
        # 160 KB messages are read ahead; the last, 320 KB, is streamed.
        bodies = ["\r\n".join([".dotted " + "y" * 70] * lines) for lines in (2000,) * 3 + (4000,)]
        stored = fill(box.gw, box.account, 12)  # the first has TRICKY_BODY
        marks = [token() for _ in bodies]
        box.gw.deliver([message(mark, to=box.account, body=body)
                        for mark, body in zip(marks, bodies, strict=True)], [box.account])
        stored += [(mark, box.gw.inbox_with(box.account, mark)[0]) for mark in marks]
        client = self.connect(box.gw, listener)
        if listener == "pop3":
            client.stls(box.gw.context())
        client.user(box.account)
        client.pass_(box.password)
        count = len(stored)
        client.sock.sendall(b"".join(b"RETR %d\r\n" % n for n in range(1, count + 1))
                            + b"NOOP\r\nQUIT\r\n")
        time.sleep(0.5)  # not reading
        received = client.file.read()  # to the end: the gateway must close
        replies = received.split(b"\r\n.\r\n")
        self.assertEqual(len(replies), count + 1, received[-200:])
        for (mark, data), reply in zip(stored, replies, strict=False):
            self.assertTrue(reply.startswith(b"+OK %d octets\r\n" % len(data)), mark)
            self.assertEqual(unstuff(reply + b"\r\n.\r\n"), data, mark)
        self.assertEqual(replies[-1], b"+OK\r\n+OK bye\r\n")

    def test_pop3s(self) -> None:
        self.pipeline("pop3s")

    def test_stls(self) -> None:
        self.pipeline("pop3")


class LoginDelayTests(POP3TestCase):
    """RFC 2449 LOGIN-DELAY with poplib, on a gateway configured for it."""

    def test_capa_and_refusal(self) -> None:
        gw = mail_gateway(self, extra="[limits]\npop3_login_delay = 3600\n")
        client = self.connect(gw, "pop3s")
        self.assertEqual(client.capa().get("LOGIN-DELAY"), ["3600"])
        client.user(ALICE)
        client.pass_(ALICE_PASSWORD)
        client.quit()
        client = self.connect(gw, "pop3s")
        client.user(ALICE)
        with self.assertRaises(poplib.error_proto) as wrong:
            client.pass_("not-her-password")
        self.assertTrue(wrong.exception.args[0].startswith(b"-ERR [AUTH] "))
        client.user(ALICE)
        with self.assertRaises(poplib.error_proto) as soon:
            client.pass_(ALICE_PASSWORD)
        self.assertTrue(soon.exception.args[0].startswith(b"-ERR [LOGIN-DELAY] "))
        # The session is back in AUTHORIZATION: bob, who has not logged in
        # lately, gets in on the same connection.
        client.user(BOB)
        self.assertTrue(client.pass_(BOB_PASSWORD).startswith(b"+OK"))
        client.quit()
