# -*- test-case-name: tests.interop.test_mail_smtp,tests.interop.test_mail_pop3 -*-
"""
The mail clients of other projects that the mail interoperability tests
drive against the real gateway (L{GatewayProcess} under twistd): swaks,
msmtp, curl, fetchmail, getmail6, mbsync and offlineimap, and what those
tests need around them:
a gateway with a chosen relay policy and limits, messages carrying a unique
token, and a look into the gateway's Maildirs and outbound spool.

A missing program raises L{SkipTest} naming the Debian package that
provides it; C{make test} installs L{DEBIAN_PACKAGES}.

Every runner returns a L{Run} (exit status and everything the client
printed).  Each client gets its own temporary directory (configuration,
state, what it downloaded), removed by the test's cleanup.
"""

from __future__ import annotations

import atexit
import email.message
import email.parser
import email.policy
import getpass
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import smtplib
import ssl
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.gatewayprocess import ACCOUNTS, GatewayProcess, add_account
from tests.interop.clients import Run
from tests.interop.gateways import EVERY_MECHANISM_AUTH
from tests.support import make_certs

ALICE, ALICE_PASSWORD, _ = ACCOUNTS[0]
BOB, BOB_PASSWORD, _ = ACCOUNTS[1]

#: An address in no local domain: mail for it goes to the outbound spool.
OUTSIDE = "outside@elsewhere.test"
#: A sender from elsewhere, as on the mx listener.
STRANGER = "stranger@elsewhere.test"

#: What C{make test} must install for these tests.  swaks needs Net::SSLeay
#: for STARTTLS and implicit TLS, which its package only recommends.
DEBIAN_PACKAGES = ("swaks", "libnet-ssleay-perl", "msmtp", "curl", "fetchmail", "getmail6",
                   "isync", "offlineimap3")

#: Program -> Debian package.
PACKAGES = {
    "swaks": "swaks",
    "msmtp": "msmtp",
    "curl": "curl",
    "fetchmail": "fetchmail",
    "getmail": "getmail6",
    "mbsync": "isync",
    "offlineimap": "offlineimap3",
}


def program(name: str) -> str:
    """
    The path of C{name}.

    @raise SkipTest: it is not installed; the message names the package.
    """
    found = shutil.which(name)
    if found is None:
        package = PACKAGES.get(name, name)
        raise SkipTest(f"{name} is not installed: apt-get install {package} (make test installs it)")
    return found


_SWAKS_TLS: list[bool] = []


def swaks() -> str:
    """
    The path of swaks, which can do TLS.

    @raise SkipTest: swaks or its TLS module is missing.
    """
    path = program("swaks")
    if not _SWAKS_TLS:
        perl = shutil.which("perl") or "/usr/bin/perl"
        done = subprocess.run([perl, "-MNet::SSLeay", "-e", "1"], capture_output=True)
        _SWAKS_TLS.append(done.returncode == 0)
    if not _SWAKS_TLS[0]:
        raise SkipTest("swaks has no TLS: apt-get install libnet-ssleay-perl (make test installs it)")
    return path


