"""
End to end: the real plugin under twistd, seven listeners on 127.0.0.1, and
real clients (Python's ssl, smtplib, poplib, imaplib, and openssl s_client)
verifying the generated CA and the host name.
"""

from __future__ import annotations

import imaplib
import poplib
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time

from cryptography import x509
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.gatewayprocess import ROLES, TWISTD, GatewayProcess, environment
from tests.support import ROOT, make_certs

OPENSSL = shutil.which("openssl")


def verifying_context(ca: object) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def serial_of(sock: ssl.SSLSocket) -> int:
    return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True)).serial_number


class RunningGatewayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gateway = GatewayProcess()
        self.addCleanup(self.gateway.stop)
        self.gateway.start()

    def context(self) -> ssl.SSLContext:
        return verifying_context(self.gateway.certs.ca_certificate)

    def port(self, name: str) -> int:
        return self.gateway.ports[name]

    def test_implicit_listeners_verified_handshake(self) -> None:
        greetings = {"smtps": b"220 ", "pop3s": b"+OK ", "imaps": b"* OK "}
        for name, prefix in greetings.items():
            for host in ("localhost", "127.0.0.1"):
                with socket.create_connection(("127.0.0.1", self.port(name)), timeout=10) as raw:
                    with self.context().wrap_socket(raw, server_hostname=host) as s:
                        self.assertIn(s.version(), ("TLSv1.2", "TLSv1.3"))
                        self.assertTrue(s.recv(1024).startswith(prefix), name)

    def test_implicit_wrong_name_refused(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port("imaps")), timeout=10) as raw:
            with self.assertRaises(ssl.SSLCertVerificationError):
                self.context().wrap_socket(raw, server_hostname="mail.elsewhere.example")

    def test_smtp_starttls(self) -> None:
        for name in ("smtp", "submission"):
            with smtplib.SMTP("127.0.0.1", self.port(name), local_hostname="client.test", timeout=10) as c:
                c.ehlo()
                self.assertTrue(c.has_extn("starttls"))
                code, _ = c.starttls(context=self.context())
                self.assertEqual(code, 220)
                c.ehlo()
                self.assertFalse(c.has_extn("starttls"))
                code, msg = c.docmd("STARTTLS")
                self.assertEqual(code, 503)

    def test_pop3_stls(self) -> None:
        c = poplib.POP3("127.0.0.1", self.port("pop3"), timeout=10)
        try:
            self.assertIn("STLS", c.capa())
            self.assertNotIn("USER", c.capa())
            c.stls(context=self.context())
            caps = c.capa()
            self.assertNotIn("STLS", caps)
            self.assertIn("USER", caps)
            with self.assertRaises(poplib.error_proto):
                c._shortcmd("STLS")
        finally:
            c.quit()

    def test_imap_starttls(self) -> None:
        c = imaplib.IMAP4("127.0.0.1", self.port("imap"), timeout=10)
        try:
            self.assertIn("LOGINDISABLED", c.capabilities)
            c.starttls(ssl_context=self.context())
            self.assertNotIn("LOGINDISABLED", c.capabilities)
            self.assertNotIn("STARTTLS", c.capabilities)
            tag = c._new_tag()
            c.send(tag + b" STARTTLS\r\n")
            reply = c.readline()
            self.assertTrue(reply.startswith(tag + b" BAD"), reply)
        finally:
            c.logout()

    def test_openssl_s_client_every_listener(self) -> None:
        if OPENSSL is None:
            raise SkipTest("openssl not installed (make test installs it)")
        for name, (role, tls) in ROLES.items():
            args = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{self.port(name)}",
                    "-CAfile", str(self.gateway.certs.ca_certificate),
                    "-verify_hostname", "localhost", "-verify_return_error", "-brief"]
            if tls == "starttls":
                args[2:2] = ["-starttls", {"mx": "smtp", "submission": "smtp"}.get(role, role)]
            result = subprocess.run(args, input=b"", capture_output=True, timeout=20)
            output = result.stdout + result.stderr
            self.assertIn(b"CONNECTION ESTABLISHED", output, (name, output))
            self.assertIn(b"Verification: OK", output, (name, output))

    def test_starttls_injection_on_the_wire(self) -> None:
        """IMAP: a command pipelined after STARTTLS is never answered."""
        with socket.create_connection(("127.0.0.1", self.port("imap")), timeout=10) as raw:
            f = raw.makefile("rb")
            f.readline()
            raw.sendall(b"a STARTTLS\r\nb CAPABILITY\r\n")
            self.assertEqual(f.readline(), b"a OK Begin TLS negotiation now\r\n")
            tls = self.context().wrap_socket(raw, server_hostname="localhost")
            tls.sendall(b"c NOOP\r\n")
            answer = tls.recv(1024)
            self.assertEqual(answer, b"c OK NOOP completed\r\n")
            tls.close()


class LifecycleTests(SynchronousTestCase):
    def test_sighup_reload(self) -> None:
        """A new connection sees the new certificate; an old one still answers."""
        gw = GatewayProcess()
        self.addCleanup(gw.stop)
        gw.start()
        ctx = verifying_context(gw.certs.ca_certificate)
        old = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.ports["imaps"]), timeout=10),
                              server_hostname="localhost")
        self.addCleanup(old.close)
        old_file = old.makefile("rb")
        old_file.readline()
        before = serial_of(old)

        renewed = make_certs(gw.dir / "renewed", "localhost")
        shutil.copy(renewed.certificate, gw.certs.certificate)
        shutil.copy(renewed.key, gw.certs.key)
        gw.signal(signal.SIGHUP)
        new_ctx = verifying_context(renewed.ca_certificate)
        deadline = time.monotonic() + 10
        after = before
        while after == before and time.monotonic() < deadline:
            time.sleep(0.1)
            try:
                raw = socket.create_connection(("127.0.0.1", gw.ports["imaps"]), timeout=10)
                with new_ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    after = serial_of(s)
            except ssl.SSLError:
                continue
        self.assertNotEqual(after, before)
        old.sendall(b"x NOOP\r\n")
        self.assertEqual(old_file.readline(), b"x OK NOOP completed\r\n")

    def test_sigterm_says_goodbye_and_stops_cleanly(self) -> None:
        gw = GatewayProcess()
        self.addCleanup(gw.stop)
        gw.start()
        sock = socket.create_connection(("127.0.0.1", gw.ports["imap"]), timeout=10)
        self.addCleanup(sock.close)
        f = sock.makefile("rb")
        f.readline()
        gw.signal(signal.SIGTERM)
        self.assertEqual(f.readline(), b"* BYE [UNAVAILABLE] server shutting down\r\n")
        # twistd re-raises SIGTERM after a clean stop so supervisors see it.
        self.assertIn(gw.process.wait(20), (0, -signal.SIGTERM))
        log = gw.log.read_text()
        self.assertIn("Server Shut Down", log)
        self.assertNotIn("Traceback", log)

    def test_bind_failure_stops_the_start(self) -> None:
        first = GatewayProcess()
        self.addCleanup(first.stop)
        first.start()
        second = GatewayProcess(ports=dict(first.ports))
        self.addCleanup(second.stop)
        second.start(wait=False)
        code = second.process.wait(30)
        self.assertNotEqual(code, 0)
        log = second.log.read_text()
        self.assertIn("cannot listen", log)
        self.assertNotIn("Traceback", log)

    def test_config_error_exits_nonzero_before_listening(self) -> None:
        gw = GatewayProcess(extra="[limits]\nmax_lines = 1\n")
        self.addCleanup(gw.stop)
        gw.start(wait=False)
        self.assertEqual(gw.process.wait(30), 1)
        log = gw.log.read_text()
        self.assertIn("limits.max_lines: unknown key", log)
        self.assertNotIn("Traceback", log)


class PluginTests(SynchronousTestCase):
    def test_pip_install_finds_plugin(self) -> None:
        """
        After a plain (non-editable) install, twistd's plugin discovery finds
        the plugin from the installed files alone, not from the checkout.
        """
        import sys
        import tempfile

        target = tempfile.mkdtemp(prefix="mailgateway-install-")
        self.addCleanup(shutil.rmtree, target, True)
        build = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
             "--target", target, str(ROOT)],
            capture_output=True, timeout=300, cwd="/")
        self.assertEqual(build.returncode, 0, build.stderr.decode())
        probe = (
            "import sys\n"
            f"sys.path = [p for p in sys.path if p.rstrip('/') != {str(ROOT)!r}]\n"
            f"sys.path.insert(0, {target!r})\n"
            "from twisted.plugin import getPlugins\n"
            "from twisted.application.service import IServiceMaker\n"
            "import gateway\n"
            "print(gateway.__file__)\n"
            "print(sorted(p.tapname for p in getPlugins(IServiceMaker)))\n"
        )
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=120, cwd="/")
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        self.assertIn(target.encode(), out.stdout.splitlines()[0])
        self.assertIn(b"'mailgateway'", out.stdout)

    def test_twistd_finds_plugin_in_checkout(self) -> None:
        out = subprocess.run([TWISTD, "--help"], capture_output=True, env=environment(),
                             cwd="/", timeout=60)
        self.assertIn(b"mailgateway", out.stdout)

    def test_plugin_help(self) -> None:
        out = subprocess.run([TWISTD, "mailgateway", "--help"], capture_output=True,
                             env=environment(), cwd=str(ROOT), timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(b"--config", out.stdout)
        self.assertIn(b"SIGHUP", out.stdout)
