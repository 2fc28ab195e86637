"""
POP3 load: logins per second (USER/PASS and APOP, 10 clients) and RETR
throughput of a 1,000-message mailbox of 32 KB messages, in MB/s (10**6
octets per second), for the gateway and, side by side on the same machine
and the same mail, Dovecot.

Setup, before the gateway starts: accounts C{login0..9@example.test}
(SCRAM keys for USER/PASS, and the legacy APOP secret) and
C{retr@example.test}; their INBOXes are filled with
L{gateway.store.maildir.MaildirStore} directly on the gateway's state
directory (10 messages of 2 KB per login account, C{--retr-messages} of
C{--retr-size} for C{retr}), which is what an SMTP delivery leaves behind.
The gateway's POP3 listener (no TLS) has C{plaintext_without_tls = true}
and C{APOP} among its mechanisms; 127.0.0.1 is a trusted network, so the
login throttle stays out of the way.

Dovecot (Debian's C{dovecot-pop3d}, if installed) runs in the foreground
(C{dovecot -F -c CONFIG}) from a throw-away configuration in a temporary
directory: POP3 only, on a free port of 127.0.0.1, a passwd-file passdb and
userdb, mail as C{nobody} in a copy of the same Maildirs.  So that both do
the same work per login, Dovecot's USER/PASS accounts hold
C{{SCRAM-SHA-256}} verifiers of 4096 iterations (the gateway's are the
same), and its APOP accounts (C{apop0..9}) hold the plain secret APOP
needs, as the gateway's legacy secret is.  Dovecot keeps its default
service settings (a new login process per connection, a new pop3 process
per session); C{--dovecot-fast} switches to its high-performance mode
(login processes serve many connections, pop3 processes are reused).
Without Dovecot (or with C{--no-dovecot}) the issue's reference figures
are printed instead (300 logins/s, 300 MB/s).

Measured, the servers taking turns, C{--rounds} times (3), median kept:

  - logins/s: 10 clients, each connect, greeting, USER+PASS pipelined (or
    APOP), QUIT, close; C{--logins} logins in all;
  - RETR MB/s: one client logs in to C{retr}, writes C{RETR 1} to
    C{RETR n} in one go and reads the replies (a blocking socket, 1 MiB
    reads; octets counted include the status lines and byte-stuffing).
    Pass 1 is the first: every RETR also marks the message \\Seen; the
    later rounds re-read seen mail;
  - RETR without pipelining: C{RETR} of the first 100 messages, one at a
    time, in ms per message (Twisted's stock server stalls ~40 ms here).

Run by hand::

    .venv/bin/python bench/pop3_load.py [--quick] [--profile] [--dovecot-fast]

C{--profile} attaches py-spy to the gateway in round 1 (logins, then RETR)
and prints where the time went; that round's figures are perturbed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from _common import (  # noqa: E402
    Dovecot,
    GatewayProcess,
    Profiler,
    add_account,
    copy_maildir,
    cpu_seconds,
    ratio,
    scram_sha256,
    stop_servers,
)

PASSWORD = "bench-password"
RETR_ACCOUNT = "retr@example.test"
CLIENTS = 10
TIMEOUT = 300.0  # seconds: any one measurement that takes longer fails
DOVECOT_REFERENCE = {"logins": 300.0, "retr": 300.0}


def login_accounts(prefix: str = "login") -> list[str]:
    return [f"{prefix}{i}@example.test" for i in range(CLIENTS)]


# -- mail -------------------------------------------------------------------------------

def message(i: int, size: int) -> bytes:
    head = (f"From: <sender{i % 13}@example.net>\r\nTo: <{RETR_ACCOUNT}>\r\n"
            f"Subject: pop3 bench {i}\r\nMessage-ID: <{i}@pop3.bench>\r\n\r\n").encode()
    line = b"%05d " % i + b"z" * 70 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def fill(state: Path, mailboxes: dict[str, tuple[int, int]]) -> None:
    """Deliver the messages with the gateway's store, before it starts."""
    from twisted.internet.defer import maybeDeferred
    from twisted.internet.task import Clock

    from gateway.store.maildir import MaildirStore
    clock = Clock()
    clock.advance(time.time())
    store = MaildirStore(str(state / "mail"), run_in_thread=maybeDeferred, clock=clock,
                         hostname="bench")
    for account, (count, size) in mailboxes.items():
        for i in range(count):
            out: list[Any] = []
            store.deliver([account], message(i, size)).addBoth(out.append)
            if not getattr(out[0], "stored", None):
                raise SystemExit(f"filling {account}: {out[0]}")
    store.close()