def run(args: Sequence[str], *, stdin: bytes = b"", timeout: float = 30.0,
        env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    """Run a client to its end (or kill it at C{timeout}: status C{None})."""
    environment = dict(os.environ)
    # No proxy for curl; and no Python path of ours for getmail, which runs
    # under Debian's python3 (trial -j sets PYTHONPATH to its own sys.path).
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE"):
        environment.pop(name, None)
    environment.update(env or {})
    try:
        done = subprocess.run(list(args), input=stdin, capture_output=True, timeout=timeout,
                              env=environment, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        return Run(tuple(args), None, (e.stdout or b"").decode("utf-8", "replace"),
                   (e.stderr or b"").decode("utf-8", "replace"))
    return Run(tuple(args), done.returncode, done.stdout.decode("utf-8", "replace"),
               done.stderr.decode("utf-8", "replace"))


def temporary_directory(test: SynchronousTestCase, prefix: str) -> Path:
    """A directory that others may traverse (getmail delivers as nobody), removed at cleanup."""
    path = Path(tempfile.mkdtemp(prefix=f"mailgateway-{prefix}-"))
    path.chmod(0o755)
    test.addCleanup(shutil.rmtree, path, True)
    return path


def token() -> str:
    """A string that appears in one test message and nowhere else."""
    return "tok" + secrets.token_hex(8)


def message(mark: str, *, sender: str = STRANGER, to: str = BOB, body: str = "",
            subject: str | None = None) -> bytes:
    """A small RFC 5322 message with CRLF line ends that carries C{mark}."""
    text = (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject or 'test ' + mark}\r\n"
            f"Message-ID: <{mark}@client.test>\r\n\r\n"
            f"{body or 'body of ' + mark}\r\n")
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def headers(data: bytes) -> email.message.Message:
    """The header of a stored message, parsed (folded headers unfolded)."""
    return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)


def first_received(data: bytes) -> str:
    """The topmost Received header, unfolded, with runs of white space made one."""
    found = headers(data).get_all("Received") or []
    if not found:
        raise AssertionError(f"no Received header in:\n{data[:600]!r}")
    return " ".join(str(found[0]).split())


@dataclass(frozen=True)
class Spooled:
    """One message waiting in the outbound spool."""

    envelope: dict
    data: bytes


@dataclass
class MailGateway:
    """A running gateway and a look at its state directory."""

    gateway: GatewayProcess
    #: Accounts of the pool nobody has taken yet: (account, password).
    pool: list[tuple[str, str]] = field(default_factory=list)

    def take_account(self) -> tuple[str, str]:
        """An account of the pool, with an empty mailbox, for one test."""
        if not self.pool:
            raise RuntimeError("the gateway's account pool is used up: make it bigger")
        return self.pool.pop(0)

    @property
    def ca(self) -> Path:
        return self.gateway.certs.ca_certificate

    def port(self, listener: str) -> int:
        return self.gateway.ports[listener]

    @property
    def state(self) -> Path:
        return self.gateway.dir / "state"

    def maildir(self, account: str) -> Path:
        local, _, domain = account.partition("@")
        return self.state / "mail" / domain / local

    def inbox(self, account: str) -> list[Path]:
        """The message files of the account's INBOX (new/ and cur/)."""
        found: list[Path] = []
        for sub in ("new", "cur"):
            directory = self.maildir(account) / sub
            if directory.is_dir():
                found.extend(p for p in directory.iterdir() if p.is_file())
        return sorted(found)

    def inbox_with(self, account: str, mark: str) -> list[bytes]:
        """The messages of the account's INBOX that carry C{mark}."""
        return [data for data in (p.read_bytes() for p in self.inbox(account))
                if mark.encode() in data]

    def mailboxes_with(self, mark: str) -> dict[str, int]:
        """Every local account's folder holding C{mark}: C{{"bob@example.test/new": 1}}."""
        counts: dict[str, int] = {}
        root = self.state / "mail"
        if not root.is_dir():
            return counts
        for path in root.rglob("*"):
            if not path.is_file() or path.parent.name not in ("new", "cur", "tmp"):
                continue
            if mark.encode() in path.read_bytes():
                rel = path.relative_to(root).parts  # domain, local, [.folder,] sub, name
                key = f"{rel[1]}@{rel[0]}/" + "/".join(rel[2:-1])
                counts[key] = counts.get(key, 0) + 1
        return counts

    def spooled(self) -> list[Spooled]:
        """The committed messages of the outbound spool."""
        new = self.state / "spool" / "new"
        out = []
        if new.is_dir():
            for envelope in sorted(new.glob("*.json")):
                data = envelope.with_suffix(".eml")
                out.append(Spooled(json.loads(envelope.read_text()),
                                   data.read_bytes() if data.exists() else b""))
        return out

    def spooled_with(self, mark: str) -> list[Spooled]:
        return [s for s in self.spooled() if mark.encode() in s.data]

    def spool_files(self) -> list[Path]:
        """Every file under the spool (tmp/ and new/)."""
        root = self.state / "spool"
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []

    def anywhere(self, mark: str) -> list[str]:
        """Every mailbox or spool file holding C{mark}."""
        places = [f"{k} ({n})" for k, n in self.mailboxes_with(mark).items()]
        places += [str(p) for p in self.spool_files() if mark.encode() in p.read_bytes()]
        return places

    # The log

    def log_offset(self) -> int:
        return self.gateway.log.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.gateway.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def wait_for_log(self, offset: int, text: str, timeout: float = 3.0) -> str:
        """The log since C{offset}, once it holds C{text} (or at the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            written = self.log_since(offset)
            if text in written or time.monotonic() > deadline:
                return written
            time.sleep(0.02)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.gateway.log.read_text("utf-8", "replace").splitlines()[-lines:])

    # Python clients, to put mail in place and to look

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def deliver(self, messages: Sequence[bytes], recipients: Sequence[str],
                sender: str = STRANGER, mail_options: Sequence[str] = ()) -> None:
        """Send C{messages} through the mx listener (STARTTLS, verified), one transaction each."""
        with smtplib.SMTP("localhost", self.port("smtp"), local_hostname="filler.test",
                          timeout=20) as smtp:
            smtp.starttls(context=self.context())
            for data in messages:
                refused = smtp.sendmail(sender, list(recipients), data, list(mail_options))
                if refused:
                    raise AssertionError(f"recipients refused: {refused}")


#: Accounts made for the tests that need a mailbox of their own on a shared
#: gateway (POP3 downloads and deletes): C{boxNN@example.test}, password
#: C{boxNN-password-9}, with the legacy secret for CRAM-MD5, DIGEST-MD5 and
#: APOP, like alice.
POOL_LEGACY = "CRAM-MD5,DIGEST-MD5,APOP"


def _gateway(trusted: str | None, extra: str, auth: str, aliases: str | None,
             pool: int = 0) -> GatewayProcess:
    kwargs = {"extra": extra, "auth": auth}
    if trusted is not None:
        kwargs["trusted"] = trusted
    gateway = GatewayProcess(**kwargs)
    for i in range(pool):
        add_account(gateway.users, f"box{i:02d}@example.test", f"box{i:02d}-password-9",
                    POOL_LEGACY)
    if aliases is not None:
        path = getattr(gateway, "aliases", None)
        if path is None:
            shutil.rmtree(gateway.dir, True)
            raise SkipTest("this GatewayProcess writes no aliases file")
        path.write_text(aliases)
    return gateway


def mail_gateway(test: SynchronousTestCase, *, trusted: str | None = None, extra: str = "",
                 auth: str = EVERY_MECHANISM_AUTH, aliases: str | None = None) -> MailGateway:
    """
    A gateway for C{test} alone, stopped (and its directory removed) by the
    test's cleanup.  C{trusted='[]'} makes 127.0.0.1 an outsider;
    C{aliases} replaces the text of the aliases file L{GatewayProcess} writes.
    """
    gateway = _gateway(trusted, extra, auth, aliases)
    test.addCleanup(shutil.rmtree, gateway.dir, True)
    test.addCleanup(stop_promptly, gateway)
    gateway.start()
    return MailGateway(gateway)


def stop_promptly(gateway: GatewayProcess, grace: float = 0.5) -> None:
    """
    SIGTERM, and SIGKILL after C{grace} seconds: a test's gateway need not
    wait out C{shutdown_timeout} for a connection it failed to close (see
    L{tests.interop.test_mail_pop3.ConnectionSlotTests}).
    """
    process = gateway.process
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    gateway.stop()  # closes its log


_SHARED: dict[tuple[str | None, str, str, str | None, int], MailGateway] = {}


def shared_mail_gateway(*, trusted: str | None = None, extra: str = "",
                        auth: str = EVERY_MECHANISM_AUTH, aliases: str | None = None,
                        pool: int = 0) -> MailGateway:
    """
    The gateway of this configuration that the tests of this process share,
    started on first use and stopped when the process exits.  Its users
    look only at their own messages (by token) or mailboxes (C{pool}: that
    many more accounts, L{MailGateway.take_account}), and make no failed
    login (failures feed the throttle and close connections).
    """
    key = (trusted, extra, auth, aliases, pool)
    gw = _SHARED.get(key)
    if gw is None or gw.gateway.process is None or gw.gateway.process.poll() is not None:
        gateway = _gateway(trusted, extra, auth, aliases, pool)
        try:
            gateway.start()
        except BaseException:
            gateway.stop()
            shutil.rmtree(gateway.dir, True)
            raise
        gw = _SHARED[key] = MailGateway(gateway, [
            (f"box{i:02d}@example.test", f"box{i:02d}-password-9") for i in range(pool)])
    return gw


@atexit.register
def _stop_shared() -> None:
    for gw in _SHARED.values():
        stop_promptly(gw.gateway)
        shutil.rmtree(gw.gateway.dir, True)
    _SHARED.clear()


_OTHER_CA: list[Path] = []


def other_ca() -> Path:
    """A CA that did not issue the gateway's certificate (made once per process)."""
    if not _OTHER_CA or not _OTHER_CA[0].exists():
        directory = Path(tempfile.mkdtemp(prefix="mailgateway-other-ca-"))
        atexit.register(shutil.rmtree, directory, True)
        _OTHER_CA[:] = [make_certs(directory, "localhost").ca_certificate]
    return _OTHER_CA[0]


# -- swaks -------------------------------------------------------------------


def swaks_run(gw: MailGateway, listener: str, *, tls: str, sender: str, to: Sequence[str],
              mark: str, auth: str | None = None, user: str = ALICE,
              password: str = ALICE_PASSWORD, body: str | None = None,
              options: Sequence[str] = ()) -> Run:
    """
    swaks against 127.0.0.1:C{listener}, verifying the certificate against
    the gateway's CA.

    @param tls: C{"starttls"} (C{--tls}: STARTTLS required), C{"implicit"}
        (C{--tls-on-connect}) or C{"none"}.
    @param auth: a mechanism for C{--auth}, C{"*"} for any, or C{None}.
    """
    args = [swaks(), "--server", "127.0.0.1", "--port", str(gw.port(listener)),
            "--helo", "swaks.client.test", "--from", sender, "--to", ",".join(to),
            "--header", f"Subject: swaks {mark}", "--header", f"Message-ID: <{mark}@swaks.test>",
            "--body", body if body is not None else f"body of {mark}", "--timeout", "20"]
    if tls == "starttls":
        args += ["--tls", "--tls-verify", "--tls-ca-path", str(gw.ca)]
    elif tls == "implicit":
        args += ["--tls-on-connect", "--tls-verify", "--tls-ca-path", str(gw.ca)]
    elif tls != "none":
        raise ValueError(tls)
    if auth is not None:
        # "*": every mechanism swaks knows that the server offers, in turn
        args += ["--auth"] + ([] if auth == "*" else [auth])
        args += ["--auth-user", user, "--auth-password", password]
    return run(args + list(options))


QUEUED = re.compile(r"250 2\.0\.0 OK queued as (\w+)")


def queue_id(transcript: Run) -> str:
    found = QUEUED.findall(transcript.output)
    if len(found) != 1:
        raise AssertionError(f"expected one 'OK queued as' reply:\n{transcript}")
    return found[0]


# -- msmtp -------------------------------------------------------------------


