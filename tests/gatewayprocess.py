"""
Start the real gateway (C{twistd -n mailgateway}) in a child process on
127.0.0.1 with free ports, for end-to-end tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

from gateway.auth import usercli
from tests.support import ROOT, free_ports, make_certs

#: The accounts every test gateway has: (account, password, legacy mechanisms).
ACCOUNTS = (
    ("alice@example.test", "alice-password-1", "CRAM-MD5,DIGEST-MD5,APOP"),
    ("bob@example.test", "bob-password-2", ""),
)


def add_account(users: Path, account: str, password: str, legacy: str = "") -> None:
    """Add an account with the real admin command."""
    import io

    out, err = io.StringIO(), io.StringIO()
    argv = ["user", "add", account, "--users", str(users), "--password-stdin"]
    if legacy:
        argv += ["--legacy", legacy]
    status = usercli.main(argv, out, err, stdin=io.StringIO(password + "\n"))
    if status != 0:
        raise RuntimeError(err.getvalue())

TWISTD = str(Path(sys.executable).parent / "twistd")

ROLES = {
    # name: (role, tls)
    "smtp": ("mx", "starttls"),
    "submission": ("submission", "starttls"),
    "smtps": ("submissions", "implicit"),
    "pop3": ("pop3", "starttls"),
    "pop3s": ("pop3", "implicit"),
    "imap": ("imap", "starttls"),
    "imaps": ("imap", "implicit"),
}


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class GatewayProcess:
    """One running gateway with its temporary directory."""

    def __init__(self, extra: str = "", ports: dict[str, int] | None = None,
                 auth: str = "", trusted: str = '["127.0.0.0/8", "::1/128"]') -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mailgateway-e2e-"))
        if not os.environ.get("MAILGATEWAY_KEEP_E2E"):
            # The directory goes with this object (or at exit at the
            # latest), after the test has looked at the logs and Maildirs.
            weakref.finalize(self, shutil.rmtree, str(self.dir), ignore_errors=True)
        self.certs = make_certs(self.dir / "certs", "localhost")
        self.users = self.dir / "users.json"
        for account in ACCOUNTS:
            add_account(self.users, *account)
        self.ports = ports or dict(zip(ROLES, free_ports(len(ROLES)), strict=True))
        listeners = "".join(
            f"""
[[listener]]
name = "{name}"
role = "{role}"
endpoint = "tcp:{self.ports[name]}:interface=127.0.0.1"
tls = "{tls}"
tls_profile = "main"
"""
            for name, (role, tls) in ROLES.items()
        )
        self.aliases = self.dir / "aliases"
        self.aliases.write_text("postmaster: alice@example.test\nteam: alice, bob, outside@partner.example\n")
        self.config = self.dir / "gateway.toml"
        self.config.write_text(
            f"""
[server]
hostname = "localhost"
state_dir = "{self.dir / 'state'}"
local_domains = ["example.test"]
trusted_networks = {trusted}
shutdown_timeout = 5
aliases = "{self.aliases}"

[tls.main]
certificate = "{self.certs.certificate}"
private_key = "{self.certs.key}"
client_ca = "{self.certs.ca_certificate}"

[auth]
users = "{self.users}"
default_domain = "example.test"
{auth}
{extra}
{listeners}
"""
        )
        self.log = self.dir / "gateway.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> None:
        for attempt in range(3):
            self._logfile = self.log.open("wb")
            self.process = subprocess.Popen(
                [TWISTD, "-n", "--pidfile=", "mailgateway", "--config", str(self.config)],
                stdout=self._logfile, stderr=subprocess.STDOUT, env=environment(), cwd=self.dir,
            )
            if not wait:
                return
            try:
                self.wait_ready()
                return
            except RuntimeError:
                # Free ports are picked before the gateway binds them: a test
                # running in parallel may have taken one meanwhile.  Only
                # that case is retried, with new ports.
                log = self.log.read_text()
                if ("cannot listen" not in log and "same address" not in log) or attempt == 2:
                    raise
                self._logfile.close()
                self._new_ports()

    def _new_ports(self) -> None:
        fresh = dict(zip(self.ports, free_ports(len(self.ports)), strict=True))
        text = self.config.read_text()
        for name, port in self.ports.items():
            text = text.replace(f"tcp:{port}:", f"tcp:{fresh[name]}:")
        self.config.write_text(text)
        self.ports = fresh

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        pending = set(self.ports.values())
        while pending and time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log.read_text()}")
            for port in list(pending):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    pending.discard(port)
                except OSError:
                    pass
            time.sleep(0.05)
        if pending:
            raise RuntimeError(f"ports {pending} never opened:\n{self.log.read_text()}")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._logfile.close()
        return self.process.returncode