# -- Dovecot ----------------------------------------------------------------------------

def start_dovecot(base: Path, mail: Path, accounts: list[str], fast: bool) -> Dovecot | None:
    """
    Dovecot's POP3 server (L{_common.start_dovecot}) on copies of the
    accounts' Maildirs, each account also under its C{apop} name with a
    C{{PLAIN}} secret (APOP needs the password itself); C{fast} is its
    high-performance mode (login processes kept, one C{pop3} process for
    many sessions).
    """
    users: list[tuple[str, str, Path]] = []
    for account in accounts:
        local = account.partition("@")[0]
        home = base / "mail" / "example.test" / local
        copy_maildir(mail / "example.test" / local, home)
        users.append((account, scram_sha256(PASSWORD), home))
        if account.startswith("login"):
            apop_home = home.with_name(local.replace("login", "apop"))
            copy_maildir(mail / "example.test" / local, apop_home)
            users.append((account.replace("login", "apop"), f"{{PLAIN}}{PASSWORD}", apop_home))
    login = "  service_count = 0\n  process_min_avail = 2" if fast else ""
    pop3 = ("service pop3 {\n  service_count = 1000\n  process_min_avail = 10\n}"
            if fast else "")
    return _common.start_dovecot(base, "pop3", users, settings=pop3, login_settings=login)


# -- the clients --------------------------------------------------------------------------

class BenchError(Exception):
    pass


async def expect_ok(reader: asyncio.StreamReader) -> bytes:
    line = await reader.readline()
    if not line.startswith(b"+OK"):
        raise BenchError(f"expected +OK, got {line!r}")
    return line


async def logins(port: int, users: list[str], total: int, apop: bool) -> float:
    """C{total} logins by len(users) concurrent clients; returns the seconds."""
    todo = [total]

    async def client(user: str) -> None:
        while todo[0] > 0:
            todo[0] -= 1
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                greeting = await expect_ok(reader)
                if apop:
                    stamp = re.search(rb"<[^>]+>", greeting)
                    if stamp is None:
                        raise BenchError(f"no APOP timestamp in {greeting!r}")
                    digest = hashlib.md5(stamp.group(0) + PASSWORD.encode()).hexdigest()
                    writer.write(f"APOP {user} {digest}\r\n".encode())
                else:
                    writer.write(f"USER {user}\r\nPASS {PASSWORD}\r\n".encode())
                    await expect_ok(reader)
                await expect_ok(reader)
                writer.write(b"QUIT\r\n")
                await expect_ok(reader)
            finally:
                writer.close()

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client(user) for user in users)), TIMEOUT)
    return time.perf_counter() - started