def msmtp_run(gw: MailGateway, directory: Path, listener: str, recipients: Sequence[str],
              data: bytes, *, auth: str = "on", user: str = ALICE,
              password: str = ALICE_PASSWORD, sender: str = ALICE,
              ca: Path | None = None) -> Run:
    """
    msmtp with its own configuration file (mode 0600, as msmtp requires)
    sending C{data} to C{recipients}: STARTTLS on C{submission}/C{smtp},
    TLS from the first byte on C{smtps}.  It connects to 127.0.0.1 and
    checks the certificate for C{localhost} against C{ca} (the gateway's).
    """
    starttls = "off" if listener == "smtps" else "on"
    lines = [
        "defaults",
        f"logfile {directory / 'msmtp.log'}",
        "account gateway",
        "host 127.0.0.1",
        f"port {gw.port(listener)}",
        "domain msmtp.client.test",
        "tls on",
        f"tls_starttls {starttls}",
        f"tls_trust_file {ca or gw.ca}",
        "tls_host_override localhost",
        f"from {sender}",
        "timeout 20",
    ]
    if auth == "off":
        lines.append("auth off")
    else:
        lines += [f"auth {auth}", f"user {user}", f"password {password}"]
    lines.append("account default : gateway")
    config = directory / "msmtprc"
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o600)
    return run([program("msmtp"), "-C", str(config), "--debug", "--", *recipients], stdin=data)


# -- curl --------------------------------------------------------------------


def curl_run(gw: MailGateway, url_scheme: str, listener: str, *, path: str = "/",
             options: Sequence[str] = (), user: str | None = ALICE,
             password: str = ALICE_PASSWORD, ca: Path | None = None) -> Run:
    """
    curl C{url_scheme}://localhost:PORT/PATH, connected to 127.0.0.1
    (C{--connect-to}) and checking the certificate for C{localhost} against
    C{ca} (the gateway's).
    """
    port = gw.port(listener)
    args = [program("curl"), "--silent", "--show-error", "--verbose", "--noproxy", "*",
            "--max-time", "20", "--cacert", str(ca or gw.ca),
            "--connect-to", f"localhost:{port}:127.0.0.1:{port}",
            f"{url_scheme}://localhost:{port}{path}"]
    if user is not None:
        args += ["--user", f"{user}:{password}"]
    return run(args + list(options))


def curl_stdout_bytes(gw: MailGateway, url_scheme: str, listener: str, *, path: str = "/",
                      options: Sequence[str] = (), user: str | None = ALICE,
                      password: str = ALICE_PASSWORD) -> tuple[Run, bytes]:
    """L{curl_run}, and the exact bytes curl wrote out (C{--output}: no text decoding)."""
    directory = Path(tempfile.mkdtemp(prefix="mailgateway-curl-"))
    try:
        out = directory / "out"
        result = curl_run(gw, url_scheme, listener, path=path, user=user, password=password,
                          options=[*options, "--output", str(out)])
        return result, out.read_bytes() if out.exists() else b""
    finally:
        shutil.rmtree(directory, True)


# -- fetchmail ---------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    """A download: the client's run, and what it delivered locally."""

    run: Run
    #: One entry per message: what fetchmail handed its MDA, or the files
    #: getmail wrote to its Maildir.
    messages: list[bytes]


