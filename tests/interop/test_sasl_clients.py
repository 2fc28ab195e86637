"""
Every SASL mechanism the gateway offers, against the real gateway under
twistd, with clients written by others: GNU SASL's C{gsasl} (IMAP and SMTP,
each over STARTTLS and implicit TLS), the Cyrus SASL test clients
(C{imtest}, C{pop3test}, C{smtptest}: OTP on all three protocols, and the
POP3 SASL mechanisms) and Python's imaplib, smtplib and poplib; and the
refusals: nothing in plain text before TLS, with the default configuration.

A login counts only when the client says so (exit status and its own
transcript) I{and} the gateway logged that account in with that mechanism.

What these clients cannot do, and is therefore not tested here:
  - gsasl has no OTP client and no implicit TLS (it is relayed, see
    L{clients.gsasl_over_tls}, and so has no channel binding: -PLUS only
    over STARTTLS); it checks the certificate chain, not the host name;
  - gsasl 2.2.0 fails a non-PLUS SCRAM on its side when TLS channel-binding
    data is available (it sends nothing after the empty challenge):
    C{--no-cb} works around it;
  - the Cyrus clients trust no CA (they print C{verify error} and go on),
    and for SCRAM-*-PLUS send the mechanism name without C{-PLUS} and ask
    for C{tls-unique}, which the gateway (C{tls-exporter} only, RFC 9266)
    does not offer.
"""

from __future__ import annotations

import base64
import imaplib
import poplib
import re
import smtplib
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from gateway import certs
from tests.interop import clients
from tests.interop.clients import Run
from tests.interop.gateways import (
    ALICE,
    ALICE_PASSWORD,
    OTP_COUNT,
    OTP_PASSPHRASE,
    OTP_SEED,
    Interop,
    own_gateway,
    shared_gateway,
)

#: Listener -> (gsasl/Cyrus protocol, TLS).
LISTENERS = {
    "imap": ("imap", "starttls"),
    "imaps": ("imap", "implicit"),
    "submission": ("smtp", "starttls"),
    "smtps": ("smtp", "implicit"),
    "pop3": ("pop3", "starttls"),
    "pop3s": ("pop3", "implicit"),
}

GSASL_MECHANISMS = (
    "PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256",
    "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS", "EXTERNAL",
)  # fmt: skip

CYRUS_MECHANISMS = ("CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN", "LOGIN",
                    "EXTERNAL")

#: Cyrus client -> its protocol's STARTTLS and implicit-TLS listeners.
CYRUS_LISTENERS = {"imtest": ("imap", "imaps"), "pop3test": ("pop3", "pop3s"),
                   "smtptest": ("submission", "smtps")}

#: How each Cyrus client shows the server's success reply.
CYRUS_SUCCESS = {
    "imtest": re.compile(r"^S: \S+ OK .*logged in", re.M),
    "pop3test": re.compile(r"^S: \+OK logged in", re.M),
    "smtptest": re.compile(r"^S: 235 ", re.M),
}

#: What each Cyrus client is given on its standard input after logging in.
QUIT = {"imtest": ". LOGOUT\r\n", "pop3test": "QUIT\r\n", "smtptest": "QUIT\r\n"}

#: The protocols' own logins, in lower case as the Cyrus clients' C{-m}
#: takes them (imtest's C{-m login} is IMAP LOGIN, never SASL LOGIN), and
#: how the gateway's log names them.
LOGGED_AS = {"login": "PASSWORD", "user": "PASSWORD", "apop": "APOP"}

#: Cyrus client -> what it is tried with.  EXTERNAL only over STARTTLS: these
#: clients present a certificate (C{-t}) only when they upgrade.
CYRUS_CASES = {
    "imtest": tuple(m for m in CYRUS_MECHANISMS if m != "LOGIN") + ("login",),
    "pop3test": CYRUS_MECHANISMS + ("user", "apop"),
    "smtptest": CYRUS_MECHANISMS,
}


