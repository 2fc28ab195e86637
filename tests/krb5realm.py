"""
A throw-away MIT Kerberos realm on 127.0.0.1, for tests that need a real KDC.

L{start_realm} builds everything under one temporary directory: its own
C{krb5.conf} and C{kdc.conf}, a database (C{kdb5_util create -s}), the
principals (C{kadmin.local}: the user C{alice} with a password and the service
principals C{imap/localhost}, C{smtp/localhost}, C{pop/localhost} with random
keys, exported to one keytab), a C{krb5kdc -n} child listening on 127.0.0.1
only, on a free port, and alice's ticket-granting ticket (C{kinit}) in a
credential cache of its own.

Nothing outside that directory is read or written: the child processes get
C{KRB5_CONFIG} and C{KRB5_KDC_PROFILE} pointing into it, and while the test
runs the test process itself gets C{KRB5_CONFIG}, C{KRB5CCNAME},
C{KRB5_KTNAME}, C{KRB5_CLIENT_KTNAME} and C{KRB5RCACHEDIR} pointing into it
too (restored afterwards), so that the in-process GSSAPI library neither reads
C{/etc/krb5.conf} nor writes a replay cache to C{/var/tmp}.  Cleanup (through
the test's C{addCleanup}, so it runs whatever happens) stops the KDC (SIGTERM,
then SIGKILL), restores the environment and removes the directory.

Without the MIT programs the test is skipped with a reason naming the Debian
packages to install; C{make test} installs them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

REALM = "MAILGATEWAY.TEST"
USER = "alice"
SERVICES = ("imap", "smtp", "pop")
HOST = "localhost"

#: Program -> the Debian package that ships it.
PROGRAMS = {
    "krb5kdc": "krb5-kdc",
    "kdb5_util": "krb5-kdc",
    "kadmin.local": "krb5-admin-server",
    "kinit": "krb5-user",
}

#: The Python package and what it needs to build (it has no wheels on PyPI
#: for Linux: pip compiles it against the MIT headers).
PYTHON_PACKAGE = "gssapi"
BUILD_PACKAGES = ("libkrb5-dev", "gcc")

#: The environment variables through which MIT Kerberos finds its files.
KRB5_VARIABLES = (
    "KRB5_CONFIG",
    "KRB5_KDC_PROFILE",
    "KRB5CCNAME",
    "KRB5_KTNAME",
    "KRB5_CLIENT_KTNAME",
    "KRB5RCACHEDIR",
    "KRB5RCACHENAME",
    "KRB5RCACHETYPE",
    "KRB5_TRACE",
)

# Debian installs the KDC's programs in /usr/sbin, not on a user's PATH.
_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"]
)

#: How long the KDC may take to listen, and to stop.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
#: Each program we run (kdb5_util, kadmin.local, kinit) gets this long.
COMMAND_TIMEOUT = 20.0


def find_programs() -> dict[str, str]:
    """
    The MIT programs the realm needs, by name.

    @raise SkipTest: naming the missing programs and the Debian packages that
        ship them.
    """
    found = {name: shutil.which(name, path=_SEARCH_PATH) for name in PROGRAMS}
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        packages = sorted({PROGRAMS[name] for name in missing})
        raise SkipTest(
            f"MIT Kerberos programs not found: {', '.join(missing)}; "
            f"install the Debian packages {' '.join(packages)} "
            f"(make test does: apt-get install {' '.join(packages)})"
        )
    return {name: path for name, path in found.items() if path is not None}


def require_gssapi() -> None:
    """@raise SkipTest: the C{gssapi} Python package is not importable."""
    try:
        import gssapi  # noqa: F401
    except ImportError as e:
        raise SkipTest(
            f"the Python package {PYTHON_PACKAGE} is not installed ({e}); "
            f"install the Debian packages {' '.join(BUILD_PACKAGES)}, then "
            f"pip install {PYTHON_PACKAGE} (make test does both)"
        ) from None


def _free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (the KDC takes both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no port free for both TCP and UDP on 127.0.0.1")


@dataclass
class KerberosRealm:
    """
    One realm, built by L{start_realm}.

    @ivar directory: everything the realm owns lives here.
    @ivar password: alice's password.
    @ivar keytab: the service principals' keys.
    @ivar ccache: alice's credential cache, C{FILE:...}.
    @ivar port: the KDC's port on 127.0.0.1 (TCP and UDP).
    """

    directory: Path
    programs: dict[str, str]
    realm: str = REALM
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)
    master_password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)
    port: int = 0
    kdc: subprocess.Popen[bytes] | None = None

    @property
    def krb5_conf(self) -> Path:
        return self.directory / "krb5.conf"

    @property
    def kdc_conf(self) -> Path:
        return self.directory / "kdc.conf"

    @property
    def keytab(self) -> Path:
        return self.directory / "services.keytab"

    @property
    def ccache(self) -> str:
        return f"FILE:{self.directory / 'alice.ccache'}"

    @property
    def user(self) -> str:
        """alice's principal name."""
        return f"{USER}@{self.realm}"

    def environ(self) -> dict[str, str]:
        """The variables that confine MIT Kerberos to L{directory}."""
        return {
            "KRB5_CONFIG": str(self.krb5_conf),
            "KRB5_KDC_PROFILE": str(self.kdc_conf),
            "KRB5CCNAME": self.ccache,
            "KRB5_KTNAME": f"FILE:{self.keytab}",
            # No client keytab: an initiator must use alice's ccache only.
            "KRB5_CLIENT_KTNAME": f"FILE:{self.directory / 'no-client.keytab'}",
            # The acceptor's replay cache, which is otherwise in /var/tmp.
            "KRB5RCACHEDIR": str(self.directory),
        }

    def _child_environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in KRB5_VARIABLES}
        env.update(self.environ(), LC_ALL="C")
        return env

    def _run(self, program: str, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [self.programs[program], *args],
            check=False,
            input=stdin,
            capture_output=True,
            text=True,
            env=self._child_environ(),
            cwd=self.directory,
            timeout=COMMAND_TIMEOUT,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({result.returncode}): "
                f"{result.stdout}{result.stderr}"
            )
        return result.stdout

    # -- building ---------------------------------------------------------------

    def write_configuration(self) -> None:
        d = self.directory
        # udp_preference_limit = 1: always TCP, so that a lost datagram
        # cannot make a test slow.  No DNS: the realm is known, host names are
        # taken as given (localhost stays localhost).
        self.krb5_conf.write_text(
            textwrap.dedent(
                f"""\
                [libdefaults]
                    default_realm = {self.realm}
                    dns_lookup_kdc = false
                    dns_lookup_realm = false
                    dns_canonicalize_hostname = false
                    rdns = false
                    udp_preference_limit = 1
                    default_ccache_name = {self.ccache}
                    default_keytab_name = FILE:{self.keytab}
                    default_client_keytab_name = FILE:{d / "no-client.keytab"}
                    kdc_timesync = 0
                    ticket_lifetime = 1h

                [realms]
                    {self.realm} = {{
                        kdc = 127.0.0.1:{self.port}
                    }}

                [domain_realm]
                    {HOST} = {self.realm}

                [logging]
                    default = FILE:{d / "krb5lib.log"}
                """
            )
        )
        # kdc_listen / kdc_tcp_listen (the newer names of kdc_ports and
        # kdc_tcp_ports) take an address, so the KDC binds 127.0.0.1 only.
        self.kdc_conf.write_text(
            textwrap.dedent(
                f"""\
                [kdcdefaults]
                    kdc_listen = 127.0.0.1:{self.port}
                    kdc_tcp_listen = 127.0.0.1:{self.port}

                [realms]
                    {self.realm} = {{
                        kdc_listen = 127.0.0.1:{self.port}
                        kdc_tcp_listen = 127.0.0.1:{self.port}
                        database_name = {d / "principal"}
                        key_stash_file = {d / "stash"}
                        acl_file = {d / "kadm5.acl"}
                        max_life = 1h
                        max_renewable_life = 0
                        master_key_type = aes256-cts-hmac-sha1-96
                        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
                    }}

                [logging]
                    kdc = FILE:{d / "kdc.log"}
                    admin_server = FILE:{d / "kadmin.log"}
                    default = FILE:{d / "krb5lib.log"}
                """
            )
        )
        (d / "kadm5.acl").write_text("")

    def create_database(self) -> None:
        self._run("kdb5_util", "-r", self.realm, "create", "-s", "-P", self.master_password)
        admin = ("kadmin.local", "-r", self.realm, "-q")
        self._run(*admin, f"addprinc -pw {self.password} {USER}")
        for service in SERVICES:
            self._run(*admin, f"addprinc -randkey {service}/{HOST}")
        principals = " ".join(f"{service}/{HOST}" for service in SERVICES)
        self._run(*admin, f"ktadd -k {self.keytab} {principals}")

    def start_kdc(self) -> None:
        """Start C{krb5kdc -n} and wait until it accepts TCP connections."""
        with open(self.directory / "krb5kdc.out", "wb") as log:
            self.kdc = subprocess.Popen(
                [self.programs["krb5kdc"], "-n", "-r", self.realm],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._child_environ(),
                cwd=self.directory,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.kdc.poll() is not None:
                raise RuntimeError(f"krb5kdc exited ({self.kdc.returncode}): {self._kdc_output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"krb5kdc did not listen within {START_TIMEOUT}s: {self._kdc_output()}")

    def _kdc_output(self) -> str:
        texts = []
        for name in ("krb5kdc.out", "kdc.log"):
            path = self.directory / name
            if path.exists():
                texts.append(path.read_text(errors="replace"))
        return "".join(texts)[-2000:]

    def kinit(self) -> None:
        """Get alice's ticket-granting ticket into L{ccache} (password on stdin)."""
        self._run("kinit", "-c", self.ccache, self.user, stdin=self.password + "\n")

    def stop_kdc(self) -> None:
        """Stop the KDC: SIGTERM, then SIGKILL; always reaped."""
        kdc, self.kdc = self.kdc, None
        if kdc is None or kdc.poll() is not None:
            return
        kdc.send_signal(signal.SIGTERM)
        try:
            kdc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            kdc.kill()
            kdc.wait()


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in KRB5_VARIABLES}
    try:
        for name in KRB5_VARIABLES:
            os.environ.pop(name, None)
        os.environ.update(values)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _confine(test: SynchronousTestCase, values: dict[str, str]) -> None:
    """Set the process's Kerberos variables to C{values} until the cleanup."""
    environment = _environment(values)
    environment.__enter__()
    test.addCleanup(environment.__exit__, None, None, None)


def isolate(test: SynchronousTestCase) -> Path:
    """
    For a test of the C{gssapi} package without a KDC: until its cleanup, the
    process reads a minimal C{krb5.conf} of its own (no realm, no DNS) instead
    of C{/etc/krb5.conf}, and finds no ticket cache, keytab or replay cache
    outside a fresh directory, which it returns.

    Without this, what the machine's C{/etc/krb5.conf} says decides how the
    test behaves (Debian's default one canonicalises host names through DNS,
    which takes seconds per name where there is no DNS).
    """
    directory = Path(test.mktemp()).absolute()
    directory.mkdir(parents=True)
    test.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    (directory / "krb5.conf").write_text(
        textwrap.dedent(
            """\
            [libdefaults]
                dns_lookup_kdc = false
                dns_lookup_realm = false
                dns_canonicalize_hostname = false
                rdns = false
            """
        )
    )
    _confine(
        test,
        {
            "KRB5_CONFIG": str(directory / "krb5.conf"),
            "KRB5CCNAME": f"FILE:{directory / 'ccache'}",
            "KRB5_KTNAME": f"FILE:{directory / 'keytab'}",
            "KRB5_CLIENT_KTNAME": f"FILE:{directory / 'client.keytab'}",
            "KRB5RCACHEDIR": str(directory),
        },
    )
    return directory


def start_realm(test: SynchronousTestCase) -> KerberosRealm:
    """
    Build and start a realm for one test; C{test.addCleanup} undoes it all.

    Until the cleanup, the test process's own Kerberos environment points
    into the realm's directory (see the module docstring).

    @raise SkipTest: the MIT programs or the C{gssapi} package are missing.
    """
    programs = find_programs()
    require_gssapi()
    directory = Path(test.mktemp()).absolute()
    directory.mkdir(parents=True)
    test.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    realm = KerberosRealm(directory=directory, programs=programs)
    # Cleanups run last-in first-out: the KDC stops before the directory
    # goes, and the environment is restored even if the realm never started.
    test.addCleanup(realm.stop_kdc)
    _confine(test, realm.environ())
    # Another process may take the port between our probe and the KDC's
    # bind: then the KDC exits, and we try another port.
    for attempt in range(3):
        realm.port = _free_port()
        realm.write_configuration()
        if attempt == 0:
            realm.create_database()
        try:
            realm.start_kdc()
            break
        except RuntimeError:
            realm.stop_kdc()
            if attempt == 2:
                raise
    realm.kinit()
    return realm
