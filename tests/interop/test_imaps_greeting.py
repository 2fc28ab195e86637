"""
The greeting of an implicit-TLS IMAP listener, and what a client that
believes it can do: the regression tests of a fixed bug (see
L{ImplicitTLSGreetingTests}).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import socket
import ssl

from twisted.trial.unittest import SynchronousTestCase

from tests.interop.gateways import ALICE, ALICE_PASSWORD, own_gateway, shared_gateway


def scram_sha256_y(sock: socket.socket, user: str, password: str) -> bytes:
    """
    IMAP C{AUTHENTICATE SCRAM-SHA-256} with the gs2 flag C{y}: "I can bind
    the channel but you did not offer -PLUS" (RFC 5802 section 6), what a
    binding-capable client says to a server whose capabilities had no
    -PLUS.  Returns the gateway's last line.
    """
    f = sock.makefile("rb")
    nonce = base64.b64encode(os.urandom(18)).decode()
    bare = f"n={user},r={nonce}"
    sock.sendall(b"y1 AUTHENTICATE SCRAM-SHA-256 " + base64.b64encode(f"y,,{bare}".encode()) + b"\r\n")
    line = f.readline()
    if not line.startswith(b"+ "):
        return line
    server_first = base64.b64decode(line[2:]).decode()
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(fields["s"]),
                                 int(fields["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = f"c={base64.b64encode(b'y,,').decode()},r={fields['r']}"
    message = f"{bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), message, "sha256")
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
    sock.sendall(base64.b64encode(f"{without_proof},p={proof}".encode()) + b"\r\n")
    line = f.readline()
    if line.startswith(b"+ "):
        sock.sendall(b"\r\n")
        line = f.readline()
    return line


class ImplicitTLSGreetingTests(SynchronousTestCase):
    """
    Regression (fixed: the greeting now waits for the handshake).  It was
    written from C{connectionMade}, before the TLS handshake has completed
    and before C{BaseProtocol._read_tls_state} has read the channel binding
    and the client certificate (C{handshakeCompleted}).  So its
    C{[CAPABILITY ...]} lacks C{AUTH=SCRAM-*-PLUS} and C{AUTH=EXTERNAL},
    which a C{CAPABILITY} command on the same connection lists.  A client
    may rely on the greeting's capabilities (RFC 3501 section 7.1, RFC 9051
    section 7.1: it saves a round trip); one that can bind the channel then
    says SCRAM-SHA-256 with the flag C{y}, and the gateway, which computes
    C{plus_advertised} from what it would offer I{now}
    (C{registry.create}), refuses it as a downgrade.
    """

    BUG = ("imaps greeting written before the TLS handshake: no -PLUS, no EXTERNAL "
           "(gateway/protocol.py BaseProtocol.connectionMade -> IMAPServer.greet)")

    def greeting_and_capability(self, sock: socket.socket) -> tuple[list[str], list[str]]:
        f = sock.makefile("rb")
        greeting = f.readline().decode()
        sock.sendall(b"c1 CAPABILITY\r\n")
        listed = f.readline().decode()
        self.assertEqual(f.readline(), b"c1 OK CAPABILITY completed\r\n")
        match = re.match(r"\* OK \[CAPABILITY ([^\]]*)\]", greeting)
        assert match is not None, greeting
        return match.group(1).split(), listed.split()[2:]

    def test_greeting_lists_what_capability_lists(self) -> None:
        interop = shared_gateway()
        raw = socket.create_connection(("127.0.0.1", interop.port("imaps")), timeout=10)
        with interop.context(client_certificate=True).wrap_socket(
                raw, server_hostname="localhost") as sock:
            self.assertEqual(sock.version(), "TLSv1.3")
            greeting, listed = self.greeting_and_capability(sock)
        self.assertIn("AUTH=SCRAM-SHA-256-PLUS", listed)
        self.assertIn("AUTH=EXTERNAL", listed)
        self.assertEqual(greeting, listed)


    def y_flag_login(self, tls12: bool = False) -> tuple[bytes, bytes]:
        """The greeting, and the answer to SCRAM-SHA-256 with C{y} right after
        it, on a gateway of its own (the answer may be a failed login)."""
        interop = own_gateway(self)
        context = interop.context()
        if tls12:
            context.maximum_version = ssl.TLSVersion.TLSv1_2
        raw = socket.create_connection(("127.0.0.1", interop.port("imaps")), timeout=10)
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            greeting = sock.makefile("rb").readline()
            return greeting, scram_sha256_y(sock, ALICE, ALICE_PASSWORD)

    def test_y_flag_after_a_greeting_without_plus(self) -> None:
        """A client that believed the greeting can log in with SCRAM (and
        one that saw -PLUS there and says C{y} is a downgrade)."""
        greeting, reply = self.y_flag_login()
        if b"AUTH=SCRAM-SHA-256-PLUS" in greeting:
            self.assertRegex(reply, rb"^y1 NO ")
        else:
            self.assertRegex(reply, rb"^y1 OK .*logged in")


    def test_y_flag_over_tls12(self) -> None:
        """The control: over TLS 1.2 nothing offers -PLUS, and C{y} logs in."""
        greeting, reply = self.y_flag_login(tls12=True)
        self.assertNotIn(b"-PLUS", greeting)
        self.assertRegex(reply, rb"^y1 OK .*logged in")