def fetchmail_run(gw: MailGateway, directory: Path, listener: str, *, protocol: str = "pop3",
                  auth: str = "password", tls: str, user: str = ALICE,
                  password: str = ALICE_PASSWORD, ca: Path | None = None,
                  keep: bool = False) -> Fetched:
    """
    fetchmail once (no daemon) with its own rcfile, idfile and pidfile, each
    message handed to an MDA that writes it to a file of its own.

    @param tls: C{"stls"} (C{sslproto 'tls1.2+'}: STLS required),
        C{"implicit"} (C{ssl}) or C{"none"} (C{sslproto ''}: no STLS at
        all); with TLS, the certificate is checked (C{sslcertck}) against
        C{ca} (the gateway's) for the name C{localhost}: fetchmail checks DNS
        names only, not the certificate's IP addresses.
    @param protocol: C{pop3} or C{apop}.
    """
    inbox = directory / "fetched"
    inbox.mkdir()
    mda = directory / "mda.sh"
    mda.write_text(f'#!/bin/sh\nexec cat > "$(mktemp "{inbox}/msg.XXXXXXXX")"\n')
    mda.chmod(0o755)
    ssl_options = {
        "none": "sslproto ''",
        "stls": f"sslproto 'tls1.2+' sslcertck sslcertfile '{ca or gw.ca}' sslcommonname localhost",
        "implicit": f"ssl sslcertck sslcertfile '{ca or gw.ca}' sslcommonname localhost",
    }[tls]
    rc = directory / "fetchmailrc"
    auth_option = "" if protocol == "apop" else f" auth {auth}"
    rc.write_text(
        "set no bouncemail\n"
        "set no spambounce\n"
        "set invisible\n"
        f"poll localhost via 127.0.0.1 port {gw.port(listener)} protocol {protocol}{auth_option}\n"
        f'  user "{user}" there with password "{password}" is "{getpass.getuser()}" here\n'
        f"  {ssl_options}\n"
        f"  fetchall {'keep' if keep else 'nokeep'} no rewrite\n"
        f'  mda "{mda}"\n'
    )
    rc.chmod(0o600)
    result = run([program("fetchmail"), "--fetchmailrc", str(rc), "--nosyslog", "--verbose",
                  "--nodetach", "--idfile", str(directory / "fetchids"),
                  "--pidfile", str(directory / "fetchmail.pid")],
                 env={"HOME": str(directory), "FETCHMAILHOME": str(directory)}, cwd=directory)
    return Fetched(result, [p.read_bytes() for p in sorted(inbox.iterdir())])


# -- getmail6 ----------------------------------------------------------------


def getmail_run(gw: MailGateway, directory: Path, listener: str, *, apop: bool = False,
                user: str = ALICE, password: str = ALICE_PASSWORD,
                ca: Path | None = None) -> Fetched:
    """
    getmail once, into a Maildir, deleting what it delivered; C{pop3s}
    with C{SimplePOP3SSLRetriever} (certificate checked against C{ca}, the
    gateway's, for the name C{localhost}), C{pop3} with
    C{SimplePOP3Retriever}, which in getmail6 6.18 cannot use STLS.  It adds
    no header of its own (C{delivered_to}, C{received} off).  As root it
    delivers as C{nobody}: getmail refuses to write a Maildir as root.
    """
    maildir = directory / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    delivery_user = ""
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        for path in [maildir, *maildir.iterdir()]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        delivery_user = "user = nobody\n"
    if listener == "pop3s":
        retriever = ("type = SimplePOP3SSLRetriever\n"
                     f"ca_certs = {ca or gw.ca}\nssl_cert_hostname = localhost\n")
    else:
        retriever = "type = SimplePOP3Retriever\n"
    rc = directory / "getmailrc"
    rc.write_text(
        "[retriever]\n" + retriever +
        f"server = localhost\nport = {gw.port(listener)}\n"
        f"username = {user}\npassword = {password}\n"
        f"use_apop = {'true' if apop else 'false'}\ntimeout = 20\n\n"
        f"[destination]\ntype = Maildir\npath = {maildir}/\n{delivery_user}\n"
        "[options]\ndelete = true\nread_all = true\nverbose = 2\n"
        "delivered_to = false\nreceived = false\n"
    )
    rc.chmod(0o600)
    result = run([program("getmail"), "--getmaildir", str(directory), "--rcfile", str(rc)],
                 env={"HOME": str(directory)}, cwd=directory)
    files = sorted(p for sub in ("new", "cur") for p in (maildir / sub).iterdir())
    return Fetched(result, [p.read_bytes() for p in files])


def lf(data: bytes) -> bytes:
    """A message with LF line ends, as clients that hand mail to local programs write it."""
    return data.replace(b"\r\n", b"\n")


