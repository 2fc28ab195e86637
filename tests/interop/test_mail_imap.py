"""
IMAP against the real gateway under twistd, with clients written by
others: mbsync (isync 1.4), offlineimap (offlineimap3), curl, Python's
imaplib and the imapclient package.

The mail is put in place end to end (smtplib to the mx listener) or by the
clients themselves.  What counts:
  - mbsync and offlineimap keep a mailbox of several folders (INBOX, Sent,
    the nested C{Projects/2026 Q1}, made on the client's side) in sync in
    both directions over STARTTLS and implicit TLS: new messages (one of
    600 kB), flags (\\Seen, \\Flagged, \\Answered, \\Deleted then
    expunged) and deletions made on either side show on the other, checked
    in the client's local Maildir and through a separate imaplib session
    (and, for the big message, in the gateway's Maildir);
  - curl lists and fetches by UID (byte for byte as stored) over STARTTLS
    (C{--ssl-reqd}) and implicit TLS;
  - imaplib and imapclient do the commands of a mail reader (SEARCH, FETCH,
    STORE, COPY, MOVE, APPEND, EXPUNGE, STATUS, folders with modified UTF-7
    names), and an IDLE client sees within seconds a message delivered by
    SMTP, a flag change and an expunge by another IMAP session, and a POP3
    client's deletion;
  - LOGIN before STARTTLS on the STARTTLS listener is refused (LOGINDISABLED
    in CAPABILITY, C{NO [PRIVACYREQUIRED]}), and curl, asked for a
    plain-text login there, sends no password; a password that needs
    escapes in a quoted string logs in.

Each test takes an account of its own (an empty mailbox) on a gateway the
tests of the process share.

What these clients do that the checks allow for:
  - mbsync adds an C{X-TUID} header to what it uploads;
  - offlineimap turns a local "trashed" flag (Maildir C{T}) into \\Deleted
    on the gateway but expunges only messages whose file was removed;
  - offlineimap takes a parent folder that is a plain directory (not a
    Maildir) for a missing folder, so the local nested folders are made
    with Maildir parents.

What these clients cannot do, and is therefore not tested with them:
  - offlineimap 8 does not check the certificate after STARTTLS (its
    C{sslcacertfile} is used for implicit TLS only: it synced with another
    CA's file over STARTTLS), so its STARTTLS runs show only that the
    upgrade happened; its certificate checking is tested on C{imaps};
  - curl 7.88 has no C{AUTH=+LOGIN} login option (the LOGIN command when
    the server offers SASL) and no SCRAM;
  - imaplib in Python 3.11 has no IDLE: IDLE is tested with imapclient.

The clients themselves found no gateway bug (the only failures seen were
offlineimap's own: L{offlineimap_tls_race}).  Probing the gateway they ran
against with odd commands found one, fixed, with its regression test here
(L{ImaplibTests.test_list_pattern_with_many_wildcards}) and in
L{tests.test_imap_mailboxes}: a LIST pattern with many wildcards held the
whole gateway for seconds to minutes.
"""

from __future__ import annotations

import imaplib
import poplib
import re
import time
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.interop.clients import Run
from tests.interop.imapclients import (
    BIG_BODY,
    TOKEN,
    Box,
    View,
    close,
    connect,
    gateway_files,
    imapclient_module,
    local_add,
    local_file,
    local_set_flags,
    local_view,
    ok,
    remember,
    server_message_uids,
    server_view,
    tricky_account,
)
from tests.interop.mailclients import (
    curl_stdout_bytes,
    fetchmail_run,
    lf,
    mbsync_run,
    message,
    offlineimap_run,
    other_ca,
    shared_mail_gateway,
    temporary_directory,
    token,
)

#: Tests per process that take a mailbox of their own on the shared gateway.
POOL = 40

# -- tests ---------------------------------------------------------------------