def slug(name: str) -> str:
    """A mechanism as part of a test name; a protocol command gets C{_command}."""
    return name.lower().replace("-", "_") + ("_command" if name in LOGGED_AS else "")


def logged_in_line(listener: str, mechanism: str, account: str = ALICE) -> str:
    return f"{listener}: 127.0.0.1 logged in as {account} ({LOGGED_AS.get(mechanism, mechanism)})"


def server_success(protocol: str) -> re.Pattern[str]:
    """The gateway's success reply, in gsasl's transcript."""
    if protocol == "imap":
        return re.compile(r"^\. OK .*logged in\r?$", re.M)
    return re.compile(r"^235 ", re.M)


_GSASL_MECHANISMS: list[str] = []


def require_gsasl(mechanism: str) -> None:
    """
    @raise SkipTest: gsasl is missing, lacks C{mechanism}, or (for -PLUS)
        is older than 2.1, the first with tls-exporter channel binding.
    """
    if not _GSASL_MECHANISMS:
        listed = clients._run([clients.program("gsasl"), "--client-mechanisms"]).stdout
        _GSASL_MECHANISMS.extend(listed.split())
    if mechanism not in _GSASL_MECHANISMS:
        raise SkipTest(f"this gsasl has no {mechanism} client")
    if mechanism.endswith("-PLUS") and clients.gsasl_version() < (2, 1):
        raise SkipTest("gsasl before 2.1 has no tls-exporter channel binding (RFC 9266)")


def gsasl_login(interop: Interop, listener: str, mechanism: str, *,
                password: str = ALICE_PASSWORD) -> Run:
    """gsasl logs alice in on C{listener} with C{mechanism}."""
    require_gsasl(mechanism)
    protocol, tls = LISTENERS[listener]
    user: str | None = ALICE
    secret: str | None = password
    options: list[str] = []
    if mechanism == "EXTERNAL":
        user = secret = None  # the certificate says who
        if tls == "starttls":
            options += [f"--x509-cert-file={interop.client.certificate}",
                        f"--x509-key-file={interop.client.key}"]
    if mechanism == "DIGEST-MD5":
        # Otherwise gsasl asks for both on its standard input.
        options += ["--realm=localhost", "--quality-of-protection=qop-auth"]
    if mechanism.startswith("SCRAM-") and not mechanism.endswith("-PLUS"):
        options.append("--no-cb")  # gsasl 2.2.0 fails without it (module docstring)
    if tls == "starttls":
        return clients.gsasl(protocol, interop.port(listener), mechanism, ca=interop.ca,
                             user=user, password=secret, options=options)
    return clients.gsasl_over_tls(
        protocol, interop.port(listener), mechanism,
        context=interop.context(client_certificate=mechanism == "EXTERNAL"),
        user=user, password=secret, options=options)


class GsaslTests(SynchronousTestCase):
    """
    gsasl with each mechanism on the IMAP and submission listeners, over
    STARTTLS (gsasl's own TLS, verifying the gateway's CA) and over
    implicit TLS (relayed).  The C{test_<listener>_<mechanism>} methods are
    made by L{_gsasl_case} below.
    """

    def setUp(self) -> None:
        self.interop = shared_gateway()

    def check_login(self, listener: str, mechanism: str) -> None:
        offset = self.interop.log_offset()
        run = gsasl_login(self.interop, listener, mechanism)
        protocol, tls = LISTENERS[listener]
        self.assertEqual(run.status, 0, run)
        command = r"\. AUTHENTICATE " if protocol == "imap" else "AUTH "
        self.assertRegex(run.stdout, re.compile(rf"^{command}{re.escape(mechanism)}\r?$", re.M), run)
        self.assertRegex(run.stdout, server_success(protocol), run)
        if tls == "starttls":
            self.assertIn("The certificate is trusted", run.stderr, run)
        first = clients.gsasl_client_first(run, mechanism)
        if mechanism.endswith("-PLUS"):
            self.assertTrue(first.startswith(b"p=tls-exporter,"), first)
        elif mechanism.startswith("SCRAM-"):
            self.assertTrue(first.startswith(b"n,"), first)
        line = logged_in_line(listener, mechanism)
        self.assertIn(line, self.interop.wait_for_log(offset, line))


