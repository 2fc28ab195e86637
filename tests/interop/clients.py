# -*- test-case-name: tests.interop.test_sasl_clients -*-
"""
Find and drive the SASL clients of other projects: GNU SASL's C{gsasl} and
the Cyrus SASL test clients C{imtest}, C{pop3test} and C{smtptest}.

A missing program or Cyrus SASL plugin raises L{SkipTest} naming the Debian
package that provides it; C{make test} installs L{DEBIAN_PACKAGES}.

Each runner returns a L{Run}: the exit status and everything the client
printed.  The Cyrus clients exit 0 whether or not they authenticated, so
their callers must read the transcript.
"""

from __future__ import annotations

import base64
import binascii
import glob
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from twisted.trial.unittest import SkipTest

#: What C{make test} must install for these tests (C{--no-install-recommends}
#: keeps cyrus-imapd and an MTA out).
DEBIAN_PACKAGES = ("gsasl", "cyrus-clients", "libsasl2-modules", "libsasl2-modules-otp",
                   "libsasl2-modules-gssapi-mit")

#: Program -> Debian package.
PACKAGES = {
    "gsasl": "gsasl",
    "imtest": "cyrus-clients",
    "pop3test": "cyrus-clients",
    "smtptest": "cyrus-clients",
}

#: Debian installs the Cyrus test clients outside PATH.
CYRUS_BIN = ("/usr/lib/cyrus/bin", "/usr/lib/cyrus-imapd", "/usr/libexec/cyrus-imapd")

#: Cyrus SASL mechanism -> (client plugin library stem, Debian package).
#: EXTERNAL is built into libsasl2 itself.
CYRUS_PLUGINS = {
    "OTP": ("otp", "libsasl2-modules-otp"),
    "CRAM-MD5": ("crammd5", "libsasl2-modules"),
    "DIGEST-MD5": ("digestmd5", "libsasl2-modules"),
    "SCRAM-SHA-1": ("scram", "libsasl2-modules"),
    "SCRAM-SHA-256": ("scram", "libsasl2-modules"),
    "PLAIN": ("plain", "libsasl2-modules"),
    "LOGIN": ("login", "libsasl2-modules"),
}

_PLUGIN_DIRS = ("/usr/lib/*/sasl2", "/usr/lib/sasl2", "/usr/lib64/sasl2")


def program(name: str) -> str:
    """
    The path of C{name}.

    @raise SkipTest: it is not installed; the message names the package.
    """
    found = shutil.which(name)
    for directory in CYRUS_BIN:
        if found is None and os.access(os.path.join(directory, name), os.X_OK):
            found = os.path.join(directory, name)
    if found is None:
        package = PACKAGES.get(name, name)
        raise SkipTest(f"{name} is not installed: apt-get install {package} (make test installs it)")
    return found


def cyrus_plugin(mechanism: str) -> None:
    """
    @raise SkipTest: libsasl2 has no client plugin for C{mechanism} here.
    """
    if mechanism.upper() not in CYRUS_PLUGINS:
        return
    stem, package = CYRUS_PLUGINS[mechanism.upper()]
    for pattern in _PLUGIN_DIRS:
        if glob.glob(os.path.join(pattern, f"lib{stem}.so*")):
            return
    raise SkipTest(f"no Cyrus SASL {mechanism} plugin: apt-get install {package} "
                   "(make test installs it)")


def gsasl_version() -> tuple[int, ...]:
    """The version of the installed gsasl, e.g. C{(2, 2, 0)}."""
    out = subprocess.run([program("gsasl"), "--version"], capture_output=True, text=True,
                         timeout=10).stdout
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    if match is None:
        return (0,)
    return tuple(int(part) for part in match.groups() if part is not None)


@dataclass(frozen=True)
class Run:
    """
    One client run.

    @ivar status: the exit status, or C{None} if it was killed at the timeout.
    @ivar stdout: for gsasl, the protocol conversation; for the Cyrus
        clients, C{S:}/C{C:} lines.
    """

    args: tuple[str, ...]
    status: int | None
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return (f"$ {' '.join(self.args)}\nexit status {self.status}\n"
                f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}")