class IMAPTestCase(SynchronousTestCase):
    def mailbox(self) -> Box:
        gw = shared_mail_gateway(pool=POOL)
        account, password = gw.take_account()
        return Box(gw, account, password)

    def assertLoggedIn(self, box: Box, offset: int, listener: str) -> None:
        line = f"{listener}: 127.0.0.1 logged in as {box.account}"
        self.assertIn(line, box.gw.wait_for_log(offset, line))

    def assertNoLogin(self, box: Box, offset: int) -> None:
        self.assertNotIn(f"logged in as {box.account}", box.gw.log_since(offset))

    def assertSameBytes(self, got: bytes, expected: bytes) -> None:
        """Equal bytes (a short report for big ones: sizes and the first difference)."""
        if got != expected:
            at = next((i for i, (x, y) in enumerate(zip(got, expected)) if x != y),
                      min(len(got), len(expected)))
            self.fail(f"{len(got)} bytes, expected {len(expected)}; first difference at {at}: "
                      f"{got[at - 40:at + 40]!r} != {expected[at - 40:at + 40]!r}")

    def assertSynced(self, box: Box, done: Run) -> None:
        self.assertEqual(done.status, 0, f"{done}\n--- gateway log\n{box.gw.log_tail(60)}")

    def two_way(self, box: Box, sync: Callable[[], Run], root: Path,
                trash_expunges: bool) -> None:
        """
        Rounds of changes on both sides, each followed by a sync; after
        each, the local Maildir and the gateway hold the same messages with
        the same flags in INBOX, Sent and Projects/2026 Q1.

        @param trash_expunges: the client expunges on the gateway what is
            marked deleted locally (mbsync C{Expunge Both}); offlineimap only
            sets C{\\Deleted} there, and expunges only what was removed.
        """
        a, b, c, d, s1, s2, p1, n1, big, down = (token() for _ in range(10))
        box.gw.deliver([message(m, to=box.account) for m in (a, b, c, d)], [box.account])
        # A big message on the gateway's side too: over 256 KiB, its FETCH
        # BODY.PEEK[] is copied from the file a piece at a time.
        box.gw.deliver([message(down, to=box.account, body=BIG_BODY)], [box.account])
        local_add(root, "Sent", s1, "S")
        local_add(root, "Projects/2026 Q1", p1)
        local_add(root, "INBOX", big, "F", body=BIG_BODY)
        done = sync()
        self.assertSynced(box, done)
        expected: View = {
            "INBOX": {a: frozenset(), b: frozenset(), c: frozenset(), d: frozenset(),
                      big: frozenset({"\\Flagged"}), down: frozenset()},
            "Sent": {s1: frozenset({"\\Seen"})},
            "Projects/2026 Q1": {p1: frozenset()},
        }
        self.assertEqual(local_view(root), expected, str(done))
        self.assertEqual(server_view(box), expected, str(done))
        # The big message arrived whole (with CRLF line ends).
        [on_gateway] = gateway_files(box, big)
        # mbsync adds its own header to what it uploads (isync's "TUID").
        on_gateway = re.sub(rb"\r\nX-TUID: [^\r]*", b"", on_gateway, count=1)
        self.assertSameBytes(on_gateway,
                             local_file(root, "INBOX", big).read_bytes().replace(b"\n", b"\r\n"))
        # ... and the big one of the gateway's side was downloaded whole.
        [on_gateway] = gateway_files(box, down)
        self.assertGreater(len(on_gateway), 256 * 1024)
        local = local_file(root, "INBOX", down).read_bytes().replace(b"\r\n", b"\n")
        local = re.sub(rb"\nX-TUID: [^\n]*", b"", local, count=1)  # mbsync's again
        self.assertSameBytes(local, on_gateway.replace(b"\r\n", b"\n"))

        # The gateway's side: a flagged, b seen, c deleted and expunged, a
        # message appended to Sent.
        client = connect(box)
        try:
            ok(client.select("INBOX"))
            [ua], [ub], [uc] = (server_message_uids(client, m) for m in (a, b, c))
            ok(client.uid("STORE", ua, "+FLAGS", "(\\Flagged)"))
            ok(client.uid("STORE", ub, "+FLAGS", "(\\Seen)"))
            ok(client.uid("STORE", uc, "+FLAGS", "(\\Deleted)"))
            ok(client.expunge())
            ok(client.append("Sent", "(\\Seen \\Answered)", None,
                             message(s2, sender=box.account, to="someone@elsewhere.test")))
        finally:
            close(client)
        # The local side: d marked deleted (trashed), s1 flagged, p1's file
        # removed, a new message in INBOX.
        local_set_flags(root, "INBOX", d, "ST")
        local_set_flags(root, "Sent", s1, "FS")
        local_file(root, "Projects/2026 Q1", p1).unlink()
        local_add(root, "INBOX", n1)
        done = sync()
        self.assertSynced(box, done)
        expected = {
            "INBOX": {a: frozenset({"\\Flagged"}), b: frozenset({"\\Seen"}), n1: frozenset(),
                      big: frozenset({"\\Flagged"}), down: frozenset()},
            "Sent": {s1: frozenset({"\\Seen", "\\Flagged"}),
                     s2: frozenset({"\\Seen", "\\Answered"})},
            "Projects/2026 Q1": {},
        }
        if not trash_expunges:
            expected["INBOX"][d] = frozenset({"\\Seen", "\\Deleted"})
        self.assertEqual(server_view(box), expected, str(done))
        self.assertEqual(local_view(root), expected, str(done))

        # Round 3: the gateway's side expunges INBOX (d, if it was only
        # marked); nothing else changes, on either side.
        client = connect(box)
        try:
            ok(client.select("INBOX"))
            ok(client.expunge())
        finally:
            close(client)
        done = sync()
        self.assertSynced(box, done)
        expected["INBOX"].pop(d, None)
        self.assertEqual(server_view(box), expected, str(done))
        self.assertEqual(local_view(root), expected, str(done))