def _gsasl_case(listener: str, mechanism: str) -> Callable[[GsaslTests], None]:
    def test(self: GsaslTests) -> None:
        self.check_login(listener, mechanism)

    test.__name__ = f"test_{listener}_{slug(mechanism)}"
    test.__doc__ = f"gsasl logs in on {listener} with {mechanism}."
    return test


for _listener in ("imap", "submission", "imaps", "smtps"):
    for _mechanism in GSASL_MECHANISMS:
        if LISTENERS[_listener][1] == "implicit" and _mechanism.endswith("-PLUS"):
            continue  # relayed gsasl has no TLS of its own to bind to
        _case = _gsasl_case(_listener, _mechanism)
        setattr(GsaslTests, _case.__name__, _case)


class GsaslFailureTests(SynchronousTestCase):
    """A wrong password fails with gsasl; one gateway per test, so that the
    failures stay below the throttle's free ones."""

    def check_refused(self, mechanism: str) -> None:
        interop = own_gateway(self)
        for listener, refusal in (("imap", r"^\. NO \[AUTHENTICATIONFAILED\]"),
                                  ("submission", r"^535 5\.7\.8 ")):
            run = gsasl_login(interop, listener, mechanism, password="not-" + ALICE_PASSWORD)
            self.assertNotEqual(run.status, 0, run)
            self.assertIsNotNone(run.status, run)
            self.assertRegex(run.stdout, re.compile(refusal, re.M), run)
            self.assertNotRegex(run.stdout, server_success(LISTENERS[listener][0]), run)
        self.assertNotIn("logged in as", interop.wait_for_log(0, "logged in as", timeout=0.2))

    def test_plain(self) -> None:
        self.check_refused("PLAIN")

    def test_cram_md5(self) -> None:
        self.check_refused("CRAM-MD5")

    def test_scram_sha_256_plus(self) -> None:
        self.check_refused("SCRAM-SHA-256-PLUS")