def _run(args: Sequence[str], stdin: str = "", timeout: float = 20.0) -> Run:
    try:
        done = subprocess.run(list(args), input=stdin.encode(), capture_output=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return Run(tuple(args), None, (e.stdout or b"").decode("utf-8", "replace"),
                   (e.stderr or b"").decode("utf-8", "replace"))
    return Run(tuple(args), done.returncode, done.stdout.decode("utf-8", "replace"),
               done.stderr.decode("utf-8", "replace"))


# -- gsasl -----------------------------------------------------------------


def gsasl_arguments(protocol: str, mechanism: str, user: str | None, password: str | None,
                    options: Sequence[str] = ()) -> list[str]:
    """
    The arguments common to every gsasl run.  C{--client} is needed without
    C{--connect}; C{--application-data} is a flag that switches the default
    (on) off, so that gsasl logs out instead of reading data to protect.
    """
    args = [program("gsasl"), "--client", f"--{protocol}", f"--mechanism={mechanism}",
            "--hostname=localhost", "--application-data"]
    if user is not None:
        args.append(f"--authentication-id={user}")
    if password is not None:
        args.append(f"--password={password}")
    return args + list(options)


def gsasl(protocol: str, port: int, mechanism: str, *, ca: Path | str | None,
          user: str | None = None, password: str | None = None, starttls: bool = True,
          options: Sequence[str] = (), timeout: float = 20.0) -> Run:
    """
    C{gsasl --imap} or C{--smtp} connected to 127.0.0.1:C{port}, upgrading
    with STARTTLS (verified against C{ca}) or, with C{starttls=False},
    refusing to.  C{--hostname=localhost} names the server for DIGEST-MD5's
    digest-uri; gsasl checks the certificate chain, not the name.
    """
    args = gsasl_arguments(protocol, mechanism, user, password, options)
    args.append(f"--connect=127.0.0.1:{port}")
    if starttls:
        args += ["--starttls", f"--x509-ca-file={ca}"]
    else:
        args.append("--no-starttls")
    return _run(args, timeout=timeout)


def gsasl_over_tls(protocol: str, port: int, mechanism: str, *, context: ssl.SSLContext,
                   user: str | None = None, password: str | None = None,
                   options: Sequence[str] = (), timeout: float = 20.0) -> Run:
    """
    gsasl against an implicit-TLS listener.  gsasl has no implicit TLS, so
    it runs in its stdin/stdout mode and this process relays its lines over
    a TLS connection made with C{context} (which verifies the server and may
    carry a client certificate).  gsasl sees no TLS, so no channel binding:
    no -PLUS mechanism this way.  It ends its lines with LF alone; the relay
    sends CRLF, as the protocols require.
    """
    args = gsasl_arguments(protocol, mechanism, user, password, options)
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock = context.wrap_socket(raw, server_hostname="localhost")
    sock.settimeout(0.1)
    errors = tempfile.TemporaryFile()
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors)
    assert proc.stdin is not None and proc.stdout is not None
    transcript: list[bytes] = []
    partial = b""
    server_open = True
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            watched = [proc.stdout.fileno()] + ([sock.fileno()] if server_open else [])
            readable, _, _ = select.select(watched, [], [], 0.1)
            if proc.stdout.fileno() in readable:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break  # gsasl is done
                *lines, partial = (partial + chunk).split(b"\n")
                for line in lines:
                    wire = line.rstrip(b"\r") + b"\r\n"
                    transcript.append(wire)
                    if server_open:
                        sock.sendall(wire)
            if server_open and (sock.fileno() in readable or sock.pending()):
                try:
                    data = sock.recv(65536)
                except (TimeoutError, ssl.SSLWantReadError):
                    continue  # a TLS record with no application data
                except OSError:
                    data = b""
                if not data:
                    server_open = False
                    proc.stdin.close()
                    continue
                transcript.append(data)
                try:
                    proc.stdin.write(data)
                    proc.stdin.flush()
                except BrokenPipeError:
                    server_open = False
        else:
            proc.kill()
        try:
            status: int | None = proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = None
        if proc.returncode is not None and proc.returncode < 0:
            status = None
        errors.seek(0)
        stderr = errors.read().decode("utf-8", "replace")
    finally:
        sock.close()
        errors.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if not pipe.closed:
                pipe.close()
    return Run(tuple(args), status, b"".join(transcript).decode("utf-8", "replace"), stderr)


def gsasl_client_first(run: Run, mechanism: str) -> bytes:
    """
    The client's first SASL message in a gsasl conversation, decoded: the
    first base64 line after the C{AUTHENTICATE}/C{AUTH} command that is not
    a server continuation.
    """
    lines = run.stdout.splitlines()
    for i, line in enumerate(lines):
        if re.fullmatch(rf"(\. AUTHENTICATE|AUTH) {re.escape(mechanism)}", line.strip()):
            for later in lines[i + 1:]:
                if later.startswith(("+", "334")):
                    continue
                return base64.b64decode(later.strip())
    raise AssertionError(f"no {mechanism} exchange in:\n{run}")


# -- Cyrus imtest, pop3test, smtptest ----------------------------------------


def cyrus(name: str, port: int, mechanism: str, *, tls: str, user: str | None = None,
          password: str | None = None, certificate: Path | None = None,
          commands: str = "", timeout: float = 20.0) -> Run:
    """
    Run a Cyrus test client against localhost:C{port}; C{commands} go to its
    standard input after authentication.

    @param tls: C{"starttls"} (C{-t}), C{"implicit"} (C{-s}) or C{"none"}.
    @param certificate: one PEM file with the client certificate and its key,
        for EXTERNAL (C{-t FILE}, which also means STARTTLS).
    @param mechanism: a SASL mechanism, or C{user}/C{apop}/C{login} for the
        protocols' own commands.

    The host is C{localhost}, the name in the server's certificate and the
    one DIGEST-MD5's digest-uri must carry.  These clients load no trust
    anchors: they print C{verify error} and carry on, whatever the CA.
    """
    cyrus_plugin(mechanism)
    args = [program(name), "-p", str(port), "-m", mechanism]
    if tls == "implicit":
        if certificate is not None:
            raise ValueError("the Cyrus clients send a certificate only with STARTTLS")
        args.append("-s")
    elif tls == "starttls":
        args += ["-t", str(certificate) if certificate is not None else ""]
    if user is not None:
        args += ["-a", user]
    if password is not None:
        args += ["-w", password]
    args.append("localhost")
    return _run(args, stdin=commands, timeout=timeout)


def cyrus_client_messages(run: Run) -> list[bytes]:
    """The client's SASL messages (base64 C{C:} lines and initial
    responses) of a Cyrus client transcript, decoded."""
    found = []
    for line in run.stdout.splitlines():
        if not line.startswith("C: "):
            continue
        word = line[3:].split()[-1] if line[3:].split() else ""
        try:
            found.append(base64.b64decode(word, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found
