"""
IMAP load: SELECT and FETCH 1:* (FLAGS) of a warm 100,000-message folder,
memory per idle logged-in connection (plain and implicit TLS), and a mixed
load of 10 clients, for the gateway and, side by side on the same machine
and the same mail, Dovecot (issue 7, item 4).

Setup, before the gateway starts (C{bench/_common.py}):

  - C{big@example.test}: C{--big} messages of 300-900 octets written into
    its INBOX (C{cur/}, two in three seen) and indexed once by
    L{gateway.store.maildir.MaildirStore} (L{_common.write_folder});
  - C{load0..9@example.test}: C{--load-messages} messages of 2-8 KB each,
    for the mixed load;
  - C{idle0..}: C{--idle-accounts} accounts with 10 small messages each,
    shared by the idle connections (C{--idle} connections: 10 per account
    by default).

The gateway's limits are raised for the idle connections
(C{max_connections}); its IMAP listeners are the end-to-end tests' (STARTTLS
and implicit TLS) with C{plaintext_without_tls = true}; 127.0.0.1 is a
trusted network.  Dovecot (Debian's C{dovecot-imapd}, if installed, and if
we are root) runs from a throw-away configuration on hard-linked copies of
the same Maildirs (L{_common.start_dovecot}), with C{{SCRAM-SHA-256}}
verifiers of 4096 iterations (the gateway's LOGIN does the same work), in
its default high-security mode (a login process per connection until
login, one imap process per session), with its process and connection
limits raised for the idle connections.

Measured, the servers taking turns, C{--rounds} times (3), medians kept:

  1. SELECT INBOX of the 100,000-message folder in a fresh session (connect
     and LOGIN untimed), C{--selects} times a round.  The first SELECT after
     the start (the gateway: the index on disk, the folder not yet in
     memory; Dovecot: building its own index from the Maildir) is printed
     apart;
  2. FETCH 1:* (FLAGS) of that folder, one logged-in session; and once,
     under C{strace -f -e trace=open,openat} of every thread of the
     gateway, the number of message files opened (it must be 0: the flags
     come from the index);
  3. mixed load: 10 clients, each its own account, looping LOGIN, SELECT,
     FETCH 1:* (FLAGS), FETCH of 5 bodies, STORE, APPEND (LITERAL+),
     STORE \\Deleted of the appended message, EXPUNGE, LOGOUT for
     C{--mixed-seconds}; commands per second (and sessions per second).

Memory, once per server and kind (plain, implicit TLS), each gateway
measurement in a freshly started gateway (Python keeps freed memory, so a
second measurement in the same process would reuse the first one's):
C{--idle} connections are opened, then all LOGIN, SELECT INBOX, IDLE; the
memory is read after each stage (gateway: VmRSS and smaps_rollup's Pss of
its process; Dovecot: VmRSS and Pss summed over all its processes, Pss
being the honest sum since most pages are shared) and divided by the
number of connections.  Target: under 100 KiB per idle connection.

Run by hand, as root for Dovecot::

    .venv/bin/python bench/imap_load.py [--quick] [--no-dovecot] [--no-memory]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    Dovecot,
    GatewayProcess,
    Profiler,
    add_account,
    copy_maildir,
    cpu_seconds,
    process_memory,
    ratio,
    scram_sha256,
    start_dovecot,
    stop,
    stop_servers,
    write_folder,
)
from _tracing import trace_gateway, traced_snapshot, where_memory_goes  # noqa: E402

PASSWORD = "bench-password"
BIG = "big@example.test"
CLIENTS = 10
TIMEOUT = 600.0  # seconds: any one measurement that takes longer fails
DOVECOT_SELECT_MS = 225.0  # the figure, when Dovecot is not measured here
TARGET_KIB = 100.0
IDLE_SECONDS = 10.0  # CPU time used while the connections idle, measured over this
#: How long the connections idle before the "settled" reading: longer than
#: the store's index_idle (30 s), after which an idle account's index is
#: closed, and its TRIM_INTERVAL (10 s), after which the memory is given back.
SETTLE_SECONDS = 45.0
PROBES = 5  # IDLE clients whose notification delay is measured


def load_accounts() -> list[str]:
    return [f"load{i}@example.test" for i in range(CLIENTS)]


def idle_accounts(n: int) -> list[str]:
    return [f"idle{i}@example.test" for i in range(n)]


# -- mail -------------------------------------------------------------------------------

def messages(count: int, low: int, high: int, seed: int) -> Any:
    rng = random.Random(seed)
    for i in range(count):
        head = (f"From: <sender{i % 97}@example.net>\r\nTo: <user@example.test>\r\n"
                f"Subject: imap bench {i}\r\nMessage-ID: <{seed}.{i}@imap.bench>\r\n"
                f"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n\r\n").encode()
        line = b"%06d " % i + b"y" * 68 + b"\r\n"
        yield head + line * max(1, (rng.randrange(low, high) - len(head)) // len(line))


def appended(i: int) -> bytes:
    return (f"From: <appender@example.net>\r\nTo: <user@example.test>\r\n"
            f"Subject: appended {i}\r\nMessage-ID: <append.{i}.{time.time_ns()}@imap.bench>\r\n"
            f"\r\n").encode() + b"appended body line\r\n" * 100


# -- a small IMAP client ------------------------------------------------------------------

class BenchError(Exception):
    pass


_LITERAL = re.compile(rb"\{(\d+)\}\r\n\Z")


class Client:
    """One IMAP connection on asyncio streams: commands one at a time,
    responses read whole (literals included)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.tags = 0

    @classmethod
    async def connect(cls, port: int, tls: ssl.SSLContext | None = None) -> Client:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None,
            limit=1 << 20)
        client = cls(reader, writer)
        greeting = await reader.readline()
        if not greeting.startswith(b"* OK"):
            raise BenchError(f"greeting: {greeting!r}")
        return client

    async def command(self, text: bytes, literal: bytes | None = None) -> list[bytes]:
        """Send one command (with a LITERAL+ literal at its end) and return
        the untagged lines; raise L{BenchError} unless it is OK."""
        self.tags += 1
        tag = b"a%d" % self.tags
        if literal is None:
            self.writer.write(tag + b" " + text + b"\r\n")
        else:
            self.writer.write(tag + b" " + text + b" {%d+}\r\n" % len(literal) + literal + b"\r\n")
        return await self.response(tag)

    async def response(self, tag: bytes) -> list[bytes]:
        lines = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise BenchError("connection closed")
            while (m := _LITERAL.search(line)) is not None:
                line += await self.reader.readexactly(int(m.group(1)))
                line += await self.reader.readline()
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise BenchError(f"{tag!r}: {line[:200]!r}")
                lines.append(line)
                return lines
            lines.append(line)

    async def login(self, user: str) -> None:
        await self.command(f'LOGIN "{user}" "{PASSWORD}"'.encode())

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