class DefaultConfigurationTests(SynchronousTestCase):
    """
    The default configuration (no C{mechanisms}, no
    C{plaintext_without_tls}): nothing plain-text before TLS, seen by gsasl
    and pop3test; SCRAM-*-PLUS only where tls-exporter exists (TLS 1.3).
    """

    def setUp(self) -> None:
        self.interop = shared_gateway("")

    def test_gsasl_imap_plain_text_before_tls_refused(self) -> None:
        for mechanism in ("PLAIN", "LOGIN"):
            require_gsasl(mechanism)
            run = clients.gsasl("imap", self.interop.port("imap"), mechanism, ca=None,
                                user=ALICE, password=ALICE_PASSWORD, starttls=False)
            self.assertNotEqual(run.status, 0, run)
            capability = re.search(r"^\* CAPABILITY .*$", run.stdout, re.M)
            assert capability is not None, run
            self.assertIn("LOGINDISABLED", capability.group(), run)
            self.assertNotIn(f"AUTH={mechanism}", capability.group(), run)
            self.assertIn(f". AUTHENTICATE {mechanism}", run.stdout, run)
            self.assertRegex(run.stdout, re.compile(r"^\. NO \[PRIVACYREQUIRED\]", re.M), run)

    def test_gsasl_smtp_plain_text_before_tls_refused(self) -> None:
        for mechanism in ("PLAIN", "LOGIN"):
            require_gsasl(mechanism)
            run = clients.gsasl("smtp", self.interop.port("submission"), mechanism, ca=None,
                                user=ALICE, password=ALICE_PASSWORD, starttls=False)
            self.assertNotEqual(run.status, 0, run)
            auth = re.search(r"^250[ -]AUTH .*$", run.stdout, re.M)
            assert auth is not None, run
            self.assertNotIn(mechanism, auth.group().split(), run)
            self.assertIn(f"AUTH {mechanism}", run.stdout, run)
            self.assertRegex(run.stdout, re.compile(r"^538 5\.7\.11 ", re.M), run)

    def test_gsasl_verifies_the_gateway(self) -> None:
        """The CA check the other gsasl tests rely on is real: another CA fails."""
        other = certs.init_certificates(self.interop.gateway.dir / "other-ca", ["localhost"])
        run = clients.gsasl("imap", self.interop.port("imap"), "SCRAM-SHA-256",
                            ca=other.ca_certificate, user=ALICE, password=ALICE_PASSWORD)
        self.assertNotEqual(run.status, 0, run)
        self.assertIn("NOT trusted", run.stderr, run)
        self.assertNotIn("AUTHENTICATE", run.stdout, run)

    def test_gsasl_plus_needs_tls13(self) -> None:
        """Over TLS 1.2 no -PLUS is offered (tls-exporter needs the extended
        master secret there, which the gateway does not check): SCRAM
        without channel binding still works."""
        require_gsasl("SCRAM-SHA-256-PLUS")
        tls12 = ["--priority=NORMAL:-VERS-TLS1.3", "--verbose"]
        run = clients.gsasl("imap", self.interop.port("imap"), "SCRAM-SHA-256-PLUS",
                            ca=self.interop.ca, user=ALICE, password=ALICE_PASSWORD, options=tls12)
        self.assertIn("(TLS1.2)", run.stderr, run)
        self.assertNotEqual(run.status, 0, run)
        after_tls = re.findall(r"^\* CAPABILITY .*$", run.stdout, re.M)[-1]
        self.assertIn("AUTH=SCRAM-SHA-256", after_tls)
        self.assertNotIn("-PLUS", after_tls)
        self.assertRegex(run.stdout, re.compile(r"^\. NO unsupported authentication mechanism", re.M))
        offset = self.interop.log_offset()
        run = clients.gsasl("imap", self.interop.port("imap"), "SCRAM-SHA-256",
                            ca=self.interop.ca, user=ALICE, password=ALICE_PASSWORD,
                            options=tls12 + ["--no-cb"])
        self.assertEqual(run.status, 0, run)
        line = logged_in_line("imap", "SCRAM-SHA-256")
        self.assertIn(line, self.interop.wait_for_log(offset, line))

    def test_pop3test_plain_not_offered_before_stls(self) -> None:
        run = clients.cyrus("pop3test", self.interop.port("pop3"), "PLAIN", tls="none",
                            user=ALICE, password=ALICE_PASSWORD, commands="QUIT\r\n")
        sasl = re.search(r"^S: SASL .*$", run.stdout, re.M)
        assert sasl is not None, run
        self.assertNotIn("PLAIN", sasl.group().split(), run)
        self.assertIn("S: STLS", run.stdout, run)
        self.assertNotIn("Authenticated.", run.stdout, run)
        self.assertNotIn("AUTH PLAIN", run.stdout, run)


class CyrusOTPTests(SynchronousTestCase):
    """
    OTP (RFC 2444) with the Cyrus clients on the three protocols: alice's
    sequence is set with C{mailgateway user otp-init} (seed mg42, count 99)
    and the clients are given the pass phrase.

    Below sequence 490 the Cyrus OTP plugin always answers with an RFC 2243
    C{init-hex} re-initialisation (new seed, sequence 499), so the first
    login re-initialises the sequence and the second, over the implicit-TLS
    listener, spends the next one (499 -> 498) with a plain C{hex} answer.
    """

    def check_otp(self, client: str) -> None:
        interop = own_gateway(self, otp=True)
        before = interop.otp_state()
        assert before is not None
        self.assertEqual((before.seed, before.sequence), (OTP_SEED, OTP_COUNT))
        starttls, implicit = CYRUS_LISTENERS[client]

        first = self.login(interop, client, starttls)
        messages = clients.cyrus_client_messages(first)
        self.assertIn(f"{ALICE}\0{ALICE}".encode(), messages, first)
        self.assertTrue(any(m.startswith(b"init-hex:") for m in messages), first)
        reinitialised = interop.otp_state()
        assert reinitialised is not None
        self.assertEqual(reinitialised.sequence, 499)
        self.assertNotEqual(reinitialised.seed, OTP_SEED)
        self.assertEqual(reinitialised.algorithm, "md5")

        second = self.login(interop, client, implicit)
        self.assertTrue(any(m.startswith(b"hex:") for m in clients.cyrus_client_messages(second)),
                        second)
        after = interop.otp_state()
        assert after is not None
        self.assertEqual((after.seed, after.sequence), (reinitialised.seed, 498))

    def login(self, interop: Interop, client: str, listener: str) -> Run:
        offset = interop.log_offset()
        run = clients.cyrus(client, interop.port(listener), "OTP", tls=LISTENERS[listener][1],
                            user=ALICE, password=OTP_PASSPHRASE, commands=QUIT[client])
        self.assertIn("Authenticated.", run.stdout, run)
        self.assertRegex(run.stdout, CYRUS_SUCCESS[client], run)
        line = logged_in_line(listener, "OTP")
        self.assertIn(line, interop.wait_for_log(offset, line))
        return run

    def test_imap(self) -> None:
        self.check_otp("imtest")

    def test_pop3(self) -> None:
        self.check_otp("pop3test")

    def test_smtp(self) -> None:
        self.check_otp("smtptest")

    def test_wrong_pass_phrase(self) -> None:
        """A wrong pass phrase fails and moves nothing."""
        interop = own_gateway(self, otp=True)
        run = clients.cyrus("imtest", interop.port("imap"), "OTP", tls="starttls", user=ALICE,
                            password="not the " + OTP_PASSPHRASE, commands=QUIT["imtest"])
        self.assertIn("Authentication failed", run.stdout, run)
        self.assertRegex(run.stdout, re.compile(r"^S: \S+ NO \[AUTHENTICATIONFAILED\]", re.M), run)
        state = interop.otp_state()
        assert state is not None
        self.assertEqual((state.seed, state.sequence), (OTP_SEED, OTP_COUNT))


class CyrusSASLTests(SynchronousTestCase):
    """
    The Cyrus clients with each of their mechanisms that the gateway offers
    (and pop3test's USER/PASS and APOP), over STLS/STARTTLS and implicit
    TLS.  The C{test_<client>_<listener>_<mechanism>} methods are made by
    L{_cyrus_case} below.
    """

    def setUp(self) -> None:
        self.interop = shared_gateway()

    def check_login(self, client: str, listener: str, mechanism: str) -> None:
        offset = self.interop.log_offset()
        certificate = self.interop.client_pem if mechanism == "EXTERNAL" else None
        password = None if mechanism == "EXTERNAL" else ALICE_PASSWORD
        run = clients.cyrus(client, self.interop.port(listener), mechanism,
                            tls=LISTENERS[listener][1], user=ALICE, password=password,
                            certificate=certificate, commands=QUIT[client])
        self.assertIn("TLS connection established", run.stdout, run)
        self.assertIn("Authenticated.", run.stdout, run)
        self.assertRegex(run.stdout, CYRUS_SUCCESS[client], run)
        line = logged_in_line(listener, mechanism)
        self.assertIn(line, self.interop.wait_for_log(offset, line))


def _cyrus_case(client: str, listener: str, mechanism: str) -> Callable[[CyrusSASLTests], None]:
    def test(self: CyrusSASLTests) -> None:
        self.check_login(client, listener, mechanism)

    test.__name__ = f"test_{client}_{listener}_{slug(mechanism)}"
    test.__doc__ = f"{client} logs in on {listener} with {mechanism}."
    return test


for _client, _listeners in CYRUS_LISTENERS.items():
    for _listener in _listeners:
        for _mechanism in CYRUS_CASES[_client]:
            if _mechanism == "EXTERNAL" and LISTENERS[_listener][1] == "implicit":
                continue
            _cyrus = _cyrus_case(_client, _listener, _mechanism)
            setattr(CyrusSASLTests, _cyrus.__name__, _cyrus)


