# -*- test-case-name: tests.test_certs -*-
"""
Certificates for tests and small sites: a private CA, a server certificate and
client certificates, made with C{cryptography}.  Files are written atomically,
private keys are 0600 from the first byte, and an existing CA is never replaced,
only reused.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import idna
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]

_NEW_KEY: dict[str, Callable[[], PrivateKey]] = {
    "ec": lambda: ec.generate_private_key(ec.SECP256R1()),
    "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}
_ORGANIZATION = "mailgateway"
# Backdate notBefore so that a peer whose clock runs slow accepts a new certificate.
_CLOCK_SKEW = datetime.timedelta(minutes=5)
# RFC 5280 appendix A.1: ub-common-name is 64 characters.
_CN_MAX = 64
# RFC 1035 section 2.3.1 letters, digits and hyphen (IDNA A-labels are LDH).
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_SAFE_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_USAGES = (
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
    "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
)  # fmt: skip
_File = tuple[Path, bytes, bool, bool]  # path, data, private, replace
_DEFAULT_NAMES: list[x509.GeneralName] = [x509.DNSName("localhost")]
_DEFAULT_NAMES += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]


class CertificateError(Exception):
    """A certificate could not be made; the message names the value or file."""


@dataclass(frozen=True)
class CertPaths:
    """
    The files behind one issued certificate.  C{ca_key} and C{chain} (server
    then CA) are for servers, C{pkcs12} for clients; C{ca_reused} says whether
    an existing CA issued it.
    """

    certificate: Path
    key: Path
    ca_certificate: Path
    ca_key: Path | None = None
    chain: Path | None = None
    pkcs12: Path | None = None
    ca_reused: bool = False


def init_certificates(
    out_dir: Path,
    hostnames: list[str],
    key_type: str = "ec",
    days: int = 825,
    ca_days: int = 3650,
    overwrite: bool = False,
) -> CertPaths:
    """
    Write C{ca.pem} and C{ca.key} unless C{out_dir} has a CA already, then
    C{server.pem}, C{server.key} and C{server-chain.pem} for every hostname
    plus C{localhost}, C{127.0.0.1} and C{::1}.

    @param hostnames: DNS names (IDNA applied) or IP addresses; the first is the CN.
    @param key_type: C{"ec"} (ECDSA P-256) or C{"rsa"} (RSA 2048).
    @param days: server lifetime, cut short at the CA's expiry.
    @param overwrite: replace server files.  The CA is never replaced.
    @raise CertificateError: bad hostnames (all named), a file in the way, a bad CA.
    """
    names = _parse_hostnames(hostnames)
    _check_options(key_type, days, ca_days)
    common_name = _name_text(names[0])
    if len(common_name) > _CN_MAX:
        raise CertificateError(f"first hostname {common_name!r} is too long for a CN")
    out_dir = Path(out_dir)
    ca_pem, ca_key_path = out_dir / "ca.pem", out_dir / "ca.key"
    server_pem, server_key = out_dir / "server.pem", out_dir / "server.key"
    chain = out_dir / "server-chain.pem"
    present = [p for p in (ca_pem, ca_key_path) if os.path.lexists(p)]
    if len(present) == 1:
        raise CertificateError(f"{present[0]} exists alone; refusing to replace a partial CA")
    files: list[_File] = []
    if present:
        ca_cert, ca_key = _load_ca(out_dir)
    else:
        ca_key = _NEW_KEY[key_type]()
        ca_cert = _issue(ca_key, f"{_ORGANIZATION} CA {common_name}"[:_CN_MAX], ca_days)
        # Key first and never replacing: a racing init fails on ca.key, so it
        # cannot pair its ca.pem with our key.
        files += [(ca_key_path, _key_pem(ca_key), True, False)]
        files += [(ca_pem, _pem(ca_cert), False, False)]
    key = _NEW_KEY[key_type]()
    sans = list(dict.fromkeys([*names, *_DEFAULT_NAMES]))
    cert = _issue(key, common_name, days, (ca_cert, ca_key, ExtendedKeyUsageOID.SERVER_AUTH), sans)
    files += [(server_key, _key_pem(key), True, overwrite)]
    files += [(server_pem, _pem(cert), False, overwrite)]
    _write_files(*files, (chain, _pem(cert) + _pem(ca_cert), False, overwrite))
    return CertPaths(server_pem, server_key, ca_pem, ca_key_path, chain, None, bool(present))


def issue_client_certificate(
    ca_dir: Path,
    user: str,
    out_dir: Path | None = None,
    key_type: str = "ec",
    days: int = 825,
    overwrite: bool = False,
) -> CertPaths:
    """
    Issue a certificate for C{user} (e.g. C{"alice@example.edu"}, also an
    rfc822Name SAN) from the CA in C{ca_dir}; write C{.pem}, C{.key} and
    C{.p12} (0600: it holds the key) named after the user, C{@} spelled
    C{_at_}, into C{out_dir} (default C{ca_dir/"clients"}).

    @raise CertificateError: unsafe user name, bad CA, a file in the way.
    """
    stem, email = _client_names(user)
    _check_options(key_type, days)
    ca_dir = Path(ca_dir)
    ca_cert, ca_key = _load_ca(ca_dir)
    out_dir = ca_dir / "clients" if out_dir is None else Path(out_dir)
    pem_path, key_path, p12_path = (out_dir / f"{stem}.{e}" for e in ("pem", "key", "p12"))
    key = _NEW_KEY[key_type]()
    cert = _issue(key, user, days, (ca_cert, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH), email)
    bundle = pkcs12.serialize_key_and_certificates(
        user.encode("utf-8"), key, cert, [ca_cert], serialization.NoEncryption()
    )
    files = [(key_path, _key_pem(key), True, overwrite), (pem_path, _pem(cert), False, overwrite)]
    _write_files(*files, (p12_path, bundle, True, overwrite))
    return CertPaths(pem_path, key_path, ca_dir / "ca.pem", pkcs12=p12_path, ca_reused=True)


def describe_certificate(path: Path | str) -> str:
    """
    @return: the first certificate in a PEM file on one line: subject CN,
        SANs, issuer CN, expiry date and key type.
    @raise CertificateError: the file is unreadable or holds no certificate.
    """
    try:
        cert = x509.load_pem_x509_certificates(Path(path).read_bytes())[0]
    except OSError as e:
        raise CertificateError(f"cannot read {path}: {e.strerror}") from None
    except ValueError:
        raise CertificateError(f"{path} holds no PEM certificate") from None
    sans = [e.value for e in cert.extensions if isinstance(e.value, x509.SubjectAlternativeName)]
    san_text = ", ".join(_name_text(name, tagged=True) for san in sans for name in san)
    public = cert.public_key()
    key_text = type(public).__name__
    if isinstance(public, ec.EllipticCurvePublicKey):
        key_text = f"ECDSA {public.curve.name}"
    elif isinstance(public, rsa.RSAPublicKey):
        key_text = f"RSA {public.key_size}"
    return (
        f"CN={_common_name(cert.subject)} SAN=[{san_text}]"
        f" issuer=CN={_common_name(cert.issuer)}"
        f" expires={cert.not_valid_after_utc:%Y-%m-%d} key={key_text}"
    )


def _parse_hostnames(hostnames: list[str]) -> list[x509.GeneralName]:
    if isinstance(hostnames, str) or not hostnames:
        raise CertificateError("give at least one hostname, as a list")
    names: list[x509.GeneralName] = []
    problems: list[str] = []
    for raw in hostnames:
        try:
            names.append(_parse_hostname(raw))
        except CertificateError as e:
            problems.append(str(e))
    if problems:
        raise CertificateError("; ".join(problems))
    return names


def _parse_hostname(raw: str) -> x509.GeneralName:
    """
    @return: an L{x509.IPAddress} for an IP literal, else the IDNA A-label form
        (a left-most C{*} label is kept as a wildcard).
    @raise CertificateError: not a usable hostname.
    """
    if not isinstance(raw, str) or not raw:
        raise CertificateError(f"invalid hostname {raw!r}: empty or not text")
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        pass
    else:
        if getattr(address, "scope_id", None):
            raise CertificateError(f"invalid hostname {raw!r}: IPv6 scope not allowed")
        return x509.IPAddress(address)
    # RFC 6125 section 6.4.3: a wildcard only as the whole left-most label.
    star = "*." if raw.startswith("*.") else ""
    try:
        ascii_name = idna.encode(raw[len(star) :], uts46=True).decode("ascii")
    except (UnicodeError, ValueError) as e:
        raise CertificateError(f"invalid hostname {raw!r}: {e}") from None
    labels = ascii_name.split(".")
    # RFC 3696 section 2: a top-level label is never all digits, so "10.1" is
    # neither an IP address nor a hostname.  "*.example" would span a TLD.
    bad = not all(map(_LABEL.fullmatch, labels)) or labels[-1].isdigit()
    if bad or len(star + ascii_name) > 253 or (star and len(labels) < 2):
        raise CertificateError(f"invalid hostname {raw!r}")
    return x509.DNSName(star + ascii_name)


def _client_names(user: str) -> tuple[str, list[x509.GeneralName]]:
    """
    @return: the file name stem for C{user} and its rfc822Name SAN, if any.
    @raise CertificateError: not a plain, unambiguous file name, or a bad domain.
    """
    if not isinstance(user, str) or not 0 < len(user) <= _CN_MAX:
        raise CertificateError(f"invalid user {user!r}: must be 1 to {_CN_MAX} characters")
    stem = user.replace("@", "_at_")
    local, at, domain = user.partition("@")
    # "a_at_b" is refused because it would share files with "a@b".
    if "@" in domain or "_at_" in user or ".." in stem or not _SAFE_STEM.fullmatch(stem):
        hint = "letters, digits, '.', '_', '+', '-' and at most one '@', alphanumeric first"
        raise CertificateError(f"invalid user {user!r}: use {hint}")
    if not at:
        return stem, []
    with contextlib.suppress(CertificateError):
        host = _parse_hostname(domain)
        if local and isinstance(host, x509.DNSName):
            return stem, [x509.RFC822Name(f"{local}@{host.value}")]
    raise CertificateError(f"invalid user {user!r}: not a mail address")


def _name_text(name: x509.GeneralName, tagged: bool = False) -> str:
    tag = {x509.DNSName: "DNS", x509.IPAddress: "IP", x509.RFC822Name: "email"}
    text = str(name.value)
    return f"{tag.get(type(name), 'other')}:{text}" if tagged else text


def _common_name(name: x509.Name) -> str:
    attributes = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attributes[0].value) if attributes else ""


def _check_options(key_type: str, *lifetimes: int) -> None:
    if key_type not in _NEW_KEY:
        raise CertificateError(f"unknown key type {key_type!r}; use one of {sorted(_NEW_KEY)}")
    for days in lifetimes:
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise CertificateError(f"a lifetime must be a positive number of days, not {days!r}")


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_usage(*granted: str) -> x509.KeyUsage:
    return x509.KeyUsage(**{usage: usage in granted for usage in _USAGES})


def _issue(
    key: PrivateKey,
    common_name: str,
    days: int,
    issuer: tuple[x509.Certificate, PrivateKey, x509.ObjectIdentifier] | None = None,
    names: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    """
    Make a self-signed CA (no C{issuer}), or a certificate issued by
    C{(ca_cert, ca_key, purpose)} that expires no later than the CA.  RSA
    keys may also encipher keys (TLS 1.2 RSA key exchange); EC keys only sign.
    """
    now = datetime.datetime.now(datetime.UTC)
    not_after = now + datetime.timedelta(days=days)
    organization = x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION)
    subject = x509.Name([organization, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if issuer is None:
        return (
            builder.issuer_name(subject)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage("key_cert_sign", "crl_sign"), critical=True)
            .sign(key, hashes.SHA256())
        )
    ca_cert, ca_key, purpose = issuer
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:  # a CA made elsewhere
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    usages = ("digital_signature", "key_encipherment")
    usage = _key_usage(*usages if isinstance(key, rsa.RSAPrivateKey) else usages[:1])
    builder = (
        builder.issuer_name(ca_cert.subject)
        .not_valid_after(min(not_after, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(aki, critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, PrivateKey]:
    """Load the CA in C{ca_dir}: a live CA certificate and its EC or RSA key."""
    cert_path, key_path = ca_dir / "ca.pem", ca_dir / "ca.key"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except OSError as e:
        raise CertificateError(f"cannot read CA file {e.filename}: {e.strerror}") from None
    except (ValueError, TypeError, x509.ExtensionNotFound) as e:
        raise CertificateError(f"unusable CA in {ca_dir}: {e}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CertificateError(f"{key_path}: only EC and RSA CA keys are supported")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise CertificateError(f"{key_path} does not match {cert_path}")
    if not is_ca:
        raise CertificateError(f"{cert_path} is not a CA certificate")
    if cert.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
        raise CertificateError(f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    return cert, key


def _write_files(*files: _File, fsync: Callable[[int], None] = os.fsync) -> None:
    """
    Write each C{(path, data, private, replace)} atomically, in order, into
    one directory, made if need be: a temporary file beside it (born 0600 if
    private, so a key is never readable by others), fsync, rename; then fsync
    the directory.  Nothing is written if a file that may not be replaced
    exists; one that appears meanwhile is not replaced either (C{link()}).
    """
    for path, _, _, replace in files:
        if not replace and os.path.lexists(path):
            raise CertificateError(f"{path} already exists; refusing to overwrite it")
    directory = files[0][0].parent
    directory.mkdir(parents=True, exist_ok=True)
    for path, data, private, replace in files:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        descriptor = os.open(temporary, flags, 0o600 if private else 0o644)
        try:
            with open(descriptor, "wb") as f:
                f.write(data)
                f.flush()
                fsync(f.fileno())
            (os.replace if replace else os.link)(temporary, path)
        except FileExistsError:
            raise CertificateError(f"{path} already exists; refusing to overwrite it") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        fsync(descriptor)
    finally:
        os.close(descriptor)
