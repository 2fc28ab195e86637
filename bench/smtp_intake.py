"""
SMTP intake: messages per second into the mx listener, each on disk before
its 250, against an aiosmtpd peer measured in the same run (issue text:
"10,000 messages of 4 KB over 20 concurrent sessions").

One load client for both servers: asyncio raw sockets, C{--sessions}
concurrent sessions, each pipelining C{MAIL FROM}/C{RCPT TO}/C{DATA} in one
write, waiting for the 354, sending the message and the dot in one write,
waiting for the 250.  A session sends C{--per-connection} messages (100 by
default, the gateway's C{policy.max_messages_per_connection}) and then QUITs
and reconnects; with C{--starttls}/C{--auth} the default is one message per
connection, so each message pays EHLO, STARTTLS (TLS 1.3 handshake),
EHLO and C{AUTH PLAIN}.

The servers, side by side on the same machine, each in its own process:

  - the gateway under twistd (L{tests.gatewayprocess}), the mx listener,
    one local account (every message to C{alice@example.test});
  - aiosmtpd (C{pip install aiosmtpd}) in a child process, same certificate,
    whose handler writes each message to C{<dir>/example.test/alice/tmp/},
    fsyncs it, renames it into C{new/} and fsyncs C{new/} (in the default
    executor, off the event loop) before it answers 250; with C{--auth} it
    checks AUTH PLAIN against a dict.  aiosmtpd does not advertise
    PIPELINING but reads its input as a stream, so the same client works.
    The peer does the same durable work for the message (file and
    directory fsynced before 250) but keeps no index: the gateway also
    commits each message's UID to its SQLite index (WAL, synchronous=FULL)
    before answering.

C{--peer-verifier} makes the peer check AUTH PLAIN as the gateway does:
against a stored SCRAM-SHA-256 verifier of 4096 iterations (the gateway's
own L{gateway.auth.verifiers.password_matches}, in the peer's executor, off
its event loop), instead of comparing with a plain password kept in a dict.
A real server keeps no plain passwords, and bench/pop3_load.py gives
Dovecot such verifiers; the default stays the dict, the issue's peer as
first measured.  The first line printed says which.

C{--auth-cache SECONDS} sets the gateway's C{[auth] cache_ttl} (off by
default): with it, repeated AUTH PLAIN logins skip the PBKDF2 derivation
(see README.rst).  The first line printed says whether it was on, and
where the temporary directories were (C{$TMPDIR}): on a file system whose
file creation is slow (see bench/README.rst) both servers pay it per
message.

Both servers run for the whole benchmark; the timed runs alternate between
them C{--rounds} times (3 by default), so that both meet the same noise of
a shared machine, and the medians are compared.  Each server first gets one
untimed warm-up message per session (the gateway creates the account's
Maildir then).  Printed per run: msgs/s, CPU time of the server process per
message (all threads, from /proc; the share spent in the kernel; the main
thread's share, and how busy that thread was) and of the load client; then
the medians, the ratio gateway / aiosmtpd against the target (1.5x; 1.2x
with C{--starttls}/C{--auth}) and the count of files in each Maildir (the
run fails if one is missing).  C{--accounts N} spreads the messages over N
recipient accounts.  C{--phases} prints, per run, the mean time a session
waited for the reply of each step of the dialogue (connect, EHLO,
STARTTLS, handshake, AUTH, envelope, message, QUIT): where a server's
latency goes, as seen by its clients.  C{--profile} attaches py-spy to the gateway during its
first round (that round is perturbed) and prints where the time went.

Run by hand::

    .venv/bin/python bench/smtp_intake.py [--quick]
    .venv/bin/python bench/smtp_intake.py --starttls --auth
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    GatewayProcess,
    Profiler,
    add_account,
    cpu_seconds,
    cpu_times,
    ratio,
    stop,
)

ACCOUNT, PASSWORD = "alice@example.test", "alice-password-1"  # tests.gatewayprocess.ACCOUNTS


class BenchError(Exception):
    pass


# -- the load client ------------------------------------------------------------------

def message_maker(size: int) -> Any:
    """Messages of C{size} octets (CRLF lines of 76), unique Message-ID each."""
    line = b"x" * 72
    body = b"".join(b"%04d" % (n % 10000) + line + b"\r\n" for n in range(size // 78 + 1))

    def make(i: int) -> bytes:
        head = (f"From: <{ACCOUNT}>\r\nTo: <{ACCOUNT}>\r\nSubject: bench message {i}\r\n"
                f"Message-ID: <{i}.{os.getpid()}@bench.example>\r\n\r\n").encode()
        room = size - len(head)
        whole = max(0, room // 78) * 78
        tail = room - whole
        return head + body[:whole] + (b"y" * (tail - 2) + b"\r\n" if tail > 2 else b"") + b".\r\n"

    return make


async def expect(reader: asyncio.StreamReader, code: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line:
            raise BenchError(f"connection closed waiting for {code.decode()}")
        if line[3:4] != b"-":
            break
    if not line.startswith(code):
        raise BenchError(f"expected {code.decode()}, got {line!r}")


class Load:
    """C{total} messages over C{sessions} concurrent sessions."""

    def __init__(self, port: int, args: argparse.Namespace, tls: ssl.SSLContext | None) -> None:
        self.port, self.args, self.tls = port, args, tls
        self.make = message_maker(args.size)
        self.envelopes = [(f"MAIL FROM:<{ACCOUNT}> SIZE={args.size}\r\nRCPT TO:<{rcpt}>\r\n"
                           "DATA\r\n").encode() for rcpt in recipients(args.accounts)]
        token = base64.b64encode(f"\0{ACCOUNT}\0{PASSWORD}".encode())
        self.auth = b"AUTH PLAIN " + token + b"\r\n"
        self.next = self.done = self.total = 0
        #: With C{--phases}: seconds spent waiting for each step's reply,
        #: summed over the sessions (L{phase_means}).
        self.phases: dict[str, list[float]] | None = {} if args.phases else None

    def mark(self, name: str, since: float) -> float:
        """Record the step C{name} begun at C{since}; return the time now."""
        now = time.perf_counter()
        if self.phases is not None:
            self.phases.setdefault(name, []).append(now - since)
        return now

    def phase_means(self) -> str:
        """Mean wait per step, in ms, in the order of the dialogue."""
        if not self.phases:
            return ""
        return "  ".join(f"{name} {1e3 * sum(v) / len(v):.1f}" for name, v in self.phases.items())

    async def run(self, total: int, per_connection: int) -> float:
        self.next, self.done, self.total = 0, 0, total
        started = time.perf_counter()
        workers = [self.session(per_connection) for _ in range(self.args.sessions)]
        await asyncio.wait_for(asyncio.gather(*workers), self.args.timeout)
        if self.done != total:
            raise BenchError(f"{self.done} of {total} messages accepted")
        return time.perf_counter() - started

    async def session(self, per_connection: int) -> None:
        mark = self.mark
        while self.next < self.total:
            t = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                await expect(reader, b"220")
                t = mark("connect", t)
                writer.write(b"EHLO bench.example\r\n")
                await expect(reader, b"250")
                t = mark("EHLO", t)
                if self.tls is not None:
                    writer.write(b"STARTTLS\r\n")
                    await expect(reader, b"220")
                    t = mark("STARTTLS", t)
                    await writer.start_tls(self.tls, server_hostname="localhost")
                    t = mark("handshake", t)
                    writer.write(b"EHLO bench.example\r\n")
                    await expect(reader, b"250")
                    t = mark("EHLO", t)
                if self.args.auth:
                    writer.write(self.auth)
                    await expect(reader, b"235")
                    t = mark("AUTH", t)
                sent = 0
                while sent < per_connection and self.next < self.total:
                    i, self.next = self.next, self.next + 1
                    writer.write(self.envelopes[i % len(self.envelopes)])
                    for code in (b"250", b"250", b"354"):
                        await expect(reader, code)
                    t = mark("envelope", t)
                    writer.write(self.make(i))
                    await expect(reader, b"250")
                    t = mark("message", t)
                    self.done += 1
                    sent += 1
                writer.write(b"QUIT\r\n")
                await expect(reader, b"221")
                mark("QUIT", t)
            finally:
                writer.close()


def measure(name: str, port: int, pid: int, args: argparse.Namespace, tls: ssl.SSLContext | None,
            warm_up: bool, profile: Path | None = None) -> dict[str, Any]:
    load = Load(port, args, tls)
    if warm_up:
        asyncio.run(load.run(args.sessions, 1))  # one message per session
        if load.phases is not None:
            load.phases.clear()
    profiler = Profiler(pid, profile) if profile is not None else None
    server_cpu, main_cpu = cpu_times(pid), cpu_seconds(pid, main_thread=True)
    client_cpu = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = asyncio.run(load.run(args.messages, args.per_connection))
    after = resource.getrusage(resource.RUSAGE_SELF)
    result = {"name": name, "elapsed": elapsed, "rate": args.messages / elapsed,
              "server_cpu": cpu_seconds(pid) - sum(server_cpu),
              "server_sys": cpu_times(pid)[1] - server_cpu[1],
              "main_cpu": cpu_seconds(pid, main_thread=True) - main_cpu,
              "client_cpu": (after.ru_utime + after.ru_stime
                             - client_cpu.ru_utime - client_cpu.ru_stime),
              "profile": None, "phases": load.phase_means()}
    if profiler is not None:
        profiler.finish()
        result["profile"] = profiler.summary()
    return result


def recipients(accounts: int) -> list[str]:
    """Where the messages go, in turn: alice, or C{accounts} accounts."""
    return [ACCOUNT] if accounts <= 1 else [f"rcpt{k}@example.test" for k in range(accounts)]


def count_files(root: Path, accounts: int) -> int:
    """Message files in the Maildirs of the recipients under C{root}."""
    total = 0
    for address in recipients(accounts):
        local, _, domain = address.partition("@")
        for sub in ("new", "cur"):
            if (root / domain / local / sub).exists():
                total += len(os.listdir(root / domain / local / sub))
    return total


# -- the aiosmtpd peer (a child process) --------------------------------------------------

def serve_aiosmtpd(port: int, root: Path, cert: str, key: str, tls: bool, auth: bool,
                   verifier: bool = False) -> None:
    from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

    from gateway.auth.verifiers import derive_scram_keys, password_matches

    counter = iter(range(1, 1 << 62))
    passwords = {ACCOUNT.encode(): PASSWORD.encode()}
    keys = {ACCOUNT.encode(): derive_scram_keys(ACCOUNT, PASSWORD, "SHA-256", 4096)}

    def store(rcpts: list[str], data: bytes) -> None:
        for rcpt in rcpts:
            local, _, domain = rcpt.lower().partition("@")
            maildir = root / domain / local
            if not (maildir / "new").exists():
                for sub in ("tmp", "new", "cur"):
                    (maildir / sub).mkdir(parents=True, exist_ok=True)
            store_one(maildir, data)

    def store_one(maildir: Path, data: bytes) -> None:
        name = f"{time.time():.6f}.P{os.getpid()}Q{next(counter)}.bench"
        tmp, new = str(maildir / "tmp" / name), str(maildir / "new" / name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, new)
        fd = os.open(str(maildir / "new"), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            trace = (f"Return-Path: <{envelope.mail_from}>\r\nReceived: from "
                     f"{session.host_name} ([{session.peer[0]}])\r\n\tby localhost (aiosmtpd) "
                     f"with ESMTP; {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}"
                     "\r\n").encode()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, store, envelope.rcpt_tos,
                                       trace + envelope.original_content)
            return "250 2.0.0 OK"

    class VerifyingHandler(Handler):
        async def auth_PLAIN(self, server: Any, args: list[str]) -> AuthResult:
            # The built-in's parsing, then the check off the event loop.
            try:
                _, login, password = base64.b64decode(args[1], validate=True).split(b"\0")
            except (IndexError, ValueError):
                return AuthResult(success=False)
            found = keys.get(login)
            ok = found is not None and await asyncio.get_running_loop().run_in_executor(
                None, password_matches, found, password)
            return AuthResult(success=ok, auth_data=LoginPassword(login, password))

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      data: Any) -> AuthResult:
        ok = mechanism == "PLAIN" and passwords.get(data.login) == data.password
        return AuthResult(success=ok)

    context = None
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handler = VerifyingHandler() if verifier else Handler()
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="localhost", tls_context=context,
                         require_starttls=tls, authenticator=authenticator if auth else None,
                         auth_require_tls=True, data_size_limit=36_700_160),
            "127.0.0.1", port)
        done = loop.create_future()
        import signal
        loop.add_signal_handler(signal.SIGTERM, done.set_result, None)
        print("ready", flush=True)
        async with server:
            await done

    asyncio.run(main())


def start_aiosmtpd(root: Path, cert: str, key: str, args: argparse.Namespace) -> tuple[Any, int]:
    from tests.support import free_port
    port = free_port()
    flags = (["--starttls"] if args.starttls else []) + (["--auth"] if args.auth else [])
    flags += ["--peer-verifier"] if args.peer_verifier else []
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-aiosmtpd", str(port), str(root), cert, key, *flags],
        stdout=subprocess.PIPE, stderr=open(root / "aiosmtpd.log", "wb"))
    assert process.stdout is not None
    if process.stdout.readline().strip() != b"ready":
        stop(process)
        raise SystemExit(f"aiosmtpd did not start: {(root / 'aiosmtpd.log').read_text()}")
    return process, port


# -- the run ------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096, help="octets per message")
    parser.add_argument("--per-connection", type=int, default=None,
                        help="messages per connection (100; 1 with --starttls/--auth)")
    parser.add_argument("--accounts", type=int, default=1,
                        help="recipient accounts, in turn (1: every message to alice)")
    parser.add_argument("--starttls", action="store_true")
    parser.add_argument("--auth", action="store_true", help="AUTH PLAIN (needs --starttls)")
    parser.add_argument("--auth-cache", type=float, default=0.0, metavar="SECONDS",
                        help="the gateway's [auth] cache_ttl (0: off, the default)")
    parser.add_argument("--peer-verifier", action="store_true",
                        help="the peer checks AUTH PLAIN against a SCRAM verifier, not a dict")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed runs per server, interleaved; the median is compared")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: 400 messages, 10 sessions, 1 round")
    parser.add_argument("--profile", action="store_true", help="py-spy on the gateway's run")
    parser.add_argument("--phases", action="store_true",
                        help="print the mean wait for each step's reply (client side, ms)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per timed run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    parser.add_argument("--serve-aiosmtpd", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_aiosmtpd:
        port, root, cert, key = args.serve_aiosmtpd
        serve_aiosmtpd(int(port), Path(root), cert, key, args.starttls, args.auth,
                       args.peer_verifier)
        return
    if args.auth and not args.starttls:
        parser.error("--auth needs --starttls (neither server takes a password in clear)")
    if args.quick:
        args.messages, args.sessions, args.rounds = min(args.messages, 400), min(args.sessions, 10), 1
    if args.per_connection is None:
        args.per_connection = 1 if (args.starttls or args.auth) else 100
    try:
        import aiosmtpd  # noqa: F401
    except ImportError:
        raise SystemExit("the peer needs aiosmtpd: .venv/bin/pip install aiosmtpd") from None

    mode = "STARTTLS + AUTH PLAIN" if args.auth else "STARTTLS" if args.starttls else "plain"
    cache = f"on, {args.auth_cache:g} s" if args.auth_cache > 0 else "off"
    if args.auth:
        mode += (", the peer checks a SCRAM verifier (PBKDF2, 4096)" if args.peer_verifier
                 else ", the peer compares plain passwords")
    print(f"SMTP intake: {args.messages:,} messages of {args.size:,} octets, {args.sessions} "
          f"sessions, {args.per_connection} per connection, {mode}, {args.accounts} "
          f"recipient account(s); {os.cpu_count()} CPUs; gateway's auth cache {cache}; "
          f"directories in {tempfile.gettempdir()}")
    gateway = GatewayProcess(
        auth=f"cache_ttl = {args.auth_cache}" if args.auth_cache > 0 else "")
    if args.accounts > 1:
        for address in recipients(args.accounts):
            add_account(gateway.users, address, "bench-password")
    peer_dir = Path(tempfile.mkdtemp(prefix="smtp-bench-aiosmtpd-"))
    peer = None
    tls = None
    if args.starttls:
        tls = ssl.create_default_context(cafile=str(gateway.certs.ca_certificate))
    runs: dict[str, list[dict[str, Any]]] = {"mailgateway": [], "aiosmtpd": []}
    stored = {}
    try:
        gateway.start()
        assert gateway.process is not None
        peer, port = start_aiosmtpd(peer_dir, str(gateway.certs.certificate),
                                    str(gateway.certs.key), args)
        servers = [("mailgateway", gateway.ports["smtp"], gateway.process.pid),
                   ("aiosmtpd", port, peer.pid)]
        for round_ in range(args.rounds):
            for name, port, pid in servers:  # interleaved: both see the same noise
                profile = None
                if args.profile and name == "mailgateway" and round_ == 0:
                    profile = gateway.dir / "smtp-profile.txt"
                try:
                    r = measure(name, port, pid, args, tls, warm_up=round_ == 0,
                                profile=profile)
                except BenchError:
                    if name == "mailgateway":
                        show_errors(gateway.log)  # before the directory goes
                    raise
                runs[name].append(r)
                show(r, args.messages)
        gateway.stop()
        stop(peer)
        stored = {"mailgateway": count_files(gateway.dir / "state" / "mail", args.accounts),
                  "aiosmtpd": count_files(peer_dir, args.accounts)}
    finally:
        gateway.stop()
        stop(peer)
        if args.keep:
            print(f"(kept {gateway.dir} and {peer_dir})")
        else:
            shutil.rmtree(gateway.dir, ignore_errors=True)
            shutil.rmtree(peer_dir, ignore_errors=True)

    expected = args.rounds * args.messages + args.sessions
    ours, theirs = (median(runs[n]) for n in ("mailgateway", "aiosmtpd"))
    for name, r in (("mailgateway", ours), ("aiosmtpd", theirs)):
        print(f"  {name:12s} median {r['rate']:6.0f} msgs/s, server CPU "
              f"{1e3 * r['server_cpu'] / args.messages:.3f} ms/msg; {stored[name]:,} of "
              f"{expected:,} messages in its Maildir")
    target = 1.2 if args.auth or args.starttls else 1.5
    met = ours["rate"] / theirs["rate"] >= target
    print(f"  ratio mailgateway / aiosmtpd: {ratio(ours['rate'], theirs['rate'])} "
          f"(target {target}x: {'met' if met else 'NOT met'}); CPU per message "
          f"{ratio(ours['server_cpu'], theirs['server_cpu'])}; auth cache {cache}")
    profiled = [r for r in runs["mailgateway"] if r["profile"]]
    if profiled:
        print("  py-spy profile of the gateway during its first round (that round perturbed):")
        print(profiled[0]["profile"])
    missing = [name for name, n in stored.items() if n != expected]
    if missing:
        raise SystemExit(f"messages missing from the Maildir of: {', '.join(missing)}")


def show(r: dict[str, Any], messages: int) -> None:
    print(f"  {r['name']:12s} {r['rate']:6.0f} msgs/s  ({r['elapsed']:.2f} s; server CPU "
          f"{1e3 * r['server_cpu'] / messages:.3f} ms/msg, {100 * r['server_sys'] / r['server_cpu']:.0f}"
          f"% system; main thread {1e3 * r['main_cpu'] / messages:.3f} ms/msg, busy "
          f"{100 * r['main_cpu'] / r['elapsed']:.0f}% of the run; client CPU "
          f"{1e3 * r['client_cpu'] / messages:.3f} ms/msg)", flush=True)
    if r["phases"]:
        print(f"  {'':12s} waits, ms: {r['phases']}", flush=True)


def show_errors(log: Path, lines: int = 60) -> None:
    """The gateway's log from its first failure or traceback on (a refused
    message in a benchmark is a bug to look into)."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return
    marks = ("Traceback", "failure", "Unhandled", "mail store")
    first = next((i for i, line in enumerate(text) if any(m in line for m in marks)), None)
    if first is not None:
        print(f"  the gateway's log ({log}) from its first error:", file=sys.stderr)
        print("\n".join(text[first:first + lines]), file=sys.stderr)


def median(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate (the lower middle one for an even count)."""
    return sorted(results, key=lambda r: r["rate"])[(len(results) - 1) // 2]

if __name__ == "__main__":
    main()
