"""
SASL GSSAPI (RFC 4752) over the wire, against the real gateway under twistd,
with a real Kerberos realm (L{tests.krb5realm}: an MIT KDC on 127.0.0.1,
alice's ticket in a credential cache, the service keys for C{imap/localhost},
C{smtp/localhost} and C{pop/localhost} in a keytab).

The realm is started first, so that the process environment it sets
(C{KRB5_CONFIG}, C{KRB5CCNAME}, C{KRB5_KTNAME}, C{KRB5RCACHEDIR}, ...) is
what the gateway child inherits (L{tests.gatewayprocess.environment} copies
C{os.environ}) and what the clients run with; the gateway is given the keytab
with C{[auth] gssapi_keytab} and maps C{alice@MAILGATEWAY.TEST} to
C{alice@example.test}.

Clients:
  - IMAP (STARTTLS, and implicit TLS relayed) and SMTP submission
    (STARTTLS, and smtps relayed): GNU SASL's C{gsasl} with its GSSAPI
    client (MIT Kerberos underneath);
  - POP3: gsasl has no POP3 mode.  The Cyrus C{pop3test} with the GSSAPI
    plugin (Debian C{libsasl2-modules-gssapi-mit}) when it is installed, and
    always the C{gssapi} Python package (MIT's library) as the initiator,
    speaking RFC 5034 AUTH over poplib's connection after STLS, and over the
    implicit-TLS listener.

A login counts only when the client says so (exit status / transcript /
reply) I{and} the gateway logged
C{"<listener>: 127.0.0.1 logged in as alice@example.test (GSSAPI)"}.
"""

from __future__ import annotations

import base64
import glob
import os
import poplib
import re

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.interop import clients
from tests.interop.clients import Run
from tests.interop.gateways import ALICE, Interop, own_gateway
from tests.krb5realm import KerberosRealm, start_realm

try:
    import gssapi
except ImportError:  # start_realm() skips the tests then
    gssapi = None  # type: ignore[assignment]

MECHANISM = "GSSAPI"

#: RFC 4752 section 3.1: no security layer.
NO_SECURITY_LAYER = 1

#: The Cyrus SASL GSSAPI client plugin and the Debian package that ships it.
CYRUS_GSSAPI_PLUGIN = "libgssapiv2.so*"
CYRUS_GSSAPI_PACKAGE = "libsasl2-modules-gssapi-mit"


def gssapi_auth(keytab: str) -> str:
    return (f'gssapi_keytab = "{keytab}"\n'
            'mechanisms = ["GSSAPI", "SCRAM-SHA-256", "PLAIN"]')


def logged_in_line(listener: str) -> str:
    return f"{listener}: 127.0.0.1 logged in as {ALICE} ({MECHANISM})"


def require_gsasl_gssapi() -> None:
    listed = clients._run([clients.program("gsasl"), "--client-mechanisms"]).stdout
    if MECHANISM not in listed.split():
        raise SkipTest("this gsasl has no GSSAPI client (built without a GSS-API library)")


def require_cyrus_gssapi() -> None:
    clients.program("pop3test")
    for pattern in ("/usr/lib/*/sasl2", "/usr/lib/sasl2", "/usr/lib64/sasl2"):
        if glob.glob(os.path.join(pattern, CYRUS_GSSAPI_PLUGIN)):
            return
    raise SkipTest(f"no Cyrus SASL GSSAPI client plugin: apt-get install "
                   f"--no-install-recommends {CYRUS_GSSAPI_PACKAGE}")


class RFC4752Initiator:
    """The client side of RFC 4752 section 3.1 on the C{gssapi} package."""

    def __init__(self, realm: KerberosRealm, service: str) -> None:
        target = gssapi.Name(f"{service}@localhost", gssapi.NameType.hostbased_service)
        creds = gssapi.Credentials(usage="initiate", store={"ccache": realm.ccache})
        self.context = gssapi.SecurityContext(name=target, creds=creds, usage="initiate")
        self.offer: bytes | None = None

    def first(self) -> bytes:
        return self.context.step()

    def answer(self, challenge: bytes) -> bytes:
        if not self.context.complete:
            return self.context.step(challenge) or b""
        self.offer = self.context.unwrap(challenge).message
        return self.context.wrap(bytes([NO_SECURITY_LAYER, 0, 0, 0]), False).message


