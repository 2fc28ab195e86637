"""
Shared test helpers: certificates, configurations and in-memory TLS
handshakes.  Working code, used by several test modules.
"""

from __future__ import annotations

import socket
import ssl
import textwrap
import tomllib
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet.testing import StringTransport

from gateway import certs
from gateway.config import GatewayConfig, parse

ROOT = Path(__file__).resolve().parent.parent


def make_certs(directory: Path, *hostnames: str) -> certs.CertPaths:
    """A CA and a server certificate for C{hostnames} (default localhost)."""
    directory.mkdir(parents=True, exist_ok=True)
    return certs.init_certificates(directory, list(hostnames) or ["localhost"])


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """C{count} distinct free ports (all held open while choosing, so the
    kernel cannot hand out one twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def config_text(cert_dir: Path, state_dir: Path, listeners: str, extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        [server]
        hostname = "localhost"
        state_dir = "{state_dir}"
        local_domains = ["example.test"]

        [tls.main]
        certificate = "{cert_dir / 'server.pem'}"
        private_key = "{cert_dir / 'server.key'}"
        client_ca = "{cert_dir / 'ca.pem'}"
        """
    ) + textwrap.dedent(extra) + textwrap.dedent(listeners)


def parse_text(text: str, where: Path) -> GatewayConfig:
    return parse(tomllib.loads(text), where / "gateway.toml")


class TLSStringTransport(StringTransport):
    """A StringTransport that records TLS upgrades instead of doing them."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.tls_started_with: Any = None

    def startTLS(self, context: Any) -> None:
        self.tls_started_with = context


def memory_handshake(server: SSL.Connection, client: ssl.SSLContext,
                     server_hostname: str | None) -> ssl.SSLObject:
    """
    Complete a TLS handshake between a pyOpenSSL server connection and a
    Python C{ssl} client entirely in memory.

    @raise ssl.SSLError: the client refused the server (verification).
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client.wrap_bio(incoming, outgoing, server_side=False,
                          server_hostname=server_hostname)
    server.set_accept_state()
    for _ in range(20):
        try:
            obj.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        data = outgoing.read()
        if data:
            server.bio_write(data)
        try:
            server.do_handshake()
        except SSL.WantReadError:
            pass
        try:
            while True:
                chunk = server.bio_read(65536)
                if not chunk:
                    break
                incoming.write(chunk)
        except SSL.WantReadError:
            pass
        if done:
            # Let the server see the client's last flight (finished, cert).
            try:
                server.do_handshake()
            except SSL.WantReadError:
                pass
            return obj
    raise AssertionError("handshake did not finish")


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx
