# -*- test-case-name: tests.test_config -*-
"""
The configuration: one TOML file, validated into frozen typed settings.

L{load} reads the file, checks every key against a whitelist, every value
against its type and meaning, and every referenced file for existence, and
either returns a L{GatewayConfig} or raises L{ConfigError} listing I{all} the
problems found, each with its key path (C{listener[2].tls_profile}).  Nothing
listens before this has succeeded.

Relative paths are resolved against the directory of the configuration file,
so a checkout's C{etc/dev.toml} works from any working directory.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ROLES = ("mx", "submission", "submissions", "pop3", "imap")
SMTP_ROLES = ("mx", "submission", "submissions")
TLS_MODES = ("implicit", "starttls", "none")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
CERT_MAPPINGS = ("email", "cn")
#: Endpoint types that carry TLS themselves; we build TLS in code instead.
TLS_ENDPOINT_TYPES = ("ssl", "tls")

KNOWN_MECHANISMS = (
    "PLAIN",
    "LOGIN",
    "CRAM-MD5",
    "DIGEST-MD5",
    "SCRAM-SHA-1",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-256-PLUS",
    "OTP",
    "EXTERNAL",
    "GSSAPI",
    "APOP",  # POP3 only (RFC 1939); not SASL
)
DEFAULT_MECHANISMS = (
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-1",
    "PLAIN",
    "LOGIN",
    "EXTERNAL",
)


@dataclass(frozen=True)
class SNICertificate:
    """An extra certificate for SNI; its host names come from its SANs."""

    certificate: Path
    private_key: Path
    chain: Path | None = None


@dataclass(frozen=True)
class TLSProfile:
    """A named TLS profile that listeners refer to."""

    name: str
    certificate: Path
    private_key: Path
    chain: Path | None = None
    min_version: str = "TLSv1.2"
    ciphers: str | None = None
    client_ca: Path | None = None
    sni: tuple[SNICertificate, ...] = ()


@dataclass(frozen=True)
class Limits:
    """Per-connection limits; every one has a safe default."""

    max_line_length: int = 8192
    max_message_size: int = 36_700_160  # 35 MiB
    max_connections: int = 1000
    max_connections_per_address: int = 20
    max_auth_failures: int = 3
    max_bad_commands: int = 10
    # SMTP recipients refused (unknown, relay denied) in one connection
    # before it is closed (421): a client probing for addresses gets few
    # answers per connection (Postfix's smtpd_hard_error_limit is 20).
    max_refused_recipients: int = 20
    idle_timeout_pop3: float = 600.0  # RFC 1939 section 3: at least 10 minutes
    idle_timeout_imap: float = 1800.0  # RFC 3501 section 5.4: at least 30 minutes
    idle_timeout_imap_preauth: float = 60.0
    # A TLS handshake (implicit TLS, or after STARTTLS/STLS) must finish in
    # this time: a client that never sends its ClientHello holds a slot.
    tls_handshake_timeout: float = 30.0
    # RFC 2449 section 6.5 LOGIN-DELAY: seconds an account must wait between
    # two POP3 logins (advertised in CAPA); 0 = no delay.
    pop3_login_delay: int = 0
    # IMAP SEARCH BODY/TEXT decode and look at this many octets of each
    # message (its beginning); the rest of a larger message is not searched.
    max_search_text_size: int = 4_194_304  # 4 MiB
    # Keys in one IMAP SEARCH, and of them keys on message text (BODY, TEXT,
    # header keys): each text key may decode every message of the folder.
    max_search_keys: int = 1000
    max_search_text_keys: int = 50
    # Seconds a closing connection may take to send its last reply before
    # it is aborted (a client that does not read would hold it for ever).
    close_grace: float = 5.0
    # RFC 5321 section 4.5.3.2.7: at least 5 minutes waiting for a command.
    idle_timeout_smtp: float = 300.0
    # Waiting for the next block of a message after 354: a client waits 3
    # minutes for each block to be sent (RFC 5321 section 4.5.3.2.5); the
    # server waits longer than that, like for a command.
    data_timeout_smtp: float = 300.0
    # A whole SMTP connection, however busy: without it, a client sending
    # a byte a minute holds its slot (and a message in memory) for ever.
    session_timeout_smtp: float = 3600.0


@dataclass(frozen=True)
class ThrottleConfig:
    """Authentication failure throttling (see L{gateway.auth.throttle})."""

    free_failures: int = 3
    delay_base: float = 2.0
    delay_cap: float = 15.0
    pair_ban_after: int = 10
    address_ban_after: int = 30
    ban_seconds: float = 900.0
    window_seconds: float = 3600.0


@dataclass(frozen=True)
class PolicyConfig:
    """The relay policy's settings (see L{gateway.smtp.policy})."""

    max_recipients: int = 100
    max_messages_per_connection: int = 100
    authenticated_any_sender: bool = False
    relay_from_trusted_networks: bool = True


@dataclass(frozen=True)
class AuthConfig:
    users: Path | None = None
    mechanisms: tuple[str, ...] = DEFAULT_MECHANISMS
    plaintext_without_tls: bool = False
    default_domain: str | None = None
    certificate_mapping: str = "email"
    gssapi_keytab: Path | None = None
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)
    # Seconds a successful password check is remembered (gateway.auth.cache);
    # 0, the default, remembers none.
    cache_ttl: float = 0.0


@dataclass(frozen=True)
class Listener:
    """
    One listening socket.

    @ivar endpoint: a Twisted server endpoint description without TLS
        (C{tcp:993:interface=127.0.0.1}, C{tcp6:...}, C{unix:...},
        C{systemd:...}, C{haproxy:tcp:...}).
    @ivar tls: C{implicit} (TLS from the first byte), C{starttls} (in-band
        upgrade) or C{none}.
    """

    name: str
    role: str
    endpoint: str
    tls: str
    tls_profile: str | None = None
    mechanisms: tuple[str, ...] | None = None
    plaintext_without_tls: bool | None = None

    @property
    def protocol(self) -> str:
        """C{smtp}, C{pop3} or C{imap}."""
        return "smtp" if self.role in SMTP_ROLES else self.role


@dataclass(frozen=True)
class ServerConfig:
    hostname: str
    state_dir: Path
    local_domains: tuple[str, ...] = ()
    trusted_networks: tuple[IPNetwork, ...] = ()
    shutdown_timeout: float = 30.0
    aliases: Path | None = None


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    server: ServerConfig
    limits: Limits
    auth: AuthConfig
    policy: PolicyConfig
    tls: dict[str, TLSProfile]
    listeners: tuple[Listener, ...]

    def profile_for(self, listener: Listener) -> TLSProfile | None:
        if listener.tls_profile is None:
            return None
        return self.tls[listener.tls_profile]


T = TypeVar("T")


