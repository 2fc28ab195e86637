"""
Authentication conversations on the three protocols, with the real
mechanisms, checkers and throttle over an in-memory directory: each
mechanism's framing, the refusals before TLS, cancel, bad input, ordering
under pipelining, failure limits.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import Limits
from gateway.imap.protocol import PREAUTH_COMMAND_LIMIT, IMAPFactory
from gateway.pop3.protocol import POP3Factory
from gateway.smtp.server import SMTPFactory
from tests.sasl_client import ScramClient, b64, cram_md5, plain
from tests.test_protocols import connect, lines

#: POP3's answer to a login, with the (empty) maildrop's figures.
LOGGED_IN = b"+OK logged in, 0 messages (0 octets)"


def upgraded(factory: object, role: str, **kw: object):  # type: ignore[no-untyped-def]
    """A connection that has completed STARTTLS/STLS."""
    proto, t = connect(factory, role, **kw)
    command = {POP3Factory: b"STLS\r\n", IMAPFactory: b"t STARTTLS\r\n"}.get(factory, b"STARTTLS\r\n")
    if factory is SMTPFactory:
        proto.dataReceived(b"EHLO c.example\r\n")
    proto.dataReceived(command)
    proto.handshakeCompleted()
    lines(t)
    return proto, t


class POP3AuthTests(SynchronousTestCase):
    def test_mechanisms_before_tls(self) -> None:
        proto, t = connect(POP3Factory, "pop3")
        lines(t)
        proto.dataReceived(b"AUTH\r\n")
        listing = lines(t)
        self.assertEqual(listing[0], b"+OK methods follow")
        self.assertIn(b"SCRAM-SHA-256", listing)
        self.assertIn(b"CRAM-MD5", listing)
        self.assertNotIn(b"PLAIN", listing)
        proto.dataReceived(b"CAPA\r\n")
        capa = lines(t)
        self.assertIn(b"SASL SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5", capa)

    def test_plain_refused_before_tls(self) -> None:
        proto, t = connect(POP3Factory, "pop3")
        lines(t)
        proto.dataReceived(b"AUTH PLAIN " + plain("alice@example.edu", "correct horse") + b"\r\n")
        self.assertEqual(lines(t), [b"-ERR [AUTH] plain-text mechanism refused before TLS; use STLS"])
        proto.dataReceived(b"USER alice@example.edu\r\n")
        self.assertEqual(lines(t), [b"-ERR [AUTH] plain-text login refused before TLS; use STLS"])
        self.assertEqual(proto.state, "AUTHORIZATION")

    def test_user_pass_after_tls(self) -> None:
        proto, t = upgraded(POP3Factory, "pop3")
        proto.dataReceived(b"USER alice@example.edu\r\nPASS correct horse\r\n")
        self.assertEqual(lines(t), [b"+OK send PASS", LOGGED_IN])
        self.assertEqual(proto.state, "TRANSACTION")
        self.assertEqual(proto.account, "alice@example.edu")

    def test_wrong_password(self) -> None:
        proto, t = upgraded(POP3Factory, "pop3")
        proto.dataReceived(b"USER alice@example.edu\r\nPASS wrong\r\n")
        self.assertEqual(lines(t), [b"+OK send PASS", b"-ERR [AUTH] authentication failed"])
        self.assertEqual(proto.state, "AUTHORIZATION")

    def test_unknown_user_same_answer(self) -> None:
        proto, t = upgraded(POP3Factory, "pop3")
        proto.dataReceived(b"USER nobody@example.edu\r\nPASS wrong\r\n")
        self.assertEqual(lines(t), [b"+OK send PASS", b"-ERR [AUTH] authentication failed"])

    def test_apop(self) -> None:
        proto, t = connect(POP3Factory, "pop3")
        greeting = lines(t)[0]
        stamp = greeting.rsplit(b" ", 1)[1]
        digest = hashlib.md5(stamp + b"correct horse").hexdigest().encode()
        proto.dataReceived(b"APOP alice@example.edu " + digest + b"\r\n")
        self.assertEqual(lines(t), [LOGGED_IN])

    def test_apop_without_legacy_secret(self) -> None:
        proto, t = connect(POP3Factory, "pop3")
        stamp = lines(t)[0].rsplit(b" ", 1)[1]
        digest = hashlib.md5(stamp + b"battery staple").hexdigest().encode()
        proto.dataReceived(b"APOP bob@example.edu " + digest + b"\r\n")
        self.assertEqual(lines(t), [b"-ERR [AUTH] authentication failed"])

    def test_cram_md5(self) -> None:
        proto, t = connect(POP3Factory, "pop3")
        lines(t)
        proto.dataReceived(b"AUTH CRAM-MD5\r\n")
        challenge = lines(t)[0]
        self.assertTrue(challenge.startswith(b"+ "))
        proto.dataReceived(cram_md5("alice@example.edu", "correct horse", challenge[2:]) + b"\r\n")
        self.assertEqual(lines(t), [LOGGED_IN])

    def test_scram_sha256(self) -> None:
        proto, t = connect(POP3Factory, "pop3")
        lines(t)
        client = ScramClient("bob@example.edu", "battery staple")
        proto.dataReceived(b"AUTH SCRAM-SHA-256 " + client.first() + b"\r\n")
        server_first = lines(t)[0]
        proto.dataReceived(client.final(server_first[2:]) + b"\r\n")
        server_final = lines(t)[0]
        self.assertTrue(client.verify(server_final[2:]))
        proto.dataReceived(b"\r\n")
        self.assertEqual(lines(t), [LOGGED_IN])

    def test_plain_initial_response_after_tls(self) -> None:
        proto, t = upgraded(POP3Factory, "pop3")
        proto.dataReceived(b"AUTH PLAIN " + plain("bob@example.edu", "battery staple") + b"\r\n")
        self.assertEqual(lines(t), [LOGGED_IN])

    def test_cancel(self) -> None:
        proto, t = connect(POP3Factory, "pop3")
        lines(t)
        proto.dataReceived(b"AUTH CRAM-MD5\r\n*\r\n")
        self.assertEqual(lines(t)[1:], [b"-ERR authentication cancelled"])

    def test_bad_base64(self) -> None:
        proto, t = connect(POP3Factory, "pop3")
        lines(t)
        proto.dataReceived(b"AUTH CRAM-MD5\r\n!!!notbase64\r\n")
        self.assertEqual(lines(t)[1:], [b"-ERR [AUTH] authentication failed"])

    def test_unknown_mechanism(self) -> None:
        proto, t = connect(POP3Factory, "pop3")
        lines(t)
        proto.dataReceived(b"AUTH X-NOPE\r\n")
        self.assertEqual(lines(t), [b"-ERR unsupported authentication mechanism"])

    def test_failure_limit_closes(self) -> None:
        proto, t = upgraded(POP3Factory, "pop3", limits=Limits(max_auth_failures=2))
        proto.dataReceived(b"USER a@example.edu\r\nPASS x\r\n")
        self.assertFalse(t.disconnecting)
        proto.dataReceived(b"USER a@example.edu\r\nPASS y\r\n")
        self.assertTrue(t.disconnecting)

    def test_delayed_answer_keeps_order(self) -> None:
        """
        Past the free failures the answer is delayed; commands pipelined
        behind it wait, and replies come out in order.
        """
        clock = Clock()
        proto, t = upgraded(POP3Factory, "pop3", clock=clock, limits=Limits(max_auth_failures=10))
        for i in range(3):
            proto.dataReceived(b"USER alice@example.edu\r\nPASS wrong%d\r\n" % i)
        lines(t)
        proto.dataReceived(b"USER alice@example.edu\r\nPASS wrong-again\r\nCAPA\r\n")
        self.assertEqual(lines(t), [b"+OK send PASS"])
        clock.advance(60)
        replies = lines(t)
        self.assertEqual(replies[0], b"-ERR [AUTH] authentication failed")
        self.assertEqual(replies[1], b"+OK Capability list follows")

    def test_stls_forgets_user(self) -> None:
        proto, t = connect(POP3Factory, "pop3", plaintext_without_tls=True)
        lines(t)
        proto.dataReceived(b"USER alice@example.edu\r\nSTLS\r\n")
        proto.handshakeCompleted()
        lines(t)
        proto.dataReceived(b"PASS correct horse\r\n")
        self.assertEqual(lines(t), [b"-ERR USER first"])


class IMAPAuthTests(SynchronousTestCase):
    def test_login_disabled_before_tls(self) -> None:
        proto, t = connect(IMAPFactory, "imap")
        lines(t)
        proto.dataReceived(b'a LOGIN alice@example.edu "correct horse"\r\n')
        self.assertEqual(lines(t), [b"a NO [PRIVACYREQUIRED] LOGIN is disabled before TLS; use STARTTLS"])

    def test_login_quoted(self) -> None:
        proto, t = upgraded(IMAPFactory, "imap")
        proto.dataReceived(b'a LOGIN "alice@example.edu" "correct horse"\r\n')
        reply = lines(t)
        self.assertTrue(reply[0].startswith(b"a OK [CAPABILITY IMAP4rev1"), reply)
        self.assertEqual(proto.state, "AUTHENTICATED")

    def test_login_escaped_quote(self) -> None:
        """Twisted's parser fails on passwords with quotes; ours does not."""
        proto, t = upgraded(IMAPFactory, "imap")
        proto.context.backend.add_account("q@example.edu", 'se"cr\\et')
        proto.dataReceived(b'a LOGIN q@example.edu "se\\"cr\\\\et"\r\n')
        self.assertTrue(lines(t)[0].startswith(b"a OK"))

    def test_login_literals(self) -> None:
        proto, t = upgraded(IMAPFactory, "imap")
        proto.dataReceived(b"a LOGIN {17}\r\n")
        self.assertEqual(lines(t), [b"+ Ready for literal data"])
        proto.dataReceived(b"alice@example.edu {13+}\r\ncorrect horse\r\n")
        self.assertTrue(lines(t)[0].startswith(b"a OK"))

    def test_literal_too_large(self) -> None:
        proto, t = upgraded(IMAPFactory, "imap")
        proto.dataReceived(b"a LOGIN {999999}\r\n")
        self.assertEqual(lines(t), [b"a NO [TOOBIG] literal too large"])
        self.assertFalse(t.disconnecting)
        proto.dataReceived(b"b LOGIN {999999+}\r\n")
        self.assertTrue(t.disconnecting)

    def test_chained_literals_bounded_before_login(self) -> None:
        """
        Small literals chained into one command before login are refused
        once the command passes PREAUTH_COMMAND_LIMIT, not held without end.
        """
        proto, t = upgraded(IMAPFactory, "imap")
        chunk = b"x" * 8000
        proto.dataReceived(b"a LOGIN {8000+}\r\n")
        for _ in range(PREAUTH_COMMAND_LIMIT // 8000 - 1):
            proto.dataReceived(chunk + b" {8000+}\r\n")
        self.assertEqual(lines(t), [])
        self.assertFalse(t.disconnecting)
        proto.dataReceived(chunk + b" {8000+}\r\n")
        self.assertEqual(lines(t), [b"* BYE [TOOBIG] command too large"])
        self.assertTrue(t.disconnecting)
        held = sum(len(p) for p in proto._pieces)
        self.assertEqual(held, 0)

    def test_chained_synchronizing_literals_refused_and_go_on(self) -> None:
        proto, t = upgraded(IMAPFactory, "imap")
        proto.dataReceived(b"a LOGIN {8000}\r\n")
        for _ in range(PREAUTH_COMMAND_LIMIT // 8000 - 1):
            self.assertEqual(lines(t), [b"+ Ready for literal data"])
            proto.dataReceived(b"x" * 8000 + b" {8000}\r\n")
        self.assertEqual(lines(t), [b"+ Ready for literal data"])
        proto.dataReceived(b"x" * 8000 + b" {8000}\r\n")
        self.assertEqual(lines(t), [b"a NO [TOOBIG] command too large"])
        self.assertFalse(t.disconnecting)
        proto.dataReceived(b"b NOOP\r\n")
        self.assertEqual(lines(t), [b"b OK NOOP completed"])

    def test_login_wrong(self) -> None:
        proto, t = upgraded(IMAPFactory, "imap")
        proto.dataReceived(b"a LOGIN alice@example.edu wrong\r\n")
        self.assertEqual(lines(t), [b"a NO [AUTHENTICATIONFAILED] authentication failed"])

    def test_authenticate_plain_sasl_ir(self) -> None:
        proto, t = upgraded(IMAPFactory, "imap")
        proto.dataReceived(b"a AUTHENTICATE PLAIN " + plain("bob@example.edu", "battery staple") + b"\r\n")
        self.assertTrue(lines(t)[0].startswith(b"a OK"))

    def test_authenticate_plain_continuation(self) -> None:
        proto, t = upgraded(IMAPFactory, "imap")
        proto.dataReceived(b"a AUTHENTICATE PLAIN\r\n")
        self.assertEqual(lines(t), [b"+ "])
        proto.dataReceived(plain("bob@example.edu", "battery staple") + b"\r\n")
        self.assertTrue(lines(t)[0].startswith(b"a OK"))

    def test_authenticate_scram_sha1(self) -> None:
        proto, t = connect(IMAPFactory, "imap")
        lines(t)
        client = ScramClient("alice@example.edu", "correct horse", "sha1")
        proto.dataReceived(b"a AUTHENTICATE SCRAM-SHA-1 " + client.first() + b"\r\n")
        proto.dataReceived(client.final(lines(t)[0][2:]) + b"\r\n")
        self.assertTrue(client.verify(lines(t)[0][2:]))
        proto.dataReceived(b"\r\n")
        self.assertTrue(lines(t)[0].startswith(b"a OK"))

    def test_plain_refused_before_tls(self) -> None:
        proto, t = connect(IMAPFactory, "imap")
        greeting = lines(t)[0]
        self.assertNotIn(b"AUTH=PLAIN", greeting)
        self.assertIn(b"AUTH=SCRAM-SHA-256", greeting)
        proto.dataReceived(b"a AUTHENTICATE PLAIN " + plain("bob@example.edu", "battery staple") + b"\r\n")
        self.assertEqual(lines(t), [b"a NO [PRIVACYREQUIRED] plain-text mechanism refused before TLS"])

    def test_cancel_is_bad(self) -> None:
        proto, t = connect(IMAPFactory, "imap")
        lines(t)
        proto.dataReceived(b"a AUTHENTICATE CRAM-MD5\r\n*\r\n")
        self.assertEqual(lines(t)[1:], [b"a BAD authentication cancelled"])

    def test_bad_base64_is_bad(self) -> None:
        proto, t = connect(IMAPFactory, "imap")
        lines(t)
        proto.dataReceived(b"a AUTHENTICATE CRAM-MD5\r\n%%%\r\n")
        self.assertEqual(lines(t)[1:], [b"a BAD invalid base64 in authentication data"])

    def test_no_second_login(self) -> None:
        proto, t = upgraded(IMAPFactory, "imap")
        proto.dataReceived(b"a LOGIN bob@example.edu \"battery staple\"\r\n")
        lines(t)
        proto.dataReceived(b"b LOGIN bob@example.edu \"battery staple\"\r\n")
        self.assertEqual(lines(t), [b"b BAD already authenticated"])

    def test_unterminated_quote(self) -> None:
        proto, t = upgraded(IMAPFactory, "imap")
        proto.dataReceived(b'a LOGIN "alice\r\n')
        self.assertEqual(lines(t), [b"a BAD unterminated quoted string"])


class SMTPAuthTests(SynchronousTestCase):
    def test_ehlo_auth_line(self) -> None:
        proto, t = connect(SMTPFactory, "submission")
        lines(t)
        proto.dataReceived(b"EHLO c.example\r\n")
        ehlo = b"\n".join(lines(t))
        self.assertIn(b"AUTH SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5", ehlo)
        self.assertNotIn(b"PLAIN", ehlo)
        proto.dataReceived(b"STARTTLS\r\n")
        proto.handshakeCompleted()
        lines(t)
        proto.dataReceived(b"EHLO c.example\r\n")
        self.assertIn(b"PLAIN LOGIN", b"\n".join(lines(t)))

    def test_auth_before_ehlo(self) -> None:
        proto, t = connect(SMTPFactory, "submission")
        lines(t)
        proto.dataReceived(b"AUTH PLAIN\r\n")
        self.assertEqual(lines(t), [b"503 5.5.1 EHLO first"])

    def test_bare_auth(self) -> None:
        proto, t = connect(SMTPFactory, "submission")
        proto.dataReceived(b"EHLO c.example\r\n")
        lines(t)
        proto.dataReceived(b"AUTH\r\n")
        self.assertEqual(lines(t), [b"501 5.5.4 AUTH needs a mechanism name"])

    def test_plain_before_tls(self) -> None:
        proto, t = connect(SMTPFactory, "submission")
        proto.dataReceived(b"EHLO c.example\r\n")
        lines(t)
        proto.dataReceived(b"AUTH PLAIN " + plain("bob@example.edu", "battery staple") + b"\r\n")
        self.assertEqual(lines(t), [b"538 5.7.11 encryption required for requested authentication mechanism"])

    def test_plain_after_tls_and_no_second_auth(self) -> None:
        proto, t = upgraded(SMTPFactory, "submission")
        proto.dataReceived(b"EHLO c.example\r\n")
        lines(t)
        proto.dataReceived(b"AUTH PLAIN " + plain("bob@example.edu", "battery staple") + b"\r\n")
        self.assertEqual(lines(t), [b"235 2.7.0 authentication successful"])
        proto.dataReceived(b"AUTH PLAIN " + plain("bob@example.edu", "battery staple") + b"\r\n")
        self.assertEqual(lines(t), [b"503 5.5.1 already authenticated"])

    def test_login_mechanism(self) -> None:
        proto, t = upgraded(SMTPFactory, "submission")
        proto.dataReceived(b"EHLO c.example\r\n")
        lines(t)
        proto.dataReceived(b"AUTH LOGIN\r\n")
        self.assertEqual(lines(t), [b"334 " + b64(b"Username:")])
        proto.dataReceived(b64(b"alice@example.edu") + b"\r\n")
        self.assertEqual(lines(t), [b"334 " + b64(b"Password:")])
        proto.dataReceived(b64(b"correct horse") + b"\r\n")
        self.assertEqual(lines(t), [b"235 2.7.0 authentication successful"])

    def test_empty_initial_response(self) -> None:
        """RFC 4954: '=' is an empty initial response, not a crash."""
        proto, t = upgraded(SMTPFactory, "submission")
        proto.dataReceived(b"EHLO c.example\r\n")
        lines(t)
        proto.dataReceived(b"AUTH PLAIN =\r\n")
        self.assertEqual(lines(t), [b"535 5.7.8 authentication credentials invalid"])

    def test_wrong_password(self) -> None:
        proto, t = upgraded(SMTPFactory, "submission")
        proto.dataReceived(b"EHLO c.example\r\n")
        lines(t)
        proto.dataReceived(b"AUTH PLAIN " + plain("bob@example.edu", "nope") + b"\r\n")
        self.assertEqual(lines(t), [b"535 5.7.8 authentication credentials invalid"])

    def test_cancel_and_bad_base64(self) -> None:
        proto, t = connect(SMTPFactory, "submission")
        proto.dataReceived(b"EHLO c.example\r\n")
        lines(t)
        proto.dataReceived(b"AUTH CRAM-MD5\r\n*\r\n")
        self.assertEqual(lines(t)[1:], [b"501 5.7.0 authentication cancelled"])
        proto.dataReceived(b"AUTH CRAM-MD5\r\n@@@\r\n")
        self.assertEqual(lines(t)[1:], [b"501 5.5.2 cannot decode response"])

    def test_too_many_failures(self) -> None:
        proto, t = upgraded(SMTPFactory, "submission", limits=Limits(max_auth_failures=1))
        proto.dataReceived(b"EHLO c.example\r\n")
        lines(t)
        proto.dataReceived(b"AUTH PLAIN " + plain("bob@example.edu", "nope") + b"\r\n")
        self.assertEqual(lines(t), [b"535 5.7.8 authentication credentials invalid",
                                    b"421 4.7.0 mail.example.edu too many authentication failures"])
        self.assertTrue(t.disconnecting)

    def test_banned_address_temporary(self) -> None:
        clock = Clock()
        proto, t = upgraded(SMTPFactory, "submission", clock=clock, limits=Limits(max_auth_failures=100))
        proto.dataReceived(b"EHLO c.example\r\n")
        lines(t)
        for i in range(12):
            proto.dataReceived(b"AUTH PLAIN " + plain("bob@example.edu", f"guess{i}") + b"\r\n")
            clock.advance(30)
        replies = lines(t)
        self.assertIn(b"454 4.7.0 temporary authentication failure", replies)
        # Even the right password is refused while the ban lasts.
        proto.dataReceived(b"AUTH PLAIN " + plain("bob@example.edu", "battery staple") + b"\r\n")
        clock.advance(30)
        self.assertEqual(lines(t), [b"454 4.7.0 temporary authentication failure"])


def login_answered_after_loss(proto: Any, send: Any) -> list[str]:
    """
    Hold the portal's answer to the login C{send()} makes, lose the
    connection, then let the login succeed.

    @return: C{["logout"]} once the realm's logout has run, else C{[]}.
    """
    portal = proto.context.portal
    real_login = portal.login
    held: list[tuple[Deferred[Any], Deferred[Any]]] = []

    def login(*a: Any) -> Deferred[Any]:
        later: Deferred[Any] = Deferred()
        held.append((real_login(*a), later))
        return later

    portal.login = login
    send()
    proto.connectionLost(None)
    calls: list[str] = []
    [(now, later)] = held

    def spy(result: Any) -> Any:
        interface, avatar, logout = result

        def logged_out() -> None:
            calls.append("logout")
            logout()
        return interface, avatar, logged_out

    now.addCallback(spy).chainDeferred(later)
    return calls


class LostDuringLoginTests(SynchronousTestCase):
    """A client that leaves while the portal checks its credentials: the
    realm's logout still runs (IMAP and SMTP; POP3 in its own review)."""

    def check(self, factory: object, role: str, command: bytes) -> None:
        proto, t = upgraded(factory, role)
        calls = login_answered_after_loss(proto, lambda: proto.dataReceived(command))
        self.assertEqual(calls, ["logout"])
        self.assertIsNone(proto.account)

    def test_imap(self) -> None:
        self.check(IMAPFactory, "imap", b'a LOGIN alice@example.edu "correct horse"\r\n')

    def test_smtp(self) -> None:
        self.check(SMTPFactory, "submission",
                   b"EHLO c\r\nAUTH PLAIN " + plain("alice@example.edu", "correct horse") + b"\r\n")