class StdlibTests(SynchronousTestCase):
    """Python's imaplib, smtplib and poplib log in after TLS."""

    def setUp(self) -> None:
        self.interop = shared_gateway()

    def assert_logged(self, offset: int, listener: str, mechanism: str) -> None:
        line = logged_in_line(listener, mechanism)
        self.assertIn(line, self.interop.wait_for_log(offset, line))

    def test_imaplib_starttls_login(self) -> None:
        offset = self.interop.log_offset()
        c = imaplib.IMAP4("127.0.0.1", self.interop.port("imap"), timeout=10)
        try:
            c.starttls(ssl_context=self.interop.context())
            typ, data = c.login(ALICE, ALICE_PASSWORD)
            self.assertEqual(typ, "OK")
            self.assertIn(b"logged in", data[-1])
        finally:
            c.logout()
        self.assert_logged(offset, "imap", "PASSWORD")

    def test_imaplib_ssl_cram_md5(self) -> None:
        offset = self.interop.log_offset()
        with imaplib.IMAP4_SSL("127.0.0.1", self.interop.port("imaps"),
                               ssl_context=self.interop.context(), timeout=10) as c:
            self.assertEqual(c.login_cram_md5(ALICE, ALICE_PASSWORD)[0], "OK")
        self.assert_logged(offset, "imaps", "CRAM-MD5")

    def test_imaplib_ssl_authenticate_plain(self) -> None:
        offset = self.interop.log_offset()
        with imaplib.IMAP4_SSL("127.0.0.1", self.interop.port("imaps"),
                               ssl_context=self.interop.context(), timeout=10) as c:
            typ, _ = c.authenticate("PLAIN", lambda _: f"\0{ALICE}\0{ALICE_PASSWORD}".encode())
            self.assertEqual(typ, "OK")
        self.assert_logged(offset, "imaps", "PLAIN")

    def smtp_login(self, listener: str, mechanism: str, initial_response_ok: bool = True) -> None:
        offset = self.interop.log_offset()
        port = self.interop.port(listener)
        if listener == "smtps":
            c: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="client.test",
                                               context=self.interop.context(), timeout=10)
        else:
            c = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10)
        try:
            if listener != "smtps":
                c.starttls(context=self.interop.context())
            c.ehlo()
            self.assertIn(mechanism, c.esmtp_features["auth"].split())
            c.user, c.password = ALICE, ALICE_PASSWORD
            method: Any = {"CRAM-MD5": c.auth_cram_md5, "PLAIN": c.auth_plain,
                           "LOGIN": c.auth_login}[mechanism]
            code, _ = c.auth(mechanism, method, initial_response_ok=initial_response_ok)
            self.assertEqual(code, 235)
        finally:
            c.quit()
        self.assert_logged(offset, listener, mechanism)

    def test_smtplib_submission_cram_md5(self) -> None:
        self.smtp_login("submission", "CRAM-MD5")

    def test_smtplib_submission_plain(self) -> None:
        self.smtp_login("submission", "PLAIN")

    def test_smtplib_submission_plain_without_initial_response(self) -> None:
        self.smtp_login("submission", "PLAIN", initial_response_ok=False)

    def test_smtplib_submission_login(self) -> None:
        self.smtp_login("submission", "LOGIN")

    def test_smtplib_smtps_cram_md5(self) -> None:
        self.smtp_login("smtps", "CRAM-MD5")

    def test_smtplib_smtps_plain(self) -> None:
        self.smtp_login("smtps", "PLAIN")

    def test_smtplib_smtps_login(self) -> None:
        self.smtp_login("smtps", "LOGIN", initial_response_ok=False)

    def test_poplib_stls_user_pass(self) -> None:
        offset = self.interop.log_offset()
        c = poplib.POP3("127.0.0.1", self.interop.port("pop3"), timeout=10)
        try:
            c.stls(context=self.interop.context())
            c.user(ALICE)
            self.assertTrue(c.pass_(ALICE_PASSWORD).startswith(b"+OK"))
        finally:
            c.quit()
        self.assert_logged(offset, "pop3", "user")

    def test_poplib_ssl_apop(self) -> None:
        offset = self.interop.log_offset()
        c = poplib.POP3_SSL("127.0.0.1", self.interop.port("pop3s"),
                            context=self.interop.context(), timeout=10)
        try:
            self.assertTrue(c.apop(ALICE, ALICE_PASSWORD).startswith(b"+OK"))
        finally:
            c.quit()
        self.assert_logged(offset, "pop3s", "apop")