def tls_context(ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    return context


# -- 1 and 2: SELECT and FETCH FLAGS of the big folder -----------------------------------

async def select_once(port: int) -> tuple[float, int]:
    client = await Client.connect(port)
    try:
        await client.login(BIG)
        started = time.perf_counter()
        lines = await client.command(b"SELECT INBOX")
        seconds = time.perf_counter() - started
        exists = [int(x.split()[1]) for x in lines if x.endswith(b" EXISTS\r\n")]
        await client.command(b"LOGOUT")
    finally:
        await client.close()
    return seconds, exists[0] if exists else -1


def fetch_flags(port: int, strace_pid: int | None = None,
                items: bytes = b"1:* (FLAGS)") -> tuple[float, int, int | None]:
    """FETCH 1:* (FLAGS) (or C{items}) on a blocking socket (one big recv loop, so the
    client's parsing costs little); returns seconds, FETCH responses and,
    under strace, the message files opened."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        def until(tag: bytes) -> bytes:
            """Read until the line that starts with C{tag} has arrived whole
            (the server sends nothing after a tagged reply)."""
            buf = bytearray()
            found = False
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    raise BenchError("connection closed")
                start = max(0, len(buf) - len(tag) - 2)
                buf += data
                found = found or buf.startswith(tag + b" ") or buf.find(
                    b"\r\n" + tag + b" ", start) >= 0
                if found and buf.endswith(b"\r\n"):
                    return bytes(buf)

        until(b"* OK")
        sock.sendall(f'l LOGIN "{BIG}" "{PASSWORD}"\r\ns SELECT INBOX\r\n'.encode())
        until(b"s")
        tracer, trace = None, None
        if strace_pid is not None:
            trace = Path(tempfile.mktemp(prefix="imap-bench-strace-"))
            tids = os.listdir(f"/proc/{strace_pid}/task")
            tracer = subprocess.Popen(
                ["strace", "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(trace),
                 *[a for t in tids for a in ("-p", t)]],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # attached
        started = time.perf_counter()
        sock.sendall(b"f FETCH " + items + b"\r\n")
        data = until(b"f")
        seconds = time.perf_counter() - started
        opened = None
        if tracer is not None and trace is not None:
            time.sleep(0.5)
            stop(tracer)
            text = trace.read_text() if trace.exists() else ""
            opened = sum(1 for line in text.splitlines()
                         if "/cur/" in line or "/new/" in line)
            trace.unlink(missing_ok=True)
        if b"\r\nf OK" not in data and not data.startswith(b"f OK"):
            raise BenchError(f"FETCH failed: {data[-200:]!r}")
        sock.sendall(b"z LOGOUT\r\n")
        return seconds, data.count(b" FETCH ("), opened
    finally:
        sock.close()


# -- 3: memory per idle connection -----------------------------------------------------------

async def until_untagged(c: Client, word: bytes, timeout: float = 30.0) -> None:
    """Read an idling client's lines until an untagged one with C{word}."""
    async def read() -> None:
        while True:
            line = await c.reader.readline()
            if not line:
                raise BenchError("connection closed while idling")
            if line.startswith(b"* ") and word in line:
                return
    await asyncio.wait_for(read(), timeout)


async def notification_delays(port: int, tls: ssl.SSLContext | None, clients: list[Client],
                              accounts: list[str], mail: Path) -> dict[str, list[float]]:
    """
    How long the first L{PROBES} idling clients take to hear (seconds):
    a message another program puts into C{new/} (EXISTS), another
    session's APPEND (EXISTS; from the command sent, its own fsyncs
    included) and its STORE of a new keyword (FETCH).  The connections have idled
    long enough for their accounts' indexes to be closed.
    """
    delays: dict[str, list[float]] = {"another program's message": [],
                                      "another session's APPEND": [],
                                      "another session's STORE": []}
    for i, c in enumerate(clients[:PROBES]):
        account = accounts[i % len(accounts)]
        local, _, domain = account.partition("@")
        new = mail / domain / local / "new"
        path = new.parent / "tmp" / f"bench-external-{time.time_ns()}-{i}"
        path.write_bytes(b"Subject: from outside\r\n\r\nbody\r\n")
        started = time.perf_counter()
        path.rename(new / path.name)
        await until_untagged(c, b" EXISTS")
        delays["another program's message"].append(time.perf_counter() - started)
        other = await Client.connect(port, tls)
        try:
            await other.login(account)
            await other.command(b"SELECT INBOX")
            await asyncio.sleep(1.5)  # the changes above are reported and settled
            while True:  # what the SELECT itself caused (\Recent), if anything
                try:
                    await until_untagged(c, b"", 0.2)
                except TimeoutError:
                    break
            started = time.perf_counter()
            await other.command(b"APPEND INBOX", appended(i))
            await until_untagged(c, b" EXISTS")
            delays["another session's APPEND"].append(time.perf_counter() - started)
            started = time.perf_counter()
            keyword = b"$Probe%d" % time.time_ns()  # new each time: a change
            await other.command(b"STORE 1 +FLAGS.SILENT (" + keyword + b")")
            await until_untagged(c, b"FETCH")
            delays["another session's STORE"].append(time.perf_counter() - started)
            await other.command(b"LOGOUT")
        finally:
            await other.close()
    return delays


async def idle_connections(port: int, accounts: list[str], n: int, tls: ssl.SSLContext | None,
                           memory: Any, on_stage: Any = None,
                           cpu: Any = None, settle: float = 0.0,
                           mail: Path | None = None) -> dict[str, Any]:
    """Open C{n} connections, then LOGIN, SELECT INBOX and IDLE on all;
    C{memory()} after each stage (and C{on_stage(name)}, if given), and
    once more after C{settle} seconds of idling ("settled").  With C{cpu},
    the CPU time used over L{IDLE_SECONDS} after that; with C{mail} (the
    gateway's mail directory), how long IDLE clients take to hear of
    changes (L{notification_delays}).  Returns the readings and seconds."""
    gate = asyncio.Semaphore(50)
    clients: list[Client] = []
    readings: dict[str, Any] = {"before": memory()}
    if on_stage is not None:
        on_stage("before")

    async def each(work: Any) -> None:
        async with gate:
            await work

    async def opened() -> None:
        clients.append(await Client.connect(port, tls))

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(each(opened()) for _ in range(n))), TIMEOUT)
    await asyncio.sleep(1.0)
    readings["connected"] = memory()
    await asyncio.wait_for(asyncio.gather(*(
        each(c.login(accounts[i % len(accounts)])) for i, c in enumerate(clients))), TIMEOUT)
    await asyncio.sleep(1.0)
    readings["logged in"] = memory()
    await asyncio.wait_for(asyncio.gather(*(
        each(c.command(b"SELECT INBOX")) for c in clients)), TIMEOUT)
    await asyncio.sleep(1.0)
    readings["selected"] = memory()

    async def idle(c: Client) -> None:
        c.tags += 1
        c.writer.write(b"i IDLE\r\n")
        line = await c.reader.readline()
        if not line.startswith(b"+"):
            raise BenchError(f"IDLE: {line!r}")

    await asyncio.wait_for(asyncio.gather(*(each(idle(c)) for c in clients)), TIMEOUT)
    await asyncio.sleep(2.0)
    readings["idling"] = memory()
    readings["seconds"] = time.perf_counter() - started
    await asyncio.sleep(max(0.0, settle - 2.0))
    readings["settled"] = memory()
    if on_stage is not None:
        on_stage("idling")
    if cpu is not None:  # what the idle connections cost while nothing happens
        before, t0 = cpu(), time.perf_counter()
        await asyncio.sleep(IDLE_SECONDS)
        readings["idle_cpu"] = (cpu() - before) / (time.perf_counter() - t0)
    if mail is not None:
        readings["delays"] = await notification_delays(port, tls, clients, accounts, mail)
    # Each IDLE still answers DONE: the connections were alive.
    done = 0

    async def finish(c: Client) -> None:
        nonlocal done
        c.writer.write(b"DONE\r\n")
        line = await c.reader.readline()
        while line.startswith(b"* "):
            line = await c.reader.readline()
        if line.startswith(b"i OK"):
            done += 1
        await c.close()

    await asyncio.wait_for(asyncio.gather(*(each(finish(c)) for c in clients)), TIMEOUT)
    readings["alive"] = done
    return readings