class RetrClient:
    """One logged-in POP3 session on a blocking socket."""

    def __init__(self, port: int, user: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")
        self.line()
        self.sock.sendall(f"USER {user}\r\nPASS {PASSWORD}\r\nSTAT\r\n".encode())
        self.line(), self.line()
        self.count = int(self.line().split()[1])
        self.file.close()  # nothing buffered: STAT was the last reply

    def line(self) -> bytes:
        line = self.file.readline()
        if not line.startswith(b"+OK"):
            raise BenchError(f"expected +OK, got {line!r}")
        return line

    def retr(self, first: int, last: int, pipelined: bool) -> tuple[float, int]:
        """RETR C{first}..C{last}; returns the seconds and the octets read."""
        commands = [b"RETR %d\r\n" % i for i in range(first, last + 1)]
        started = time.perf_counter()
        octets = 0
        if pipelined:
            self.sock.sendall(b"".join(commands))
            octets = self.read_replies(len(commands))
        else:
            for command in commands:
                self.sock.sendall(command)
                octets += self.read_replies(1)
        return time.perf_counter() - started, octets

    def read_replies(self, n: int) -> int:
        # Byte-stuffing leaves CRLF "." CRLF only at the end of each reply.
        done, octets, tail = 0, 0, b""
        while done < n:
            data = self.sock.recv(1 << 20)
            if not data:
                raise BenchError("connection closed during RETR")
            if b"-ERR" in data:
                raise BenchError(f"RETR refused: {data[data.find(b'-ERR'):][:80]!r}")
            octets += len(data)
            done += (tail + data).count(b"\r\n.\r\n")
            tail = data[-4:]
        return octets

    def close(self) -> None:
        self.sock.sendall(b"QUIT\r\n")
        self.sock.recv(4096)
        self.sock.close()


def measure(name: str, port: int, pid: int | None, prefix: tuple[str, str],
            args: argparse.Namespace, profile: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    profiler = Profiler(pid, profile / "logins.txt") if profile and pid else None
    cpu = cpu_seconds(pid) if pid else 0.0
    for method, apop in (("user", False), ("apop", True)):
        users = login_accounts(prefix[apop])
        seconds = asyncio.run(logins(port, users, args.logins, apop))
        out[method] = args.logins / seconds
    out["login_cpu"] = (cpu_seconds(pid) - cpu) / (2 * args.logins) if pid else 0.0
    if profiler is not None:
        profiler.finish()
        out["profile"] = "  -- logins (USER/PASS, then APOP) --\n" + profiler.summary()
        assert pid is not None and profile is not None  # as profiler was made
        profiler = Profiler(pid, profile / "retr.txt")
    client = RetrClient(port, RETR_ACCOUNT)
    cpu = cpu_seconds(pid) if pid else 0.0
    seconds, octets = client.retr(1, client.count, pipelined=True)
    out["retr"], out["retr_octets"] = octets / seconds / 1e6, octets
    out["retr_cpu"] = (cpu_seconds(pid) - cpu) / client.count if pid else 0.0
    seconds, _ = client.retr(1, min(100, client.count), pipelined=False)
    out["one_at_a_time"] = 1e3 * seconds / min(100, client.count)
    client.close()
    if profiler is not None:
        profiler.finish()
        out["profile"] += "\n  -- RETR, pipelined then one at a time --\n" + profiler.summary()
    cpu_text = f"server CPU {1e3 * out['login_cpu']:.2f} ms/login" if pid else "many processes"
    retr_cpu = f", server CPU {1e6 * out['retr_cpu']:.0f} us/message" if pid else ""
    print(f"  {name:12s} USER/PASS {out['user']:6.0f} logins/s, APOP {out['apop']:6.0f} logins/s "
          f"({cpu_text}); RETR pipelined "
          f"{out['retr']:6.1f} MB/s ({octets / 1e6:.1f} MB{retr_cpu}), one at a time "
          f"{out['one_at_a_time']:.2f} ms/message", flush=True)
    return out


# -- the run ------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logins", type=int, default=1000, help="logins per method")
    parser.add_argument("--retr-messages", type=int, default=1000)
    parser.add_argument("--retr-size", type=int, default=32 * 1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-dovecot", action="store_true", help="print the reference figures")
    parser.add_argument("--dovecot-fast", action="store_true",
                        help="Dovecot's high-performance mode: login and pop3 processes reused")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: 100 logins, 100 messages, 1 round")
    parser.add_argument("--profile", action="store_true", help="py-spy on the gateway's round 1")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = parser.parse_args()
    if args.quick:
        args.logins, args.retr_messages, args.rounds = 100, 100, 1

    print(f"POP3 load: {args.logins:,} logins per method over {CLIENTS} clients; RETR of "
          f"{args.retr_messages:,} messages of {args.retr_size:,} octets; {args.rounds} round(s); "
          f"{os.cpu_count()} CPUs")
    gateway = GatewayProcess(auth='mechanisms = ["PLAIN", "SCRAM-SHA-256", "APOP"]\n'
                                  "plaintext_without_tls = true")
    for account in login_accounts():
        add_account(gateway.users, account, PASSWORD, "APOP")
    add_account(gateway.users, RETR_ACCOUNT, PASSWORD)
    dovecot_dir = Path(tempfile.mkdtemp(prefix="pop3-bench-dovecot-"))
    dovecot = None
    results: dict[str, list[dict[str, Any]]] = {"mailgateway": [], "Dovecot": []}
    try:
        started = time.perf_counter()
        fill(gateway.dir / "state", {RETR_ACCOUNT: (args.retr_messages, args.retr_size),
                                     **{a: (10, 2048) for a in login_accounts()}})
        print(f"  mailboxes filled with MaildirStore in {time.perf_counter() - started:.1f} s")
        servers: list[tuple[str, int, int | None, tuple[str, str]]] = []
        if not args.no_dovecot:
            dovecot = start_dovecot(dovecot_dir, gateway.dir / "state" / "mail",
                                    login_accounts() + [RETR_ACCOUNT], args.dovecot_fast)
            if dovecot is not None:
                servers.append(("Dovecot", dovecot.port, None, ("login", "apop")))
        gateway.start()
        assert gateway.process is not None
        servers.insert(0, ("mailgateway", gateway.ports["pop3"], gateway.process.pid,
                           ("login", "login")))
        for round_ in range(args.rounds):
            for name, port, pid, prefix in servers:
                profile = None
                if args.profile and pid and round_ == 0:
                    profile = gateway.dir
                results[name].append(measure(name, port, pid, prefix, args, profile))
    finally:
        stop_servers(gateway, dovecot, dovecot_dir, keep=args.keep)
    report(results, args)


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    ours = {k: med("mailgateway", k) for k in ("user", "apop", "retr", "one_at_a_time")}
    ours["retr_first"] = results["mailgateway"][0]["retr"]
    if results["Dovecot"]:
        peer = {k: med("Dovecot", k) for k in ("user", "apop", "retr", "one_at_a_time")}
        peer["retr_first"] = results["Dovecot"][0]["retr"]
        print("  medians, measured side by side with Dovecot:")
    else:
        peer = {"user": DOVECOT_REFERENCE["logins"], "apop": DOVECOT_REFERENCE["logins"],
                "retr": DOVECOT_REFERENCE["retr"], "retr_first": DOVECOT_REFERENCE["retr"],
                "one_at_a_time": float("nan")}
        print("  Dovecot not measured here: compared with the issue's reference figures")
    rows = [("USER/PASS logins/s", "user", 1.0), ("APOP logins/s", "apop", 1.0),
            ("RETR MB/s, pass 1 (marks \\Seen)", "retr_first", 0.5),
            ("RETR MB/s, median", "retr", 0.5)]
    for label, key, target in rows:
        met = ours[key] >= target * peer[key]
        print(f"    {label:32s} mailgateway {ours[key]:7.1f}  Dovecot {peer[key]:7.1f}  ratio "
              f"{ratio(ours[key], peer[key])}  (target {target}x: {'met' if met else 'NOT met'})")
    print(f"    {'RETR one at a time, ms/message':32s} mailgateway {ours['one_at_a_time']:7.2f}  "
          f"Dovecot {peer['one_at_a_time']:7.2f}")
    profiled = [r["profile"] for r in results["mailgateway"] if "profile" in r]
    if profiled:
        print("  py-spy profiles of the gateway's round 1 (that round perturbed):")
        print(profiled[0])


if __name__ == "__main__":
    main()