class StdlibRefusalTests(SynchronousTestCase):
    """
    With the default configuration, Python's clients cannot send a password
    before TLS; on the same connection, after the upgrade, they can.
    """

    def setUp(self) -> None:
        self.interop = shared_gateway("")

    def test_imaplib_login_before_starttls(self) -> None:
        c = imaplib.IMAP4("127.0.0.1", self.interop.port("imap"), timeout=10)
        try:
            self.assertIn("LOGINDISABLED", c.capabilities)
            with self.assertRaises(imaplib.IMAP4.error) as caught:
                c.login(ALICE, ALICE_PASSWORD)
            self.assertIn("[PRIVACYREQUIRED]", str(caught.exception))
            c.starttls(ssl_context=self.interop.context())
            self.assertEqual(c.login(ALICE, ALICE_PASSWORD)[0], "OK")
        finally:
            c.logout()

    def test_poplib_user_before_stls(self) -> None:
        c = poplib.POP3("127.0.0.1", self.interop.port("pop3"), timeout=10)
        try:
            self.assertNotIn("USER", c.capa())
            with self.assertRaises(poplib.error_proto) as caught:
                c.user(ALICE)
            self.assertTrue(caught.exception.args[0].startswith(b"-ERR [AUTH]"), caught.exception)
            c.stls(context=self.interop.context())
            c.user(ALICE)
            self.assertTrue(c.pass_(ALICE_PASSWORD).startswith(b"+OK"))
        finally:
            c.quit()

    def test_poplib_auth_plain_before_stls(self) -> None:
        c = poplib.POP3("127.0.0.1", self.interop.port("pop3"), timeout=10)
        try:
            self.assertNotIn("PLAIN", c.capa().get("SASL", []))
            response = base64.b64encode(f"\0{ALICE}\0{ALICE_PASSWORD}".encode()).decode()
            for command in ("AUTH PLAIN " + response, "AUTH LOGIN"):
                with self.assertRaises(poplib.error_proto) as caught:
                    c._shortcmd(command)  # type: ignore[attr-defined]
                self.assertTrue(caught.exception.args[0].startswith(b"-ERR [AUTH]"),
                                caught.exception)
            c.stls(context=self.interop.context())
            reply = c._shortcmd("AUTH PLAIN " + response)  # type: ignore[attr-defined]
            self.assertTrue(reply.startswith(b"+OK"), reply)
        finally:
            c.quit()

    def test_smtplib_plain_before_starttls(self) -> None:
        """On submission and on the MX listener, which offers AUTH too."""
        for listener in ("submission", "smtp"):
            c = smtplib.SMTP("127.0.0.1", self.interop.port(listener),
                             local_hostname="client.test", timeout=10)
            try:
                c.ehlo()
                c.user, c.password = ALICE, ALICE_PASSWORD
                for mechanism, method in (("PLAIN", c.auth_plain), ("LOGIN", c.auth_login)):
                    self.assertNotIn(mechanism, c.esmtp_features.get("auth", "").split())
                    with self.assertRaises(smtplib.SMTPAuthenticationError) as caught:
                        c.auth(mechanism, method, initial_response_ok=True)
                    self.assertEqual(caught.exception.smtp_code, 538, listener)
                    self.assertTrue(caught.exception.smtp_error.startswith(b"5.7.11 "))
                c.starttls(context=self.interop.context())
                c.ehlo()
                self.assertEqual(c.auth("PLAIN", c.auth_plain)[0], 235, listener)
            finally:
                c.quit()