def raise_descriptor_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else max(soft, min(hard, wanted))
    if os.geteuid() == 0 and hard != resource.RLIM_INFINITY and hard < wanted:
        target = hard = wanted
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def memory_per_connection(readings: dict[str, Any], n: int, key: str) -> dict[str, float]:
    base = readings["before"][key]
    return {stage: (readings[stage][key] - base) / n
            for stage in ("connected", "logged in", "selected", "idling", "settled")
            if stage in readings}


# -- 4: mixed load ----------------------------------------------------------------------------

async def mixed(port: int, seconds: float) -> dict[str, float]:
    ops = [0]
    sessions = [0]
    deadline = time.monotonic() + seconds
    rng = random.Random(7)

    async def client(user: str, n: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            c = await Client.connect(port)
            try:
                await c.login(user)
                lines = await c.command(b"SELECT INBOX")
                exists = next(int(x.split()[1]) for x in lines if x.endswith(b" EXISTS\r\n"))
                await c.command(b"FETCH 1:* (FLAGS)")
                first = max(1, exists - 4)
                await c.command(b"FETCH %d:%d (UID RFC822.SIZE BODY.PEEK[])" % (first, exists))
                k = rng.randrange(1, exists + 1)
                await c.command(b"STORE %d +FLAGS (\\Flagged)" % k)
                reply = await c.command(b"APPEND INBOX (\\Seen)", appended(n * 100000 + i))
                found = re.search(rb"APPENDUID \d+ (\d+)", reply[-1])
                if found is None:
                    raise BenchError(f"no APPENDUID: {reply[-1]!r}")
                await c.command(b"UID STORE " + found.group(1) + b" +FLAGS.SILENT (\\Deleted)")
                await c.command(b"EXPUNGE")
                await c.command(b"LOGOUT")
                ops[0] += 9
                sessions[0] += 1
            finally:
                await c.close()

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client(u, n) for n, u in enumerate(load_accounts()))),
                           seconds + TIMEOUT)
    elapsed = time.perf_counter() - started
    return {"ops": ops[0] / elapsed, "sessions": sessions[0] / elapsed}


