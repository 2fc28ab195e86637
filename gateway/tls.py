# -*- test-case-name: tests.test_tls -*-
"""
Per-listener TLS: one L{ServerTLS} object per TLS profile, used both for
implicit TLS (wrapping the listener's factory) and for in-band upgrades
(STARTTLS, STLS), so both count as the same encrypted connection (RFC 8314).

L{ServerTLS} is an C{IOpenSSLServerConnectionCreator}: every new connection
gets an C{SSL.Connection} on the I{current} context.  L{ServerTLS.reload}
rebuilds the contexts from the PEM files and swaps them in one assignment, so
after a SIGHUP new connections see new certificates while open connections
keep the context they were made with.

SNI: the profile's main certificate is the default; each extra certificate
serves the DNS names of its subjectAltName (exact names first, then one-label
wildcards).

Client certificates (for SASL EXTERNAL) are I{requested}, never required, and
an unknown or invalid one never breaks the handshake: OpenSSL's verdict is
ignored during the handshake, and L{verified_peer_certificate} checks the
chain against the client CA afterwards with C{cryptography}'s verifier: valid
now, and marked for client authentication (extendedKeyUsage clientAuth,
which must be present); a subjectAltName is optional, since the C{cn}
mapping and C{mailgateway certs client USER} without a domain do without.

Private keys are read by C{cryptography}, never by OpenSSL's PEM reader: an
encrypted key would make OpenSSL ask for a pass phrase on the terminal,
blocking the start, or a reload in the reactor thread.  A key that others
may read, or a certificate outside its validity, is accepted with a warning
(L{ServerTLS.warnings}), logged and shown by C{mailgateway check}.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import SSL
from OpenSSL.crypto import PKey
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from gateway.config import SNICertificate, TLSProfile

log = Logger()

_VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}

#: Mozilla's "intermediate" TLS 1.2 suites (TLS 1.3 suites are not affected
#: by this string): forward secrecy and AEAD only.
DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


class TLSSetupError(Exception):
    """A TLS profile's files cannot be used; the message says why."""