class _Reader:
    """
    Collects problems while reading a table, so that every error of a file is
    reported at once.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.problems: list[tuple[str, str]] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def table(self, data: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.problem(path, f"must be a table, not {_kind(data)}")
            return {}
        for key in data:
            if key not in allowed:
                self.problem(
                    _join(path, key),
                    f"unknown key (allowed here: {', '.join(allowed)})",
                )
        return data

    def value(
        self,
        table: dict[str, Any],
        path: str,
        key: str,
        kind: type | tuple[type, ...],
        default: Any = None,
        required: bool = False,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        where = _join(path, key)
        if key not in table:
            if required:
                self.problem(where, "is required")
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # TOML booleans are ints in Python; never let True pass as a number.
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        elif float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok = True
            value = float(value)
        else:
            ok = isinstance(value, kinds)
        if not ok:
            names = " or ".join(_type_name(k) for k in kinds)
            self.problem(where, f"must be {names}, not {_kind(value)}")
            return default
        if check is not None:
            message = check(value)
            if message:
                self.problem(where, message)
                return default
        return value

    def strings(
        self, table: dict[str, Any], path: str, key: str, default: tuple[str, ...] = ()
    ) -> tuple[str, ...]:
        raw = self.value(table, path, key, list, default=None)
        if raw is None:
            return default
        out = []
        for i, item in enumerate(raw):
            if not isinstance(item, str):
                self.problem(f"{_join(path, key)}[{i}]", f"must be a string, not {_kind(item)}")
            else:
                out.append(item)
        return tuple(out)

    def file(
        self, table: dict[str, Any], path: str, key: str, required: bool = False
    ) -> Path | None:
        raw = self.value(table, path, key, str, required=required)
        if raw is None:
            return None
        resolved = (self.base / os.path.expanduser(raw)).resolve()
        where = _join(path, key)
        if not resolved.exists():
            self.problem(where, f"file not found: {resolved}")
        elif not resolved.is_file():
            self.problem(where, f"not a regular file: {resolved}")
        elif not os.access(resolved, os.R_OK):
            self.problem(where, f"file not readable: {resolved}")
        return resolved


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "an array", dict: "a table"}.get(kind, kind.__name__)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return _type_name(type(value))


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


#: Upper bounds of the numbers: beyond them a value is a typo, not a policy.
#: TOML has C{inf} and integers to 2**63: an infinite idle timeout or a line
#: limit of 2**63 is no limit at all, which the limits exist to prevent.
MAX_SECONDS = 30 * 86400.0
MAX_COUNT = 1_000_000
MAX_SIZES = {
    # LineReceiver holds up to this many octets per connection.
    "max_line_length": 1_048_576,
    # A message is held in memory while it arrives.
    "max_message_size": 1_073_741_824,
    "max_search_text_size": 1_073_741_824,
}


def _bounded(low: Callable[[Any], str | None], high: float,
             unit: str = "") -> Callable[[Any], str | None]:
    """C{low}'s check, and at most C{high} (which also refuses C{inf} and
    C{nan})."""

    def check(value: Any) -> str | None:
        message = low(value)
        if message:
            return message
        if not value <= high:
            return f"must be at most {high:_.0f}{unit}"
        return None

    return check


def _number_check(name: str, kind: type, minimum: Callable[[Any], str | None]
                  ) -> Callable[[Any], str | None]:
    """The range of a numeric setting: seconds (floats, and C{*_delay}) up to
    L{MAX_SECONDS}, sizes up to L{MAX_SIZES}, other counts up to
    L{MAX_COUNT}."""
    if kind is float or name.endswith("_delay"):
        return _bounded(minimum, MAX_SECONDS, " seconds (30 days)")
    return _bounded(minimum, MAX_SIZES.get(name, MAX_COUNT))


def check_domain(name: str) -> str | None:
    """
    @return: C{None} if C{name} is a valid DNS domain name, else why not.
    """
    if not name or len(name) > 253:
        return f"{name!r} is not a valid domain name (length)"
    if name.endswith("."):
        name = name[:-1]
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        return f"{name!r} is not a valid domain name"
    for label in ascii_name.split("."):
        if not label or len(label) > 63 or label.startswith("-") or label.endswith("-"):
            return f"{name!r} is not a valid domain name"
        if not all(c.isalnum() or c == "-" for c in label):
            return f"{name!r} is not a valid domain name"
    return None


def _endpoint_info(description: str) -> tuple[str, tuple[object, ...] | None, str | None]:
    """
    Parse an endpoint description far enough to validate it and to find its
    address for duplicate detection, without listening.

    @return: C{(type, address_key_or_None, error_or_None)}.
    """
    from twisted.internet import endpoints

    try:
        args, kwargs = endpoints._parse(description)
    except Exception as e:  # _parse raises several types on bad quoting
        return "", None, f"cannot parse endpoint description: {e}"
    if not args:
        return "", None, "empty endpoint description"
    kind = str(args[0]).lower()
    if kind == "haproxy":
        inner = description.split(":", 1)[1] if ":" in description else ""
        inner_kind, key, error = _endpoint_info(inner)
        return "haproxy:" + inner_kind, key, error
    if kind in TLS_ENDPOINT_TYPES:
        return kind, None, (
            f"{kind}: endpoints are not used; write a plain endpoint "
            "(tcp:PORT) with tls = \"implicit\" and a tls_profile"
        )
    if kind in ("tcp", "tcp6"):
        if len(args) < 2:
            return kind, None, "missing port"
        try:
            port = int(args[1])
        except ValueError:
            return kind, None, f"port {args[1]!r} is not a number"
        if not 0 <= port <= 65535:
            return kind, None, f"port {port} out of range"
        interface = kwargs.get("interface", args[3] if len(args) > 3 else "")
        # Twisted's defaults: 0.0.0.0 for tcp, :: for tcp6.  Addresses are
        # compared as addresses: "0:0::1" is "::1".
        default = "::" if kind == "tcp6" else "0.0.0.0"
        try:
            address = ipaddress.ip_address(interface or default)
        except ValueError:
            return kind, None, f"interface {interface!r} is not an IP address"
        return kind, ("inet", port, address), None
    if kind == "unix":
        address = kwargs.get("address", args[1] if len(args) > 1 else "")
        if not address:
            return kind, None, "missing socket path"
        return kind, ("unix", address), None
    if kind == "systemd":
        index = kwargs.get("index")
        name = kwargs.get("name")
        if index is None and name is None:
            return kind, None, "systemd: endpoints need index= or name="
        return kind, ("systemd", index, name), None
    if kind in endpoints._serverParsers or kind in ("stdio",):
        return kind, None, None
    from twisted.internet.interfaces import IStreamServerEndpointStringParser
    from twisted.plugin import getPlugins

    for plugin in getPlugins(IStreamServerEndpointStringParser):
        if plugin.prefix.lower() == kind:
            return kind, None, None
    return kind, None, f"unknown endpoint type {kind!r}"


def _ports_clash(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    if a[0] != "inet" or b[0] != "inet":
        return a == b
    if a[1] != b[1] or a[1] == 0:
        return False
    x, y = a[2], b[2]
    if x == y:
        return True
    # "::" takes IPv4 too (Twisted does not set IPV6_V6ONLY): it clashes
    # with every address of the port; 0.0.0.0 with every IPv4 address.
    for wild, other in ((x, y), (y, x)):
        if wild.is_unspecified and (wild.version == 6 or other.version == 4):
            return True
    return False


def _read_server(r: _Reader, data: Any) -> ServerConfig:
    t = r.table(data, "server", ("hostname", "state_dir", "local_domains",
                                 "trusted_networks", "shutdown_timeout", "aliases"))
    hostname = r.value(t, "server", "hostname", str, default="localhost",
                       required=True, check=check_domain)
    state_raw = r.value(t, "server", "state_dir", str, required=True)
    state_dir = (r.base / os.path.expanduser(state_raw)).resolve() if state_raw else r.base
    domains = []
    for i, name in enumerate(r.strings(t, "server", "local_domains")):
        error = check_domain(name)
        if error:
            r.problem(f"server.local_domains[{i}]", error)
        else:
            domains.append(name.lower().rstrip("."))
    networks = []
    for i, text in enumerate(r.strings(t, "server", "trusted_networks", ("127.0.0.0/8", "::1/128"))):
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError as e:
            r.problem(f"server.trusted_networks[{i}]", f"{text!r} is not a network: {e}")
    timeout = r.value(t, "server", "shutdown_timeout", float, default=30.0,
                      check=_bounded(_non_negative, MAX_SECONDS, " seconds (30 days)"))
    aliases = r.file(t, "server", "aliases")
    return ServerConfig(hostname, state_dir, tuple(domains), tuple(networks), timeout, aliases)


def _read_limits(r: _Reader, data: Any) -> Limits:
    names = tuple(Limits.__dataclass_fields__)
    t = r.table(data, "limits", names)
    values = {}
    defaults = Limits()
    for name in names:
        default = getattr(defaults, name)
        kind: type = float if isinstance(default, float) else int
        minimum = _non_negative if name == "pop3_login_delay" else _positive
        values[name] = r.value(t, "limits", name, kind, default=default,
                               check=_number_check(name, kind, minimum))
    if values["max_line_length"] < 1000:
        # RFC 5321 section 4.5.3.1.6: text lines of at least 1000 octets.
        r.problem("limits.max_line_length", "must be at least 1000 (RFC 5321 section 4.5.3.1.6)")
    return Limits(**values)


def _read_mechanisms(r: _Reader, t: dict[str, Any], path: str) -> tuple[str, ...] | None:
    if "mechanisms" not in t:
        return None
    names = r.strings(t, path, "mechanisms")
    out = []
    for i, name in enumerate(names):
        upper = name.upper()
        if upper not in KNOWN_MECHANISMS:
            r.problem(f"{path}.mechanisms[{i}]",
                      f"unknown SASL mechanism {name!r} (known: {', '.join(KNOWN_MECHANISMS)})")
        elif upper in out:
            r.problem(f"{path}.mechanisms[{i}]", f"{name!r} listed twice")
        else:
            out.append(upper)
    return tuple(out)


def _read_auth(r: _Reader, data: Any) -> AuthConfig:
    t = r.table(data, "auth", ("users", "mechanisms", "plaintext_without_tls", "default_domain",
                               "certificate_mapping", "gssapi_keytab", "throttle",
                               "cache_ttl"))
    users = r.file(t, "auth", "users")
    mechanisms = _read_mechanisms(r, t, "auth")
    plain = r.value(t, "auth", "plaintext_without_tls", bool, default=False)
    default_domain = r.value(t, "auth", "default_domain", str, check=check_domain)
    mapping = r.value(t, "auth", "certificate_mapping", str, default="email",
                      check=lambda v: None if v in CERT_MAPPINGS
                      else f"must be one of {', '.join(CERT_MAPPINGS)}")
    keytab = r.file(t, "auth", "gssapi_keytab")
    names = tuple(ThrottleConfig.__dataclass_fields__)
    tt = r.table(t.get("throttle", {}), "auth.throttle", names)
    defaults = ThrottleConfig()
    throttle = {}
    for name in names:
        default = getattr(defaults, name)
        kind: type = float if isinstance(default, float) else int
        # A ban after 0 failures is refused by ThrottleSettings at start:
        # refuse it here, where it is named.
        minimum = _positive if name.endswith("_ban_after") else _non_negative
        throttle[name] = r.value(tt, "auth.throttle", name, kind, default=default,
                                 check=_number_check(name, kind, minimum))
    cache_ttl = r.value(t, "auth", "cache_ttl", float, default=0.0,
                        check=_bounded(_non_negative, MAX_SECONDS, " seconds (30 days)"))
    return AuthConfig(users, mechanisms if mechanisms is not None else DEFAULT_MECHANISMS,
                      plain, default_domain, mapping, keytab, ThrottleConfig(**throttle),
                      cache_ttl)


def _read_policy(r: _Reader, data: Any) -> PolicyConfig:
    names = tuple(PolicyConfig.__dataclass_fields__)
    t = r.table(data, "policy", names)
    defaults = PolicyConfig()
    values = {}
    for name in names:
        default = getattr(defaults, name)
        if isinstance(default, bool):
            values[name] = r.value(t, "policy", name, bool, default=default)
        else:
            values[name] = r.value(t, "policy", name, int, default=default,
                                   check=_number_check(name, int, _positive))
    return PolicyConfig(**values)


def _read_tls(r: _Reader, data: Any) -> dict[str, TLSProfile]:
    if not isinstance(data, dict):
        r.problem("tls", f"must be a table of named profiles, not {_kind(data)}")
        return {}
    profiles = {}
    keys = ("certificate", "private_key", "chain", "min_version", "ciphers", "client_ca", "sni")
    for name, raw in data.items():
        path = f"tls.{name}"
        t = r.table(raw, path, keys)
        cert = r.file(t, path, "certificate", required=True)
        key = r.file(t, path, "private_key", required=True)
        chain = r.file(t, path, "chain")
        version = r.value(t, path, "min_version", str, default="TLSv1.2",
                          check=lambda v: None if v in TLS_VERSIONS
                          else f"must be one of {', '.join(TLS_VERSIONS)} (older versions are refused)")
        ciphers = r.value(t, path, "ciphers", str)
        client_ca = r.file(t, path, "client_ca")
        sni = []
        for i, item in enumerate(r.value(t, path, "sni", list, default=[])):
            ipath = f"{path}.sni[{i}]"
            st = r.table(item, ipath, ("certificate", "private_key", "chain"))
            scert = r.file(st, ipath, "certificate", required=True)
            skey = r.file(st, ipath, "private_key", required=True)
            if scert and skey:
                sni.append(SNICertificate(scert, skey, r.file(st, ipath, "chain")))
        if cert and key:
            profiles[name] = TLSProfile(name, cert, key, chain, version, ciphers,
                                        client_ca, tuple(sni))
    return profiles


def _read_listeners(r: _Reader, data: Any, profiles: dict[str, TLSProfile],
                    raw_profiles: set[str]) -> tuple[Listener, ...]:
    if not isinstance(data, list):
        r.problem("listener", "must be an array of tables ([[listener]])")
        return ()
    listeners = []
    names: dict[str, int] = {}
    addresses: list[tuple[int, tuple[object, ...]]] = []
    keys = ("name", "role", "endpoint", "tls", "tls_profile", "mechanisms",
            "plaintext_without_tls")
    for i, raw in enumerate(data):
        path = f"listener[{i}]"
        t = r.table(raw, path, keys)
        name = r.value(t, path, "name", str, default=f"listener{i}", required=True,
                       check=lambda v: None if v.strip() else "must not be empty")
        if name in names:
            r.problem(f"{path}.name", f"duplicate listener name {name!r} (also listener[{names[name]}])")
        names[name] = i
        role = r.value(t, path, "role", str, required=True,
                       check=lambda v: None if v in ROLES else f"must be one of {', '.join(ROLES)}")
        endpoint = r.value(t, path, "endpoint", str, required=True)
        tls = r.value(t, path, "tls", str, required=True,
                      check=lambda v: None if v in TLS_MODES else f"must be one of {', '.join(TLS_MODES)}")
        profile = r.value(t, path, "tls_profile", str)
        if profile is not None and profile not in raw_profiles:
            r.problem(f"{path}.tls_profile", f"no TLS profile named {profile!r} (define [tls.{profile}])")
        if tls in ("implicit", "starttls") and profile is None:
            r.problem(f"{path}.tls_profile",
                      f"a listener with tls = \"{tls}\" needs a tls_profile with a certificate")
        if tls == "none" and profile is not None:
            r.problem(f"{path}.tls_profile", "tls = \"none\" takes no tls_profile")
        if role == "submissions" and tls is not None and tls != "implicit":
            r.problem(f"{path}.tls",
                      "role \"submissions\" is implicit TLS (RFC 8314): use tls = \"implicit\"")
        if endpoint is not None:
            _, key, error = _endpoint_info(endpoint)
            if error:
                r.problem(f"{path}.endpoint", error)
            elif key is not None:
                for j, other in addresses:
                    if _ports_clash(key, other):
                        r.problem(f"{path}.endpoint",
                                  f"{endpoint!r} uses the same address as listener[{j}]")
                addresses.append((i, key))
        mechanisms = _read_mechanisms(r, t, path)
        plain = r.value(t, path, "plaintext_without_tls", bool)
        if name and role and endpoint and tls:
            listeners.append(Listener(name, role, endpoint, tls, profile, mechanisms, plain))
    if not data:
        r.problem("listener", "no listeners: define at least one [[listener]]")
    return tuple(listeners)


def parse(data: dict[str, Any], path: Path) -> GatewayConfig:
    """
    Validate an already-parsed TOML document.

    @param path: the file it came from; relative paths are resolved against
        its directory.
    @raise ConfigError: with every problem found.
    """
    r = _Reader(path.parent.resolve())
    r.table(data, "", ("server", "limits", "auth", "policy", "tls", "listener"))
    if "server" not in data:
        r.problem("server", "is required")
    server = _read_server(r, data.get("server", {}))
    limits = _read_limits(r, data.get("limits", {}))
    auth = _read_auth(r, data.get("auth", {}))
    policy = _read_policy(r, data.get("policy", {}))
    raw_tls = data.get("tls", {})
    profiles = _read_tls(r, raw_tls)
    raw_names = set(raw_tls) if isinstance(raw_tls, dict) else set()
    listeners = _read_listeners(r, data.get("listener", []), profiles, raw_names)
    if r.problems:
        raise ConfigError(r.problems)
    return GatewayConfig(path.resolve(), server, limits, auth, policy, profiles, listeners)


def load(path: str | os.PathLike[str]) -> GatewayConfig:
    """
    Read and validate a configuration file.

    @raise ConfigError: the file cannot be read, is not TOML, or is invalid.
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError([(str(p), f"cannot read: {e.strerror or e}")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([(str(p), f"not valid TOML: {e}")]) from None
    return parse(data, p)
