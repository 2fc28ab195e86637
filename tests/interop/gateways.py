# -*- test-case-name: tests.interop.test_sasl_clients -*-
"""
Running gateways for the interoperability tests (L{GatewayProcess}, the
real plugin under twistd), with what the clients need besides: alice's
client certificate for EXTERNAL, optionally an OTP sequence, and a look at
the gateway's log.

A test either starts its own (L{own_gateway}: stopped by its cleanup) or
borrows one shared by every test of the process that asks for the same
configuration (L{shared_gateway}: started on first use, stopped when the
process exits).  Only tests that change no state and make no failed login
share one: the OTP sequence moves, and failures feed the throttle.
"""

from __future__ import annotations

import atexit
import io
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway import certs
from gateway.auth import usercli
from gateway.auth.usersfile import UsersFile
from gateway.auth.verifiers import OTPState
from tests.gatewayprocess import ACCOUNTS, GatewayProcess

ALICE, ALICE_PASSWORD, _ = ACCOUNTS[0]

#: Every mechanism the gateway has, GSSAPI aside (it needs a KDC).  The
#: default list leaves out the ones that need a password-equivalent secret
#: (CRAM-MD5, DIGEST-MD5, APOP) and OTP.
EVERY_MECHANISM = (
    "SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-1",
    "DIGEST-MD5", "CRAM-MD5", "OTP", "PLAIN", "LOGIN", "EXTERNAL", "APOP",
)  # fmt: skip
EVERY_MECHANISM_AUTH = "mechanisms = [{}]".format(", ".join(f'"{m}"' for m in EVERY_MECHANISM))

#: alice's OTP set-up: RFC 2289 pass phrase (10+ characters, not her
#: password), seed and count; the first challenge asks for count - 1.
OTP_PASSPHRASE = "interop otp pass phrase"
OTP_SEED = "mg42"
OTP_COUNT = 99


@dataclass
class Interop:
    """A gateway and the files its clients use."""

    gateway: GatewayProcess
    #: alice's client certificate and key, issued by the gateway's CA.
    client: certs.CertPaths
    #: The same certificate and key in one PEM file (Cyrus C{-t}).
    client_pem: Path

    @property
    def ca(self) -> Path:
        return self.gateway.certs.ca_certificate

    def port(self, listener: str) -> int:
        return self.gateway.ports[listener]

    def context(self, client_certificate: bool = False) -> ssl.SSLContext:
        """A client context that verifies the gateway against its CA."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if client_certificate:
            ctx.load_cert_chain(str(self.client.certificate), str(self.client.key))
        return ctx

    def log_offset(self) -> int:
        return self.gateway.log.stat().st_size

    def wait_for_log(self, offset: int, text: str, timeout: float = 3.0) -> str:
        """
        The log written since C{offset}, once it contains C{text} (the
        gateway may write the line just after its reply), or as it is at
        the timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self.gateway.log.open("rb") as f:
                f.seek(offset)
                written = f.read().decode("utf-8", "replace")
            if text in written or time.monotonic() > deadline:
                return written
            time.sleep(0.02)

    def otp_state(self, account: str = ALICE) -> OTPState | None:
        """alice's OTP state as the users file holds it now."""
        return UsersFile(str(self.gateway.users)).load().accounts[account].otp


def init_otp(users: Path, account: str = ALICE, passphrase: str = OTP_PASSPHRASE,
             seed: str = OTP_SEED, count: int = OTP_COUNT) -> None:
    """Set an OTP sequence with the real admin command."""
    out, err = io.StringIO(), io.StringIO()
    status = usercli.main(
        ["user", "otp-init", account, "--users", str(users), "--password-stdin",
         "--seed", seed, "--count", str(count), "--algorithm", "md5"],
        out, err, stdin=io.StringIO(passphrase + "\n"))
    if status != 0:
        raise RuntimeError(err.getvalue())


def _prepare(auth: str, otp: bool) -> Interop:
    gw = GatewayProcess(auth=auth)
    client = certs.issue_client_certificate(gw.dir / "certs", ALICE)
    pem = gw.dir / "alice-certificate-and-key.pem"
    pem.write_bytes(client.certificate.read_bytes() + client.key.read_bytes())
    pem.chmod(0o600)
    if otp:
        init_otp(gw.users)
    return Interop(gw, client, pem)


def own_gateway(test: SynchronousTestCase, auth: str = EVERY_MECHANISM_AUTH,
                otp: bool = False) -> Interop:
    """A gateway for C{test} alone, stopped by its cleanup."""
    interop = _prepare(auth, otp)
    test.addCleanup(interop.gateway.stop)
    interop.gateway.start()
    return interop


_SHARED: dict[str, Interop] = {}


def shared_gateway(auth: str = EVERY_MECHANISM_AUTH) -> Interop:
    """
    The gateway with the C{[auth]} lines C{auth} that this process shares,
    started on first use.  Its users must not change it: no OTP, no failed
    logins.
    """
    interop = _SHARED.get(auth)
    if interop is None or interop.gateway.process is None \
            or interop.gateway.process.poll() is not None:
        interop = _prepare(auth, otp=False)
        try:
            interop.gateway.start()
        except BaseException:
            interop.gateway.stop()
            raise
        _SHARED[auth] = interop
    return interop


@atexit.register
def _stop_shared() -> None:
    for interop in _SHARED.values():
        interop.gateway.stop()
    _SHARED.clear()