class MbsyncTests(IMAPTestCase):
    """mbsync (isync 1.4), certificate checked against the test CA."""

    def sync(self, box: Box, directory: Path, listener: str) -> Run:
        return mbsync_run(box.gw, directory, listener, user=box.account, password=box.password)

    def check_two_way(self, listener: str) -> None:
        box = self.mailbox()
        directory = temporary_directory(self, "mbsync")
        offset = box.gw.log_offset()
        runs: list[Run] = []
        self.two_way(box, lambda: remember(runs, self.sync(box, directory, listener)),
                     directory / "mail", trash_expunges=True)
        self.assertLoggedIn(box, offset, listener)
        for done in runs:
            self.assertEqual("STARTTLS" in done.output, listener == "imap", str(done))

    def test_two_way_starttls(self) -> None:
        """Over STARTTLS on the imap listener."""
        self.check_two_way("imap")

    def test_two_way_imaps(self) -> None:
        """Over implicit TLS on the imaps listener."""
        self.check_two_way("imaps")

    def test_mechanisms(self) -> None:
        """
        Each way mbsync logs in (C{AuthMechs}), on either listener: the
        message is downloaded, and the gateway logged the mechanism.
        """
        box = self.mailbox()
        mark = token()
        box.gw.deliver([message(mark, to=box.account)], [box.account])
        for listener, mechanism, logged in (
            ("imap", "LOGIN", "PASSWORD"),
            ("imaps", "PLAIN", "PLAIN"),
            ("imap", "CRAM-MD5", "CRAM-MD5"),
            ("imaps", "SCRAM-SHA-256", "SCRAM-SHA-256"),
        ):
            directory = temporary_directory(self, "mbsync")
            offset = box.gw.log_offset()
            done = mbsync_run(box.gw, directory, listener, user=box.account,
                              password=box.password, mechanism=mechanism)
            self.assertSynced(box, done)
            self.assertEqual(local_view(directory / "mail", ("INBOX",)),
                             {"INBOX": {mark: frozenset()}})
            line = f"{listener}: 127.0.0.1 logged in as {box.account} ({logged})"
            self.assertIn(line, box.gw.wait_for_log(offset, line))

    def test_wrong_ca_refused(self) -> None:
        box = self.mailbox()
        directory = temporary_directory(self, "mbsync")
        offset = box.gw.log_offset()
        for listener in ("imap", "imaps"):
            done = mbsync_run(box.gw, directory, listener, user=box.account,
                              password=box.password, ca=other_ca())
            self.assertNotEqual(done.status, 0, str(done))
            self.assertIn("certificate", done.output.lower())
        self.assertNoLogin(box, offset)


#: How many times an offlineimap sync over STARTTLS is run before its
#: failure counts (L{offlineimap_tls_race}).
OFFLINEIMAP_TLS_ATTEMPTS = 3


def offlineimap_tls_race(done: Run) -> bool:
    """
    Did offlineimap break on its own right after STARTTLS?

    imaplib2 (offlineimap's IMAP library) restarts its reader thread as
    soon as the TLS handshake returns, and its writer sends CAPABILITY from
    another thread: two threads on one C{SSL} object, which OpenSSL does
    not allow.  Under TLS 1.3 the server's two session tickets
    (NewSessionTicket, sent after the handshake) arrive just then, and the
    reader's C{SSL_read} processes them as a post-handshake message while
    the writer is in C{SSL_write}.  Seen from the client: C{[SSL] internal
    error} from the write, a CAPABILITY the gateway never receives (no
    response after C{socktimeout}), an C{unexpected message} alert from
    the gateway's OpenSSL, or SIGSEGV.  Over implicit TLS the reader
    starts after the handshake is long done and the tickets are read: it
    never happens there.

    Reproduced without the gateway, with a stub server on the stdlib
    C{ssl} module and a loop of connect, STARTTLS, CAPABILITY, LOGOUT in
    imaplib2: with OpenSSL's default of two tickets 50 runs in 1,500 failed,
    with C{SSLContext.num_tickets = 0} none in 1,500 (and, measured
    before, the same loop with imaplib, one thread: none in 450).  The gateway cannot turn
    tickets off: pyOpenSSL has no binding for C{SSL_CTX_set_num_tickets},
    and C{SSL_OP_NO_TICKET} still sends TLS 1.3 tickets (stateful ones).
    On a busy two-core machine up to one STARTTLS sync in ten failed this
    way, so a sync is tried up to L{OFFLINEIMAP_TLS_ATTEMPTS} times.
    """
    if done.status == -11:
        return True
    return done.status != 0 and "Failed to start TLS connection" in done.output and (
        "alert unexpected message" in done.output or "no response after" in done.output
        or "[SSL] internal error" in done.output)