# -- the run ------------------------------------------------------------------------------

class Server:
    def __init__(self, name: str, port: int, tls_port: int | None, pid: int | None) -> None:
        self.name, self.port, self.tls_port, self.pid = name, port, tls_port, pid
        self.results: list[dict[str, Any]] = []
        self.first_select: float | None = None
        self.memory: dict[str, dict[str, Any]] = {}


def measure_round(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    selects = []
    for _ in range(args.selects):
        seconds, exists = asyncio.run(select_once(server.port))
        if exists != args.big:
            raise BenchError(f"{server.name}: SELECT saw {exists} messages, not {args.big}")
        selects.append(seconds)
    out["select"] = statistics.median(selects)
    out["fetch"], count, _ = fetch_flags(server.port)
    if count != args.big:
        raise BenchError(f"{server.name}: FETCH FLAGS gave {count} responses")
    out.update(asyncio.run(mixed(server.port, args.mixed_seconds)))
    print(f"  {server.name:12s} SELECT {1e3 * out['select']:7.1f} ms (median of {args.selects}), "
          f"FETCH 1:* (FLAGS) {1e3 * out['fetch']:7.1f} ms, mixed load {out['ops']:6.1f} "
          f"commands/s ({out['sessions']:.1f} sessions/s); load {os.getloadavg()[0]:.1f}",
          flush=True)
    return out


def measure_memory(server: Server, kind: str, args: argparse.Namespace,
                   context: ssl.SSLContext | None, pids: Any, trace: Path | None = None,
                   mail: Path | None = None) -> None:
    port = server.tls_port if kind == "TLS" else server.port
    if port is None:
        return
    if kind != "TLS":
        context = None
    accounts = idle_accounts(args.idle_accounts)

    def memory() -> dict[str, int]:
        return process_memory(pids())

    # A few full sessions first, so that lazily built state (imports, the
    # first TLS context use, caches) is in the baseline.
    asyncio.run(idle_connections(port, accounts[:5], 10, context, memory))
    snapshots: dict[str, Any] = {}

    def snapshot(stage: str) -> None:
        assert trace is not None and server.pid is not None
        snapshots[stage] = traced_snapshot(server.pid, trace, len(snapshots) + 1)

    def cpu() -> float:
        total = 0.0
        for p in pids():
            try:
                total += cpu_seconds(p)
            except (FileNotFoundError, ProcessLookupError):
                pass  # gone meanwhile
        return total

    readings = asyncio.run(idle_connections(port, accounts, args.idle, context, memory,
                                            snapshot if trace is not None else None, cpu,
                                            args.settle, mail))
    server.memory[kind] = readings
    rss = memory_per_connection(readings, args.idle, "rss")
    pss = memory_per_connection(readings, args.idle, "pss")
    stages = ", ".join(f"{stage} {rss[stage]:.1f}/{pss[stage]:.1f}" for stage in rss)
    print(f"  {server.name:12s} {kind:5s} {args.idle:,} connections ({readings['alive']} answered "
          f"DONE; {readings['idling']['processes']} processes): KiB per connection, RSS/PSS, "
          f"after each stage: {stages}; CPU while idle {100 * readings['idle_cpu']:.1f} % of "
          f"a core", flush=True)
    for what, seconds in readings.get("delays", {}).items():
        print(f"  {server.name:12s} {kind:5s} IDLE hears of {what} after "
              + ", ".join(f"{1e3 * x:.0f}" for x in seconds) + " ms", flush=True)
    if snapshots:
        print(where_memory_goes(snapshots["before"], snapshots["idling"], args.idle), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", type=int, default=100_000, help="messages in the big folder")
    parser.add_argument("--selects", type=int, default=5, help="SELECTs per round")
    parser.add_argument("--load-messages", type=int, default=200)
    parser.add_argument("--mixed-seconds", type=float, default=20.0)
    parser.add_argument("--idle", type=int, default=2000, help="idle connections")
    parser.add_argument("--idle-accounts", type=int, default=200)
    parser.add_argument("--one-per-account", action="store_true",
                        help="memory: each idle connection its account's only one "
                             "(--idle accounts; the real case of many users)")
    parser.add_argument("--settle", type=float, default=SETTLE_SECONDS,
                        help="memory: seconds of idling before the settled reading")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-dovecot", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-tls", action="store_true", help="memory: plain connections only")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: 5,000 messages, 200 idle connections, 1 round")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="memory: the gateway under tracemalloc, where its memory goes "
                             "(its figures are then inflated by the tracing)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy on the gateway's SELECT and FETCH FLAGS, before the rounds")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = parser.parse_args()
    if args.quick:
        args.big, args.idle, args.idle_accounts, args.rounds = 5000, 200, 20, 1
        args.mixed_seconds, args.selects, args.load_messages = 5.0, 3, 50
    if args.one_per_account:
        args.idle_accounts = args.idle
    raise_descriptor_limit(4 * args.idle + 1000)

    print(f"IMAP load: SELECT and FETCH FLAGS of {args.big:,} messages, {CLIENTS} mixed-load "
          f"clients for {args.mixed_seconds:.0f} s, {args.idle:,} idle connections over "
          f"{args.idle_accounts} accounts; {args.rounds} round(s); {os.cpu_count()} CPUs; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    if args.keep:  # GatewayProcess removes its directory at exit unless told
        os.environ["MAILGATEWAY_KEEP_E2E"] = "1"
    limits = (f"[limits]\nmax_connections = {args.idle + 100}\n"
              f"max_connections_per_address = {args.idle + 100}\n")
    gateway = GatewayProcess(extra=limits, auth='mechanisms = ["PLAIN", "SCRAM-SHA-256"]\n'
                                               "plaintext_without_tls = true")
    accounts = [BIG, *load_accounts(), *idle_accounts(args.idle_accounts)]
    started = time.perf_counter()
    for account in accounts:
        add_account(gateway.users, account, PASSWORD)
    dovecot_dir = Path(tempfile.mkdtemp(prefix="imap-bench-dovecot-"))
    dovecot: Dovecot | None = None
    servers: list[Server] = []
    state = gateway.dir / "state"
    context = tls_context(gateway.certs.ca_certificate)
    try:
        write_folder(state, BIG, messages(args.big, 300, 900, 1))
        for n, account in enumerate(load_accounts()):
            write_folder(state, account, messages(args.load_messages, 2000, 8000, 10 + n))
        for n, account in enumerate(idle_accounts(args.idle_accounts)):
            write_folder(state, account, messages(10, 300, 900, 1000 + n))
        print(f"  {len(accounts)} accounts made and filled in {time.perf_counter() - started:.1f} s",
              flush=True)
        if not args.no_dovecot:
            dovecot = start_peer(dovecot_dir, state, accounts, gateway, args)
        gateway.start()
        assert gateway.process is not None
        ours = Server("mailgateway", gateway.ports["imap"], gateway.ports["imaps"],
                      gateway.process.pid)
        servers.append(ours)
        if dovecot is not None:
            servers.append(Server("Dovecot", dovecot.port, dovecot.tls_port, None))
        for server in servers:  # the gateway: first use; Dovecot: builds its index
            server.first_select, _ = asyncio.run(select_once(server.port))
            print(f"  {server.name:12s} first SELECT after the start "
                  f"{1e3 * server.first_select:7.1f} ms", flush=True)
        _, _, opened = fetch_flags(ours.port, strace_pid=ours.pid)
        print(f"  mailgateway  FETCH 1:* (FLAGS) under strace: {opened} message files opened",
              flush=True)
        ours.opened = opened  # type: ignore[attr-defined]
        _, _, control = fetch_flags(ours.port, strace_pid=ours.pid, items=b"1:3 (BODY.PEEK[])")
        print(f"  mailgateway  FETCH 1:3 (BODY.PEEK[]) under strace, the control: {control} "
              "message files opened", flush=True)
        if args.profile:
            profile(ours, gateway.dir, args)
        for _ in range(args.rounds):
            for server in servers:
                server.results.append(measure_round(server, args))
        if not args.no_memory:
            for kind in ("plain",) if args.no_tls else ("plain", "TLS"):
                gateway.stop()  # a fresh process per measurement (see the docstring)
                trace = trace_gateway(gateway, kind) if args.tracemalloc else None
                gateway.start(wait=trace is None)
                if trace is not None:
                    gateway.wait_ready(timeout=180)  # tracemalloc slows the start down
                assert gateway.process is not None
                pid = gateway.process.pid
                ours.pid, ours.port, ours.tls_port = pid, gateway.ports["imap"], gateway.ports["imaps"]
                measure_memory(ours, kind, args, context, lambda pid=pid: [pid], trace,
                               state / "mail")
                if dovecot is not None:
                    measure_memory(servers[1], kind, args, context, dovecot.pids)
    finally:
        stop_servers(gateway, dovecot, dovecot_dir, keep=args.keep)
    report(servers, args)


def profile(server: Server, where: Path, args: argparse.Namespace) -> None:
    """py-spy on the gateway: 20 SELECTs, then 3 FETCH 1:* (FLAGS)."""
    assert server.pid is not None
    profiler = Profiler(server.pid, where / "select.txt")
    for _ in range(20):
        asyncio.run(select_once(server.port))
    profiler.finish()
    print("  -- py-spy: 20 SELECTs of the big folder, fresh sessions --")
    print(profiler.summary())
    profiler = Profiler(server.pid, where / "fetch.txt")
    for _ in range(3):
        fetch_flags(server.port)
    profiler.finish()
    print("  -- py-spy: 3 FETCH 1:* (FLAGS) --")
    print(profiler.summary(), flush=True)


def start_peer(base: Path, state: Path, accounts: list[str], gateway: GatewayProcess,
               args: argparse.Namespace) -> Dovecot | None:
    started = time.perf_counter()
    mail = state / "mail" / "example.test"
    users = []
    secret = scram_sha256(PASSWORD)
    for account in accounts:
        local = account.partition("@")[0]
        copy_maildir(mail / local, base / "mail" / local)
        users.append((account, secret, base / "mail" / local))
    n = args.idle + 200
    settings = f"""
default_client_limit = {4 * n}
default_process_limit = {n}
protocol imap {{
  mail_max_userip_connections = {n}
}}
service imap-login {{
  process_limit = {n}
}}
service imap {{
  process_limit = {n}
}}
service anvil {{
  client_limit = {4 * n}
}}
service auth {{
  client_limit = {4 * n}
}}
"""
    dovecot = start_dovecot(base, "imap", users, settings=settings,
                            tls=(gateway.certs.certificate, gateway.certs.key))
    if dovecot is not None:
        print(f"  Dovecot started on copies of the Maildirs in {time.perf_counter() - started:.1f} s",
              flush=True)
    return dovecot


def report(servers: list[Server], args: argparse.Namespace) -> None:
    if not servers or not servers[0].results:
        return
    ours = servers[0]
    peer = servers[1] if len(servers) > 1 and servers[1].results else None

    def med(server: Server, key: str) -> float:
        return statistics.median(r[key] for r in server.results)

    print(f"  medians of {len(ours.results)} round(s)"
          + (", side by side with Dovecot:" if peer else
             " (Dovecot not measured: its SELECT from the issue, 225 ms):"))
    ms_select = 1e3 * med(ours, "select")
    peer_select = 1e3 * med(peer, "select") if peer else DOVECOT_SELECT_MS
    target = DOVECOT_SELECT_MS  # the issue's: Dovecot's on these machines
    print(f"    SELECT of {args.big:,} messages, warm   mailgateway {ms_select:8.1f} ms  Dovecot "
          f"{peer_select:8.1f} ms  ratio {ratio(ms_select, peer_select)}  (target under "
          f"{target:.0f} ms: {'met' if ms_select < target else 'NOT met'})")
    print(f"    first SELECT after the start        mailgateway {1e3 * (ours.first_select or 0):8.1f}"
          f" ms  Dovecot {1e3 * (peer.first_select or 0) if peer else float('nan'):8.1f} ms")
    fetch_ours = 1e3 * med(ours, "fetch")
    fetch_peer = 1e3 * med(peer, "fetch") if peer else float("nan")
    print(f"    FETCH 1:* (FLAGS)                   mailgateway {fetch_ours:8.1f} ms  Dovecot "
          f"{fetch_peer:8.1f} ms  ratio {ratio(fetch_ours, fetch_peer) if peer else 'n/a'}; "
          f"message files opened: {getattr(ours, 'opened', None)}")
    ops_ours = med(ours, "ops")
    ops_peer = med(peer, "ops") if peer else float("nan")
    print(f"    mixed load, commands/s              mailgateway {ops_ours:8.1f}     Dovecot "
          f"{ops_peer:8.1f}     ratio {ratio(ops_ours, ops_peer) if peer else 'n/a'}")
    for kind in ("plain", "TLS"):
        if kind not in ours.memory:
            continue
        mine = memory_per_connection(ours.memory[kind], args.idle, "rss")["settled"]
        line = (f"    idle connection ({kind + '),':7s} KiB      mailgateway {mine:8.1f} RSS ")
        if peer and kind in peer.memory:
            theirs = memory_per_connection(peer.memory[kind], args.idle, "pss")["settled"]
            theirs_rss = memory_per_connection(peer.memory[kind], args.idle, "rss")["settled"]
            line += (f"Dovecot {theirs:8.1f} PSS ({theirs_rss:.0f} RSS)  ratio "
                     f"{ratio(mine, theirs)}")
        print(line + f"  (target under {TARGET_KIB:.0f}: "
              f"{'met' if mine < TARGET_KIB else 'NOT met'})")


if __name__ == "__main__":
    main()