# -- mbsync and offlineimap --------------------------------------------------


def mbsync_run(gw: MailGateway, directory: Path, listener: str, *, user: str,
               password: str, ca: Path | None = None, mechanism: str | None = None,
               timeout: float = 30.0) -> Run:
    """
    mbsync (isync) once over every folder (C{Patterns *}), two-way: new
    messages, flags and deletions both ways, folders created both ways,
    C{\\Deleted} expunged on both sides.  The local side is the Maildir
    tree C{directory/mail} (C{SubFolders Verbatim}: C{Projects/2026} is
    C{mail/Projects/2026}), its sync state inside each folder.  STARTTLS
    on C{imap}, TLS from the first byte on C{imaps}; the certificate is
    checked for C{localhost} against C{ca} (the gateway's).  C{mechanism}:
    C{AuthMechs} (C{LOGIN} is the LOGIN command), else mbsync's choice.
    """
    mail = directory / "mail"
    mail.mkdir(exist_ok=True)
    secret = directory / "password"  # any character, no quoting rules
    secret.write_text(password)
    secret.chmod(0o600)
    rc = directory / "mbsyncrc"
    rc.write_text(
        "IMAPAccount gateway\n"
        "Host localhost\n"
        f"Port {gw.port(listener)}\n"
        f"User {user}\n"
        f'PassCmd "cat {secret}"\n'
        f"SSLType {'IMAPS' if listener == 'imaps' else 'STARTTLS'}\n"
        f"CertificateFile {ca or gw.ca}\n"
        "Timeout 20\n"
        + (f"AuthMechs {mechanism}\n" if mechanism else "") + "\n"
        "IMAPStore far\nAccount gateway\n\n"
        f"MaildirStore near\nPath {mail}/\nInbox {mail}/INBOX\nSubFolders Verbatim\n\n"
        "Channel both\nFar :far:\nNear :near:\nPatterns *\nCreate Both\nRemove Both\n"
        "Expunge Both\nSyncState *\nSync All\n"
    )
    rc.chmod(0o600)
    return run([program("mbsync"), "--debug-net", "-c", str(rc), "-a"], timeout=timeout,
               env={"HOME": str(directory)}, cwd=directory)


def offlineimap_run(gw: MailGateway, directory: Path, listener: str, *, user: str,
                    password: str, ca: Path | None = None, timeout: float = 60.0) -> Run:
    """
    offlineimap once (C{-o}, one thread, plain log) over every folder,
    two-way, into the Maildir tree C{directory/mail} (C{sep = /}: nested
    folders are nested directories), its state in C{directory/meta}.
    STARTTLS on C{imap}, TLS from the first byte on C{imaps}; the
    certificate is checked for C{localhost} against C{ca} (the gateway's).
    """
    mail = directory / "mail"
    mail.mkdir(exist_ok=True)
    implicit = listener == "imaps"
    rc = directory / "offlineimaprc"
    rc.write_text(
        f"[general]\naccounts = gateway\nmetadata = {directory / 'meta'}\nui = basic\nsocktimeout = 20\n\n"
        "[Account gateway]\nlocalrepository = near\nremoterepository = far\n\n"
        f"[Repository near]\ntype = Maildir\nlocalfolders = {mail}\nsep = /\n\n"
        "[Repository far]\ntype = IMAP\nremotehost = localhost\n"
        f"remoteport = {gw.port(listener)}\nremoteuser = {user}\nremotepass = {password}\n"
        f"ssl = {'yes' if implicit else 'no'}\nstarttls = {'no' if implicit else 'yes'}\n"
        f"sslcacertfile = {ca or gw.ca}\nmaxconnections = 1\n"
    )
    rc.chmod(0o600)
    return run([program("offlineimap"), "-c", str(rc), "-o", "-1", "-d", "imap"],
               timeout=timeout, env={"HOME": str(directory)}, cwd=directory)