class OfflineimapTests(IMAPTestCase):
    """offlineimap (offlineimap3), one thread."""

    def sync(self, box: Box, directory: Path, listener: str, ca: Path | None = None) -> Run:
        for _ in range(OFFLINEIMAP_TLS_ATTEMPTS):
            done = offlineimap_run(box.gw, directory, listener, user=box.account,
                                   password=box.password, ca=ca)
            if listener != "imap" or not offlineimap_tls_race(done):
                break  # else run again: see offlineimap_tls_race
        return done

    def check_two_way(self, listener: str) -> None:
        box = self.mailbox()
        directory = temporary_directory(self, "offlineimap")
        offset = box.gw.log_offset()
        runs: list[Run] = []
        self.two_way(box, lambda: remember(runs, self.sync(box, directory, listener)),
                     directory / "mail", trash_expunges=False)
        self.assertLoggedIn(box, offset, listener)
        for done in runs:
            # Without the upgrade it would log in with CRAM-MD5 in clear.
            self.assertEqual("STARTTLS\\r\\n'" in done.output, listener == "imap", str(done))

    def test_two_way_starttls(self) -> None:
        """Over STARTTLS on the imap listener (certificate not checked: see the module)."""
        self.check_two_way("imap")

    def test_two_way_imaps(self) -> None:
        """Over implicit TLS on the imaps listener, certificate checked."""
        self.check_two_way("imaps")

    def test_wrong_ca_refused(self) -> None:
        """Told to trust another CA, offlineimap refuses the gateway on imaps."""
        box = self.mailbox()
        directory = temporary_directory(self, "offlineimap")
        offset = box.gw.log_offset()
        done = self.sync(box, directory, "imaps", ca=other_ca())
        self.assertNotEqual(done.status, 0, str(done))
        self.assertIn("CERTIFICATE_VERIFY_FAILED", done.output)
        self.assertNoLogin(box, offset)


# -- curl --------------------------------------------------------------------


class CurlTests(IMAPTestCase):
    """curl 7.88: C{imap://} with C{--ssl-reqd} (STARTTLS required) and C{imaps://}."""

    def curl(self, box: Box, scheme: str, listener: str, path: str = "/",
             options: tuple[str, ...] = ()) -> tuple[Run, bytes]:
        return curl_stdout_bytes(box.gw, scheme, listener, path=path, user=box.account,
                                 password=box.password, options=options)

    def check_list_and_fetch(self, scheme: str, listener: str, options: tuple[str, ...]) -> None:
        box = self.mailbox()
        marks = [token() for _ in range(3)]
        box.gw.deliver([message(m, to=box.account) for m in marks], [box.account])
        stored = {m: box.gw.inbox_with(box.account, m)[0] for m in marks}
        offset = box.gw.log_offset()
        done, out = self.curl(box, scheme, listener, options=options)
        self.assertEqual(done.status, 0, str(done))
        if listener == "imap":
            self.assertRegex(done.output, r"> A\d+ STARTTLS")
        listed = re.findall(rb'^\* LIST \(([^)]*)\) "/" (\S+)\r?$', out, re.M)
        self.assertIn((b"\\HasNoChildren", b'"INBOX"'), listed, out)
        self.assertIn((b"\\HasNoChildren \\Sent", b'"Sent"'), listed, out)
        # The messages by UID: byte for byte what the Maildir holds.
        client = connect(box)
        try:
            ok(client.select("INBOX", readonly=True))
            uids = {m: server_message_uids(client, m) for m in marks}
        finally:
            close(client)
        for mark in (marks[2], marks[0]):
            [uid] = uids[mark]
            done, out = self.curl(box, scheme, listener, f"/INBOX;UID={uid}", options)
            self.assertEqual(done.status, 0, str(done))
            self.assertEqual(out, stored[mark], str(done))
        self.assertLoggedIn(box, offset, listener)

    def test_imap_ssl_reqd_list_and_fetch(self) -> None:
        """STARTTLS (required): LIST, then two messages fetched by UID (out of order)."""
        self.check_list_and_fetch("imap", "imap", ("--ssl-reqd",))

    def test_imaps_list_and_fetch(self) -> None:
        self.check_list_and_fetch("imaps", "imaps", ())

    def test_plain_text_login_before_starttls_not_sent(self) -> None:
        """
        Without C{--ssl-reqd} curl does not upgrade; asked for PLAIN (which
        the gateway offers only under TLS) it finds LOGINDISABLED and no
        mechanism, and gives up (exit 67) without sending the password.
        """
        box = self.mailbox()
        offset = box.gw.log_offset()
        done, out = self.curl(box, "imap", "imap", options=("--login-options", "AUTH=PLAIN"))
        self.assertEqual(done.status, 67, str(done))
        self.assertIn(" LOGINDISABLED", done.output)
        self.assertNotRegex(done.output, r"> A\d+ (LOGIN|AUTHENTICATE)")
        self.assertNotIn(box.password, done.output)
        self.assertEqual(out, b"")
        self.assertNoLogin(box, offset)