def _load_pem_certificates(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TLSSetupError(f"cannot read {path}: {e.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSSetupError(f"{path} holds no PEM certificate") from None
    return certs


def _load_private_key(path: Path) -> Any:
    """
    The unencrypted PEM private key in C{path}.

    @raise TLSSetupError: unreadable, encrypted, or no key.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TLSSetupError(f"cannot read {path}: {e.strerror}") from None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSSetupError(
            f"{path} is encrypted: the gateway needs the key unencrypted "
            "(readable by its user only)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSSetupError(f"{path} holds no usable PEM private key") from None


def _public_bytes(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo))


def _file_warnings(certificate: Path, private_key: Path, leaf: x509.Certificate) -> list[str]:
    """What is usable but wrong: a key others may read, a certificate out
    of its validity."""
    warnings = []
    try:
        mode = private_key.stat().st_mode
    except OSError:
        mode = 0
    if mode & 0o004:
        warnings.append(f"{private_key} is readable by every user (mode {mode & 0o777:o}); "
                        "chmod 600 it")
    now = datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc <= now:
        warnings.append(f"{certificate} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    elif leaf.not_valid_before_utc > now:
        warnings.append(f"{certificate} is not valid before "
                        f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    return warnings


def _server_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [name.lower() for name in san.value.get_values_for_type(x509.DNSName)]


def _build_context(
    certificate: Path,
    private_key: Path,
    chain: Path | None,
    profile: TLSProfile,
    session_id: bytes,
) -> tuple[SSL.Context, list[x509.Certificate]]:
    """
    One C{SSL.Context} for one certificate of a profile.

    @raise TLSSetupError: unreadable files, no certificate, or a key that does
        not match the certificate.
    """
    certs = _load_pem_certificates(certificate)
    if chain is not None:
        certs += _load_pem_certificates(chain)
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(_VERSIONS[profile.min_version])
    ctx.set_options(
        SSL.OP_NO_COMPRESSION
        | SSL.OP_CIPHER_SERVER_PREFERENCE
        | SSL.OP_NO_RENEGOTIATION
        | SSL.OP_SINGLE_ECDH_USE
    )
    # An idle connection gives its record buffers back (about 34 KiB each
    # otherwise; Twisted's CertificateOptions does the same): measured in
    # bench/imap_load.py with thousands of idle IMAP connections.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    try:
        ctx.set_cipher_list((profile.ciphers or DEFAULT_CIPHERS).encode("ascii"))
    except SSL.Error:
        raise TLSSetupError(f"tls.{profile.name}.ciphers: no usable cipher in {profile.ciphers!r}") from None
    key = _load_private_key(private_key)
    if _public_bytes(key.public_key()) != _public_bytes(certs[0].public_key()):
        raise TLSSetupError(
            f"the private key {private_key} does not match the certificate {certificate}")
    try:
        ctx.use_certificate(certs[0])
        for extra in certs[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(PKey.from_cryptography_key(key))
        ctx.check_privatekey()
    except SSL.Error as e:
        raise TLSSetupError(f"{private_key}: {_ssl_reason(e)}") from None
    except (TypeError, ValueError) as e:  # a key type pyOpenSSL cannot take
        raise TLSSetupError(f"{private_key}: {e}") from None
    ctx.set_session_id(session_id)
    if profile.client_ca is not None:
        # Ask for a certificate; accept any answer (or none).  The verdict is
        # reached after the handshake by verified_peer_certificate.
        ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: True)
        for ca in _load_pem_certificates(profile.client_ca):
            from OpenSSL.crypto import X509

            ctx.add_client_ca(X509.from_cryptography(ca))
    return ctx, certs


def _ssl_reason(error: SSL.Error) -> str:
    try:
        return "; ".join(str(item[2]) for item in error.args[0]) or "TLS error"
    except (IndexError, TypeError):
        return str(error)


@dataclass(frozen=True)
class _Contexts:
    default: SSL.Context
    exact: dict[str, SSL.Context]
    wildcard: dict[str, SSL.Context]
    client_cas: tuple[x509.Certificate, ...]
    not_after: datetime.datetime
    warnings: tuple[str, ...] = ()

    def for_name(self, name: str | None) -> SSL.Context:
        if not name:
            return self.default
        name = name.lower().rstrip(".")
        if name in self.exact:
            return self.exact[name]
        parent = name.split(".", 1)[1] if "." in name else ""
        return self.wildcard.get(parent, self.default)


def _build_all(
    profile: TLSProfile, on_server_name: Callable[[SSL.Connection], None]
) -> _Contexts:
    session_id = b"mailgateway-" + profile.name.encode("utf-8")[:20]
    default, certs = _build_context(
        profile.certificate, profile.private_key, profile.chain, profile, session_id
    )
    exact: dict[str, SSL.Context] = {}
    wildcard: dict[str, SSL.Context] = {}
    not_after = certs[0].not_valid_after_utc
    sources: list[tuple[SSL.Context, x509.Certificate]] = [(default, certs[0])]
    for extra in profile.sni:
        ctx, extra_certs = _build_context(
            extra.certificate, extra.private_key, extra.chain, profile, session_id
        )
        sources.append((ctx, extra_certs[0]))
        not_after = min(not_after, extra_certs[0].not_valid_after_utc)
    # Extra certificates are more specific than the default: they win over
    # it, and the first listed wins among them (later writes win below).
    for ctx, cert in [sources[0], *reversed(sources[1:])]:
        for name in _server_names(cert):
            if name.startswith("*."):
                wildcard[name[2:]] = ctx
            else:
                exact[name] = ctx
    for ctx, _ in sources:
        ctx.set_tlsext_servername_callback(on_server_name)
    cas: tuple[x509.Certificate, ...] = ()
    if profile.client_ca is not None:
        cas = tuple(_load_pem_certificates(profile.client_ca))
    warnings = _file_warnings(profile.certificate, profile.private_key, certs[0])
    for extra, (_, leaf) in zip(profile.sni, sources[1:], strict=True):
        warnings += _file_warnings(extra.certificate, extra.private_key, leaf)
    return _Contexts(default, exact, wildcard, cas, not_after, tuple(warnings))


def _require_client_auth(policy: Any, certificate: Any, usage: x509.ExtendedKeyUsage) -> None:
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise ValueError("extendedKeyUsage lacks clientAuth")


#: The client's own certificate: the Web PKI rules, except that the
#: subjectAltName is optional (CN-mapped users have none) and that the
#: extendedKeyUsage must be there and name clientAuth (a certificate
#: without it was not issued for logging in: RFC 5280 section 4.2.1.12).
_CLIENT_LEAF_POLICY = (
    verification.ExtensionPolicy.webpki_defaults_ee()
    .may_be_present(x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None)
    .require_present(x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC,
                     _require_client_auth)
)


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The TLS side of one profile, shared by every listener that names it.
    """

    def __init__(self, profile: TLSProfile) -> None:
        self.profile = profile
        self._contexts = _build_all(profile, self._on_server_name)
        self._log_warnings()

    @property
    def warnings(self) -> tuple[str, ...]:
        """What is usable but wrong in the profile's files (see the module
        docstring)."""
        return self._contexts.warnings

    def _log_warnings(self) -> None:
        for warning in self.warnings:
            log.warn("tls.{name}: {problem}", name=self.profile.name, problem=warning)

    @property
    def requests_client_certificate(self) -> bool:
        return bool(self._contexts.client_cas)

    @property
    def not_after(self) -> datetime.datetime:
        """The earliest expiry among the profile's certificates."""
        return self._contexts.not_after

    def reload(self) -> None:
        """
        Re-read the PEM files.  On failure the old contexts stay in service
        and the error propagates to the caller, who logs it.

        @raise TLSSetupError: the new files cannot be used.
        """
        self._contexts = _build_all(self.profile, self._on_server_name)
        self._log_warnings()

    def _on_server_name(self, connection: SSL.Connection) -> None:
        # Looked up at handshake time, so a reload applies to SNI too.
        raw = connection.get_servername()
        try:
            name = raw.decode("idna") if raw else None
        except UnicodeError:
            name = None
        connection.set_context(self._contexts.for_name(name))

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self._contexts.default, None)
        conn.set_app_data(tlsProtocol)
        return conn

    def verified_peer_certificate(self, connection: SSL.Connection) -> x509.Certificate | None:
        """
        The client's certificate if it presented one that chains to the
        profile's client CA and is valid for client authentication now;
        otherwise C{None}.
        """
        if not self._contexts.client_cas:
            return None
        chain = connection.get_peer_cert_chain(as_cryptography=True)
        leaf = connection.get_peer_certificate(as_cryptography=True)
        if leaf is None:
            return None
        intermediates = [c for c in (chain or []) if c != leaf]
        store = verification.Store(list(self._contexts.client_cas))
        verifier = (
            verification.PolicyBuilder().store(store)
            .extension_policies(ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                                ee_policy=_CLIENT_LEAF_POLICY)
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf, intermediates)
        except verification.VerificationError as e:
            log.info("client certificate not accepted: {why}", why=str(e))
            return None
        return leaf


def build(profiles: dict[str, TLSProfile]) -> dict[str, ServerTLS]:
    """
    Build every profile, or report every profile that fails.

    @raise TLSSetupError: naming each failing profile.
    """
    built: dict[str, ServerTLS] = {}
    problems = []
    for name, profile in profiles.items():
        try:
            built[name] = ServerTLS(profile)
        except TLSSetupError as e:
            problems.append(f"tls.{name}: {e}")
    if problems:
        raise TLSSetupError("\n".join(problems))
    return built


def connection_info(transport: Any) -> dict[str, str] | None:
    """
    The TLS version and cipher of a transport, once negotiated, for the log.
    """
    try:
        handle = transport.getHandle()
    except Exception:
        return None
    if not isinstance(handle, SSL.Connection):
        return None
    version = handle.get_protocol_version_name()
    cipher = handle.get_cipher_name()
    if not cipher:
        return None
    return {"version": version, "cipher": cipher}


__all__ = [
    "ServerTLS",
    "TLSSetupError",
    "SNICertificate",
    "build",
    "connection_info",
]