class GSSAPIWireTests(SynchronousTestCase):
    """alice logs in with GSSAPI on each protocol, with real clients."""

    def setUp(self) -> None:
        # The realm first: its environment reaches the gateway child.
        self.realm = start_realm(self)
        self.interop: Interop = own_gateway(self, auth=gssapi_auth(str(self.realm.keytab)))

    def assertLoggedIn(self, listener: str, offset: int, context: object = "") -> None:
        line = logged_in_line(listener)
        log = self.interop.wait_for_log(offset, line)
        self.assertIn(line, log, f"{context}\n--- gateway log\n{log}")

    # -- gsasl: IMAP and SMTP --------------------------------------------------

    def gsasl(self, listener: str, protocol: str, service: str, tls: str) -> Run:
        require_gsasl_gssapi()
        options = [f"--service={service}"]
        if tls == "starttls":
            return clients.gsasl(protocol, self.interop.port(listener), MECHANISM,
                                 ca=self.interop.ca, options=options)
        return clients.gsasl_over_tls(protocol, self.interop.port(listener), MECHANISM,
                                      context=self.interop.context(), options=options)

    def check_gsasl(self, listener: str, protocol: str, service: str, tls: str) -> None:
        offset = self.interop.log_offset()
        run = self.gsasl(listener, protocol, service, tls)
        self.assertEqual(run.status, 0, run)
        if protocol == "imap":
            self.assertRegex(run.stdout, re.compile(r"^\* CAPABILITY .*AUTH=GSSAPI", re.M), run)
            self.assertRegex(run.stdout, re.compile(r"^\. AUTHENTICATE GSSAPI\r?$", re.M), run)
            self.assertRegex(run.stdout, re.compile(r"^\. OK .*logged in\r?$", re.M), run)
        else:
            self.assertRegex(run.stdout, re.compile(r"^250[ -]AUTH .*\bGSSAPI\b", re.M), run)
            self.assertRegex(run.stdout, re.compile(r"^AUTH GSSAPI\r?$", re.M), run)
            self.assertRegex(run.stdout, re.compile(r"^235 ", re.M), run)
        if tls == "starttls":
            self.assertIn("The certificate is trusted", run.stderr, run)
        self.assertLoggedIn(listener, offset, run)

    def test_imap_starttls_gsasl(self) -> None:
        """gsasl GSSAPI on the IMAP listener after STARTTLS."""
        self.check_gsasl("imap", "imap", "imap", "starttls")

    def test_imaps_gsasl(self) -> None:
        """gsasl GSSAPI on the implicit-TLS IMAP listener (relayed)."""
        self.check_gsasl("imaps", "imap", "imap", "implicit")

    def test_submission_starttls_gsasl(self) -> None:
        """gsasl GSSAPI on the submission listener after STARTTLS."""
        self.check_gsasl("submission", "smtp", "smtp", "starttls")

    def test_smtps_gsasl(self) -> None:
        """gsasl GSSAPI on the implicit-TLS submission listener (relayed)."""
        self.check_gsasl("smtps", "smtp", "smtp", "implicit")

    # -- POP3 --------------------------------------------------------------------

    def pop3_gssapi(self, client: poplib.POP3) -> tuple[bytes, RFC4752Initiator]:
        """RFC 5034 AUTH GSSAPI (no initial response) with the gssapi package."""
        self.assertIn(MECHANISM, client.capa().get("SASL", []))
        initiator = RFC4752Initiator(self.realm, "pop")
        client._putcmd("AUTH GSSAPI")  # type: ignore[attr-defined]
        first = True
        for _ in range(10):
            # -ERR raises error_proto.
            reply = client._getresp()  # type: ignore[attr-defined]
            if not reply.startswith(b"+ ") and reply != b"+":
                return reply, initiator
            challenge = base64.b64decode(reply[2:])
            if first:
                # RFC 4422 section 5: the empty challenge asks for the first token.
                self.assertEqual(challenge, b"", reply)
                response, first = initiator.first(), False
            else:
                response = initiator.answer(challenge)
            client._putcmd(base64.b64encode(response).decode())  # type: ignore[attr-defined]
        self.fail(f"no end to the GSSAPI exchange (last offer {initiator.offer!r})")

    def check_pop3_python(self, listener: str, tls: str) -> None:
        offset = self.interop.log_offset()
        if tls == "starttls":
            c = poplib.POP3("127.0.0.1", self.interop.port(listener), timeout=10)
            c.stls(context=self.interop.context())
        else:
            c = poplib.POP3_SSL("127.0.0.1", self.interop.port(listener), timeout=10,
                                context=self.interop.context())
        try:
            reply, initiator = self.pop3_gssapi(c)
            self.assertTrue(reply.startswith(b"+OK"), reply)
            # RFC 4752 section 3.1: the server's wrapped offer, no layer, size 0.
            self.assertEqual(initiator.offer, bytes([NO_SECURITY_LAYER, 0, 0, 0]))
            self.assertTrue(c.stat()[0] >= 0)
        finally:
            c.quit()
        self.assertLoggedIn(listener, offset, reply)

    def test_pop3_stls_python_gssapi(self) -> None:
        """The gssapi package (MIT) as the client, POP3 AUTH after STLS."""
        self.check_pop3_python("pop3", "starttls")

    def test_pop3s_python_gssapi(self) -> None:
        """The gssapi package (MIT) as the client, on the implicit-TLS listener."""
        self.check_pop3_python("pop3s", "implicit")

    def test_pop3_stls_pop3test(self) -> None:
        """Cyrus pop3test with its GSSAPI plugin, after STLS."""
        require_cyrus_gssapi()
        offset = self.interop.log_offset()
        run = clients.cyrus("pop3test", self.interop.port("pop3"), MECHANISM, tls="starttls",
                            user=ALICE, commands="QUIT\r\n")
        self.assertIn("AUTH GSSAPI", run.stdout, run)
        self.assertRegex(run.stdout, re.compile(r"^S: \+OK logged in", re.M), run)
        self.assertLoggedIn("pop3", offset, run)