# -- imaplib -----------------------------------------------------------------


class ImaplibTests(IMAPTestCase):
    """Python's imaplib, certificate checked against the test CA."""

    def test_login_before_starttls_refused(self) -> None:
        """
        On the STARTTLS listener, before STARTTLS: LOGINDISABLED in
        CAPABILITY, LOGIN answered C{NO [PRIVACYREQUIRED]}; after STARTTLS
        LOGINDISABLED is gone and the same LOGIN succeeds.
        """
        box = self.mailbox()
        offset = box.gw.log_offset()
        client = connect(box, "imap", login=False)  # STARTTLS done
        close(client)
        client = imaplib.IMAP4("localhost", box.gw.port("imap"), timeout=20)
        self.addCleanup(close, client)
        self.assertIn("LOGINDISABLED", client.capabilities)
        self.assertIn("STARTTLS", client.capabilities)
        with self.assertRaises(imaplib.IMAP4.error) as refused:
            client.login(box.account, box.password)
        self.assertEqual(str(refused.exception),
                         "b'[PRIVACYREQUIRED] LOGIN is disabled before TLS; use STARTTLS'")
        self.assertNoLogin(box, offset)
        client.starttls(ssl_context=box.gw.context())
        self.assertNotIn("LOGINDISABLED", client.capabilities)
        self.assertNotIn("STARTTLS", client.capabilities)
        self.assertEqual(client.login(box.account, box.password)[0], "OK")
        self.assertLoggedIn(box, offset, "imap")

    def test_empty_mailbox_message_sets(self) -> None:
        """
        An empty INBOX: UID FETCH, UID STORE and UID SEARCH of C{1:*}
        succeed with no data (RFC 9051 section 6.4.9); FETCH C{1:*} by
        sequence number is BAD (section 9, C{seq-number}) but, asked more
        often than the gateway's bad-command limit, does not close the
        connection.
        """
        client = connect(self.mailbox())
        self.addCleanup(close, client)
        self.assertEqual(ok(client.select("INBOX")), [b"0"])
        self.assertEqual(ok(client.uid("FETCH", "1:*", "(FLAGS)")), [None])
        self.assertEqual(ok(client.uid("STORE", "1:*", "+FLAGS", r"(\Seen)")), [None])
        self.assertEqual(ok(client.uid("SEARCH", "ALL")), [b""])
        for _ in range(15):
            with self.assertRaises(imaplib.IMAP4.error) as refused:
                client.fetch("1:*", "(FLAGS)")
            self.assertIn("the mailbox is empty", str(refused.exception))
        self.assertEqual(client.noop()[0], "OK")

    def test_login_password_with_quote_backslash_and_space(self) -> None:
        """
        LOGIN with a password that must be quoted with escapes (Twisted's
        parser could not read it: ../shared/notes/twisted-mail-gaps.md
        section 2): imaplib, imapclient and mbsync (C{AuthMechs LOGIN}).
        """
        box = tricky_account(self.mailbox().gw)
        offset = box.gw.log_offset()
        client = connect(box, "imap")
        self.addCleanup(close, client)
        self.assertEqual(ok(client.select("INBOX")), [b"0"])
        imapclient = imapclient_module()
        other = imapclient.IMAPClient("localhost", port=box.gw.port("imaps"), ssl=True,
                                      ssl_context=box.gw.context(), timeout=20)
        self.addCleanup(other.shutdown)
        other.login(box.account, box.password)
        directory = temporary_directory(self, "mbsync")
        done = mbsync_run(box.gw, directory, "imaps", user=box.account, password=box.password,
                          mechanism="LOGIN")
        self.assertSynced(box, done)
        log = box.gw.wait_for_log(offset, "imaps: 127.0.0.1 logged in", 3)
        self.assertEqual(log.count(f"logged in as {box.account} (PASSWORD)"), 3, log)

    def test_list_pattern_with_many_wildcards(self) -> None:
        """
        Regression: LIST patterns were regular expressions that backtracked
        exponentially; C{"*%*%*%*%*%*%x"} held the whole gateway for some 16
        seconds per folder.
        """
        box = self.mailbox()
        client = connect(box)
        self.addCleanup(close, client)
        started = time.monotonic()
        self.assertEqual(ok(client.list('""', '"' + "*%" * 40 + 'x"')), [None])
        self.assertEqual(ok(client.list('""', '"' + "%*" * 40 + 'Sent"')),
                         [b'(\\HasNoChildren \\Sent) "/" "Sent"'])
        self.assertLess(time.monotonic() - started, 2.0)

    def test_mail_reader_session(self) -> None:
        """
        Over STARTTLS: SELECT, SEARCH, FETCH (whole message, size, envelope,
        header fields), STORE, COPY and MOVE with COPYUID, APPEND with
        APPENDUID, EXPUNGE; every change checked in the Maildir on disk.
        """
        box = self.mailbox()
        a, b, c, n = (token() for _ in range(4))
        box.gw.deliver([message(m, to=box.account) for m in (a, b, c)], [box.account])
        stored_a = box.gw.inbox_with(box.account, a)[0]
        client = connect(box, "imap")
        self.addCleanup(close, client)
        self.assertEqual(ok(client.select("INBOX")), [b"3"])
        self.assertEqual(ok(client.search(None, "UNSEEN")), [b"1 2 3"])
        self.assertEqual(ok(client.search(None, "SUBJECT", f'"test {b}"')), [b"2"])
        [uid_a] = server_message_uids(client, a)
        data = ok(client.uid("FETCH", uid_a, "(RFC822.SIZE BODY.PEEK[] ENVELOPE)"))
        self.assertEqual(data[0][1], stored_a)
        self.assertIn(b"RFC822.SIZE %d" % len(stored_a), data[0][0])
        self.assertIn(f'"test {a}"'.encode(), data[0][0] + data[1])
        data = ok(client.fetch("3", "(BODY[HEADER.FIELDS (MESSAGE-ID)])"))
        self.assertEqual(data[0][1], f"Message-ID: <{c}@client.test>\r\n\r\n".encode())
        # BODY[] (not PEEK) set \Seen on 3.
        self.assertEqual(ok(client.search(None, "SEEN")), [b"3"])
        self.assertIn(b"\\Flagged", ok(client.store("2", "+FLAGS", "(\\Flagged)"))[0])
        self.assertEqual(ok(client.search(None, "FLAGGED")), [b"2"])

        ok(client.create("Projects/2026"))
        typ, data = client.copy("1", "Archive")
        self.assertEqual(typ, "OK")
        self.assertRegex(data[0], rb"^\[COPYUID \d+ \d+ 1\] ")
        typ, data = client.uid("MOVE", server_message_uids(client, b)[0], "Projects/2026")
        self.assertEqual(typ, "OK", data)
        # RFC 6851: COPYUID in an untagged OK, then the EXPUNGE of b.
        [moved] = client.untagged_responses.pop("OK", [b""])[-1:]
        assert isinstance(moved, bytes), moved
        self.assertRegex(moved, rb"^\[COPYUID \d+ \d+ 1\]")
        self.assertEqual(client.untagged_responses.pop("EXPUNGE", []), [b"2"])
        typ, data = client.append("Sent", "(\\Seen)", None,
                                  message(n, sender=box.account, to="x@elsewhere.test"))
        self.assertEqual(typ, "OK")
        self.assertRegex(data[0], rb"^\[APPENDUID \d+ 1\] ")
        ok(client.store("1", "+FLAGS", "(\\Deleted)"))
        typ, data = client.expunge()
        self.assertEqual((typ, data), ("OK", [b"1"]))
        self.assertEqual(ok(client.search(None, "ALL")), [b"1"])  # c is left
        where = {m: sorted(box.gw.mailboxes_with(m)) for m in (a, b, c, n)}
        self.assertEqual([len(v) for v in where.values()], [1, 1, 1, 1], where)
        self.assertIn("Archive", where[a][0])
        self.assertIn("2026", where[b][0])
        self.assertIn("Sent", where[n][0])
        self.assertNotIn("Archive", where[c][0])
        client.close()
        # The flags are in the store: another session sees them.
        view = server_view(box, ("INBOX", "Archive", "Projects/2026", "Sent"))
        self.assertEqual(view, {
            "INBOX": {c: frozenset({"\\Seen"})},
            "Archive": {a: frozenset()},
            "Projects/2026": {b: frozenset({"\\Flagged"})},
            "Sent": {n: frozenset({"\\Seen"})},
        })


# -- imapclient ----------------------------------------------------------------


class IMAPClientTests(IMAPTestCase):
    """The imapclient package (on imaplib), certificate checked against the test CA."""

    def client(self, box: Box, listener: str = "imaps"):  # type: ignore[no-untyped-def]
        imapclient = imapclient_module()
        context = box.gw.context()
        if listener == "imaps":
            client = imapclient.IMAPClient("localhost", port=box.gw.port("imaps"), ssl=True,
                                           ssl_context=context, timeout=20)
        else:
            client = imapclient.IMAPClient("localhost", port=box.gw.port(listener), ssl=False,
                                           timeout=20)
            client.starttls(context)
        self.addCleanup(self._logout, client)
        client.login(box.account, box.password)
        return client

    @staticmethod
    def _logout(client) -> None:  # type: ignore[no-untyped-def]
        try:
            client.logout()
        except Exception:
            pass

    def test_mail_reader_session(self) -> None:
        """
        Over STARTTLS: folders, SEARCH, FETCH, flags, COPY, MOVE, APPEND,
        EXPUNGE, STATUS, through imapclient's own API.
        """
        box = self.mailbox()
        a, b, c, n = (token() for _ in range(4))
        box.gw.deliver([message(m, to=box.account) for m in (a, b, c)], [box.account])
        client = self.client(box, "imap")
        self.assertIn(b"MOVE", client.capabilities())
        client.create_folder("Projects/2026 Q1")
        client.create_folder("Entw\u00fcrfe & Co")  # modified UTF-7 on the wire
        folders = {name: set(flags) for flags, _, name in client.list_folders()}
        self.assertEqual(folders["Projects/2026 Q1"], {b"\\HasNoChildren"})
        self.assertEqual(folders["Projects"], {b"\\HasChildren"})
        self.assertEqual(folders["Entw\u00fcrfe & Co"], {b"\\HasNoChildren"})
        self.assertIn(b"\\Sent", folders["Sent"])
        self.assertEqual(client.select_folder("INBOX")[b"EXISTS"], 3)
        uids = client.search(["ALL"])
        self.assertEqual(len(uids), 3)
        by_mark = {}
        for uid, data in client.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]",
                                             "FLAGS", "ENVELOPE"]).items():
            found = TOKEN.search(data[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"])
            assert found is not None, data
            mark = found.group().decode()
            by_mark[mark] = uid
            self.assertEqual(data[b"FLAGS"], (b"\\Recent",))
            self.assertEqual(data[b"ENVELOPE"].subject, f"test {mark}".encode())
        self.assertEqual(client.search(["SUBJECT", f"test {b}"]), [by_mark[b]])
        body = client.fetch([by_mark[a]], ["RFC822"])[by_mark[a]][b"RFC822"]
        self.assertEqual(body, box.gw.inbox_with(box.account, a)[0])
        self.assertEqual(client.get_flags([by_mark[a]]), {by_mark[a]: (b"\\Seen", b"\\Recent")})
        client.add_flags([by_mark[b]], [b"\\Flagged", b"$Important"])
        self.assertEqual(set(client.get_flags([by_mark[b]])[by_mark[b]]),
                         {b"\\Flagged", b"$Important", b"\\Recent"})
        client.remove_flags([by_mark[b]], [b"$Important"])
        client.copy([by_mark[a]], "Archive")
        client.move([by_mark[b]], "Projects/2026 Q1")
        self.assertEqual(sorted(client.search(["ALL"])), sorted([by_mark[a], by_mark[c]]))
        client.append("Sent", message(n, sender=box.account, to="x@elsewhere.test"),
                      flags=[b"\\Seen", b"\\Answered"])
        client.copy([by_mark[a]], "Entw\u00fcrfe & Co")
        self.assertEqual(client.folder_status("Entw\u00fcrfe & Co", ["MESSAGES"])[b"MESSAGES"], 1)
        client.delete_messages([by_mark[c]])
        client.expunge()
        self.assertEqual(client.search(["ALL"]), [by_mark[a]])
        status = client.folder_status("Projects/2026 Q1", ["MESSAGES", "UNSEEN", "UIDNEXT"])
        self.assertEqual((status[b"MESSAGES"], status[b"UNSEEN"]), (1, 1))
        client.unselect_folder()
        self.assertEqual(server_view(box, ("INBOX", "Archive", "Projects/2026 Q1", "Sent")), {
            "INBOX": {a: frozenset({"\\Seen"})},
            "Archive": {a: frozenset({"\\Seen"})},
            "Projects/2026 Q1": {b: frozenset({"\\Flagged"})},
            "Sent": {n: frozenset({"\\Seen", "\\Answered"})},
        })
        self.assertEqual(box.gw.mailboxes_with(c), {})

    def idle_until(self, client, wanted: Callable[[tuple], bool],  # type: ignore[no-untyped-def]
                   within: float = 5.0) -> list[tuple]:
        """IDLE responses until one is C{wanted} (or C{within} seconds pass)."""
        seen: list[tuple] = []
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            responses = client.idle_check(timeout=max(0.1, deadline - time.monotonic()))
            seen.extend(responses)
            if any(wanted(r) for r in responses):
                return seen
        self.fail(f"nothing wanted within {within} s; IDLE gave {seen}")

    def test_idle_sees_smtp_delivery(self) -> None:
        """An IDLE client on INBOX sees EXISTS for a message sent by smtplib, within seconds."""
        box = self.mailbox()
        first = token()
        box.gw.deliver([message(first, to=box.account)], [box.account])
        client = self.client(box)
        self.assertEqual(client.select_folder("INBOX")[b"EXISTS"], 1)
        client.idle()
        started = time.monotonic()
        box.gw.deliver([message(token(), to=box.account)], [box.account])
        seen = self.idle_until(client, lambda r: r[1:] == (b"EXISTS",))
        self.assertIn((2, b"EXISTS"), seen)
        self.assertLess(time.monotonic() - started, 5)
        text, _ = client.idle_done()
        self.assertEqual(text, b"IDLE terminated")
        self.assertEqual(len(client.search(["ALL"])), 2)

    def test_idle_sees_other_sessions_flags_and_expunge(self) -> None:
        """
        An IDLE client sees another session's STORE (FETCH FLAGS) and
        EXPUNGE (the sequence number as it was), within seconds.
        """
        box = self.mailbox()
        marks = [token() for _ in range(3)]
        box.gw.deliver([message(m, to=box.account) for m in marks], [box.account])
        client = self.client(box)
        self.assertEqual(client.select_folder("INBOX")[b"EXISTS"], 3)
        client.idle()
        other = connect(box)
        self.addCleanup(close, other)
        ok(other.select("INBOX"))
        ok(other.store("2", "+FLAGS", "(\\Flagged)"))
        seen = self.idle_until(client, lambda r: r[1:2] == (b"FETCH",))
        # \Recent: this session is the first to see these messages.
        self.assertIn((2, b"FETCH", (b"FLAGS", (b"\\Flagged", b"\\Recent"))), seen)
        ok(other.store("1", "+FLAGS", "(\\Deleted)"))
        ok(other.expunge())
        seen = self.idle_until(client, lambda r: r[1:] == (b"EXPUNGE",))
        self.assertIn((1, b"EXPUNGE"), seen)
        client.idle_done()
        self.assertEqual(len(client.search(["ALL"])), 2)

    def test_idle_sees_pop3_deletion(self) -> None:
        """An IDLE client sees EXPUNGE once a POP3 client (poplib) has deleted and quit."""
        box = self.mailbox()
        marks = [token() for _ in range(2)]
        box.gw.deliver([message(m, to=box.account) for m in marks], [box.account])
        client = self.client(box)
        self.assertEqual(client.select_folder("INBOX")[b"EXISTS"], 2)
        client.idle()
        pop = poplib.POP3_SSL("localhost", box.gw.port("pop3s"), context=box.gw.context(),
                              timeout=20)
        pop.user(box.account)
        pop.pass_(box.password)
        self.assertEqual(pop.stat()[0], 2)
        pop.dele(1)
        pop.quit()
        seen = self.idle_until(client, lambda r: r[1:] == (b"EXPUNGE",))
        self.assertIn((1, b"EXPUNGE"), seen)
        client.idle_done()
        [left] = client.search(["ALL"])
        body = client.fetch([left], ["BODY.PEEK[]"])[left][b"BODY[]"]
        self.assertIn(marks[1].encode(), body)


# -- fetchmail ---------------------------------------------------------------


class FetchmailIMAPTests(IMAPTestCase):
    """fetchmail with C{protocol imap} (not in the brief's list, and cheap): download and delete."""

    def check_download(self, listener: str, tls: str) -> None:
        box = self.mailbox()
        marks = [token() for _ in range(3)]
        box.gw.deliver([message(m, to=box.account) for m in marks], [box.account])
        stored = [box.gw.inbox_with(box.account, m)[0] for m in marks]
        offset = box.gw.log_offset()
        fetched = fetchmail_run(box.gw, temporary_directory(self, "fetchmail"), listener,
                                protocol="imap", tls=tls, user=box.account,
                                password=box.password)
        self.assertEqual(fetched.run.status, 0, str(fetched.run))
        if listener == "imap":
            self.assertRegex(fetched.run.output, r"IMAP> A\d+ STARTTLS")
        self.assertEqual(sorted(fetched.messages), sorted(lf(data) for data in stored))
        self.assertEqual(box.gw.inbox(box.account), [])
        self.assertLoggedIn(box, offset, listener)

    def test_imap_starttls(self) -> None:
        self.check_download("imap", "stls")

    def test_imaps(self) -> None:
        self.check_download("imaps", "implicit")
