"""
What the benchmarks in C{bench/} share: starting the real gateway (the
end-to-end tests' L{tests.gatewayprocess.GatewayProcess}), CPU time of a
process, and a py-spy profile of one process summarised per function.

Nothing here is imported by the gateway or its tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.gatewayprocess import GatewayProcess, add_account  # noqa: E402

__all__ = ["ROOT", "GatewayProcess", "add_account", "cpu_seconds", "cpu_times", "Profiler", "ratio", "stop"]

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int, main_thread: bool = False) -> tuple[float, float]:
    """User and system CPU seconds of process C{pid} so far: all its threads,
    or only its main thread (the reactor or event loop)."""
    with open(f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def cpu_seconds(pid: int, main_thread: bool = False) -> float:
    """User + system CPU seconds of process C{pid} (see L{cpu_times})."""
    return sum(cpu_times(pid, main_thread))


def ratio(ours: float, peer: float) -> str:
    return f"{ours / peer:.2f}x" if peer else "n/a"


def stop(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after C{timeout}: only the process we started."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Profiler:
    """
    C{py-spy record} (raw, collapsed stacks, non-blocking sampling) attached to
    one process for as long as the measurement runs (it pauses the process for
    each sample: expect the measured rate to drop); L{summary} prints where
    the CPU time went, per function, for the reactor thread and the worker
    threads apart.  Samples whose leaf frame waits (L{IDLE}: the reactor in
    epoll, workers waiting for work) are counted apart; the percentages are
    of the other ("busy") samples.  The reactor's C{doPoll} also covers its
    loop over ready descriptors, so it is counted as waiting: read the
    reactor thread's CPU time (L{cpu_seconds}) for how busy it really is.
    """

    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        self.out = out
        self.rate = rate
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.process = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--format", "raw", "--output", str(out),
             "--rate", str(rate), "--threads"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.started = time.monotonic()
        time.sleep(0.5)  # let it attach

    def finish(self) -> float:
        elapsed = time.monotonic() - self.started
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return elapsed

    def summary(self, top: int = 18) -> str:
        if not self.out.exists():
            return "  (py-spy wrote no profile)"
        selfs: dict[str, Counter[str]] = {"reactor": Counter(), "workers": Counter()}
        inclusive: dict[str, Counter[str]] = {"reactor": Counter(), "workers": Counter()}
        totals: Counter[str] = Counter()
        waiting: Counter[str] = Counter()
        for line in self.out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            thread, *rest = stack.split(";")  # "thread (TID): NAME", frames
            frames = [_short(f) for f in rest]
            kind = "reactor" if thread.endswith("MainThread") else "workers"
            if not frames or frames[-1] in IDLE:
                waiting[kind] += n
                continue
            totals[kind] += n
            selfs[kind][frames[-1]] += n
            for frame in set(frames):
                inclusive[kind][frame] += n
        lines = [f"  samples at {self.rate}/s, busy (waiting): reactor thread {totals['reactor']} "
                 f"({waiting['reactor']}), worker threads {totals['workers']} "
                 f"({waiting['workers']}); profile: {self.out}"]
        for kind in ("reactor", "workers"):
            if not totals[kind]:
                continue
            lines.append(f"  -- {kind}: own time (top {top}) --")
            for frame, n in selfs[kind].most_common(top):
                lines.append(f"    {100 * n / totals[kind]:5.1f}%  {frame}")
            lines.append(f"  -- {kind}: inclusive, gateway and Twisted frames (top {top}) --")
            ours = [(f, n) for f, n in inclusive[kind].most_common()
                    if ("gateway/" in f or "twisted/" in f) and n < 0.98 * totals[kind]]
            for frame, n in ours[:top]:
                lines.append(f"    {100 * n / totals[kind]:5.1f}%  {frame}")
        return "\n".join(lines)


#: Leaf frames that wait rather than work (py-spy's own idle test does not
#: see through these on this kernel): epoll, the thread pool's queue.
IDLE = {"EPollReactor.doPoll (internet/epollreactor.py)", "Condition.wait (threading.py)"}


def _short(frame: str) -> str:
    """C{"f (/long/path/pkg/mod.py:12)"} -> C{"f (pkg/mod.py)"}: per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    parts = path.split("/")
    return f"{name} ({'/'.join(parts[-3:] if 'gateway' in parts[-3:-1] else parts[-2:])})"


# -- mail for the servers under test (added for imap_load.py) ------------------------------

__all__ += ["deliver_messages", "write_folder", "scram_sha256", "process_memory", "Dovecot",
            "copy_maildir", "descendants", "start_dovecot", "stop_servers"]


def _sync_store(mail: Path) -> Any:
    """A L{MaildirStore} on C{mail} whose thread calls run at once (the
    gateway is not running yet: nothing else uses the directory)."""
    from twisted.internet.defer import maybeDeferred
    from twisted.internet.task import Clock

    from gateway.store.maildir import MaildirStore
    clock = Clock()
    clock.advance(time.time())
    return MaildirStore(str(mail), run_in_thread=maybeDeferred, clock=clock, hostname="bench")


def _result(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def deliver_messages(state: Path, mailboxes: dict[str, list[bytes]]) -> None:
    """Deliver each account's messages with the gateway's store (each one
    fsynced and indexed, as an SMTP delivery does), before the gateway
    starts.  For a few thousand messages; see L{write_folder} for more."""
    store = _sync_store(state / "mail")
    for account, messages in mailboxes.items():
        for message in messages:
            report = _result(store.deliver([account], message))
            if account not in report.stored:
                raise SystemExit(f"filling {account}: {report.refused}")
    _result(store.close())


def write_folder(state: Path, account: str, messages: Any, seen_every: int = 3) -> int:
    """
    Put many messages into an account's INBOX quickly: the files are
    written straight into C{cur/} (no fsync), named as the store names them
    (with C{S=} and C{W=} sizes, every C{seen_every}-th one unseen), the
    directories' mtimes set ten seconds back (settled, see
    L{gateway.store.folder}), then the store opens the folder once, which
    lists C{cur/}, stats each file and builds the index, as for mail that
    arrived while the gateway was down.  C{bench/store_open.py} does the
    same.  C{messages} yields the messages (bytes with CRLF line ends).

    @return: the number of messages indexed.
    """
    from gateway.store.names import make_key
    store = _sync_store(state / "mail")
    _result(store.status(account, "INBOX"))  # creates the account's Maildir and index
    from gateway.store.names import account_path
    home = Path(account_path(str(state / "mail"), account))
    base = time.time() - 10**6
    count = 0
    for i, body in enumerate(messages):
        key = make_key(base + i, 4242, i, f"{i:08x}", "bench", len(body))
        path = home / "cur" / f"{key}:2,{'' if i % seen_every == 0 else 'S'}"
        path.write_bytes(body)
        os.utime(path, (base + i, base + i))
        count += 1
    past = time.time_ns() - 10 * 10**9
    for sub in ("new", "cur"):
        os.utime(home / sub, ns=(past, past))
    session = _result(store.open_folder(account, "INBOX"))
    indexed = len(session.messages())
    _result(session.close())
    _result(store.close())
    if indexed != count:
        raise SystemExit(f"{account}: {count} files written, {indexed} indexed")
    return indexed


def scram_sha256(password: str, iterations: int = 4096) -> str:
    """A Dovecot C{{SCRAM-SHA-256}} verifier: the same work per login as
    the gateway's SCRAM keys."""
    import base64

    from gateway.auth.verifiers import derive_scram_keys
    keys = derive_scram_keys("", password, "SHA-256", iterations)
    parts = [base64.b64encode(x).decode() for x in (keys.salt, keys.stored_key, keys.server_key)]
    return "{SCRAM-SHA-256}" + ",".join([str(keys.iterations), *parts])


# -- memory of processes ---------------------------------------------------------------

def _status_kib(pid: int, field_name: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """C{pid} and every process below it (from C{/proc/*/stat})."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def process_memory(pids: list[int]) -> dict[str, int]:
    """KiB summed over C{pids}: C{rss} (VmRSS: shared pages counted in
    every process), C{pss} (smaps_rollup's proportional share: each shared
    page split between its users, the honest sum over many processes) and
    C{processes}."""
    return {"rss": sum(_status_kib(p, "VmRSS") for p in pids),
            "pss": sum(_pss_kib(p) for p in pids),
            "processes": sum(1 for p in pids if _status_kib(p, "VmRSS"))}


# -- Dovecot from a throw-away configuration ----------------------------------------

class Dovecot:
    """A running C{dovecot -F -c CONFIG} (see L{start_dovecot})."""

    def __init__(self, process: subprocess.Popen[bytes], base: Path, port: int,
                 tls_port: int | None) -> None:
        self.process, self.base, self.port, self.tls_port = process, base, port, tls_port

    @property
    def pid(self) -> int:
        return self.process.pid

    def pids(self, names: tuple[str, ...] = ()) -> list[int]:
        """Its processes (the master and all below it), or those whose
        command name starts with one of C{names} (C{imap}, C{imap-login})."""
        pids = descendants(self.process.pid)
        if not names:
            return pids
        out = []
        for p in pids:
            try:
                with open(f"/proc/{p}/comm") as f:
                    comm = f.read().strip()
            except FileNotFoundError:
                continue
            if comm.startswith(names):
                out.append(p)
        return out

    def stop(self) -> None:
        stop(self.process)


def copy_maildir(source: Path, target: Path) -> None:
    """Copy a Maildir (and its Maildir++ folders) for Dovecot, without the
    gateway's own files: message files are hard-linked (the servers rename
    files, never change one in place), copied where a link is refused."""
    for directory, _subdirs, files in os.walk(source):
        rel = Path(directory).relative_to(source)
        (target / rel).mkdir(parents=True, exist_ok=True)
        if rel.name not in ("cur", "new", "tmp"):
            continue
        for name in files:
            try:
                os.link(Path(directory) / name, target / rel / name)
            except OSError:
                shutil.copy2(Path(directory) / name, target / rel / name)


def start_dovecot(base: Path, protocol: str, users: list[tuple[str, str, Path]], *,
                  tls: tuple[Path, Path] | None = None, settings: str = "",
                  login_settings: str = "", timeout: float = 15.0) -> Dovecot | None:
    """
    Start Dovecot (Debian's C{dovecot-core} and C{dovecot-<protocol>d}) in
    the foreground from a throw-away configuration in C{base}: one protocol
    (C{"pop3"} or C{"imap"}) on a free port of 127.0.0.1, and with C{tls}
    (certificate and key) its implicit-TLS port too; a passwd-file passdb
    and userdb; mail as C{nobody} in C{maildir:~}.

    @param users: C{(login, secret, home)}: the secret as Dovecot's passwd
        file takes it (C{{PLAIN}}..., L{scram_sha256}); the home is the
        account's Maildir (see L{copy_maildir}), chowned to C{nobody} here.
    @param settings: more configuration text (service blocks, limits).
    @param login_settings: more lines inside the C{<protocol>-login} service
        block (its process model).
    @return: C{None} if Dovecot is not installed or we are not root.
    """
    binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
    if not os.path.exists(binary) or os.geteuid() != 0:
        return None
    if not os.path.exists(f"/usr/lib/dovecot/{protocol}"):
        print(f"  Dovecot's {protocol} server is not installed "
              f"(apt-get install dovecot-{protocol}d)")
        return None
    from tests.support import free_ports
    port, tls_port = free_ports(2)
    base.chmod(0o755)
    for _, _, home in users:
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "-R", "nobody:nogroup", str(home)], check=True)
    (base / "passwd").write_text("".join(
        f"{login}:{secret}:65534:65534::{home}::\n" for login, secret, home in users))
    ssl = "ssl = no"
    if tls is not None:
        ssl = f"ssl = yes\nssl_cert = <{tls[0]}\nssl_key = <{tls[1]}"
    secure = f"port = {tls_port}\n    address = 127.0.0.1" if tls is not None else "port = 0"
    (base / "dovecot.conf").write_text(f"""
protocols = {protocol}
listen = 127.0.0.1
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain apop
first_valid_uid = 1
mail_location = maildir:~
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = username_format=%u {base}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {base}/passwd
}}
service {protocol}-login {{
  inet_listener {protocol} {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener {protocol}s {{
    {secure}
  }}
{login_settings}
}}
{settings}
""")
    process = subprocess.Popen([binary, "-F", "-c", str(base / "dovecot.conf")],
                               stdout=subprocess.DEVNULL, stderr=open(base / "stderr", "wb"))
    deadline = time.monotonic() + timeout
    import socket
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return Dovecot(process, base, port, tls_port if tls is not None else None)
        except OSError:
            time.sleep(0.1)
    stop(process)
    log = base / "dovecot.log"
    print(f"  Dovecot did not start: {(base / 'stderr').read_text()[-500:]}"
          f"{log.read_text()[-500:] if log.exists() else ''}")
    return None


def stop_servers(gateway: Any, dovecot: Dovecot | None, dovecot_dir: Path, *, keep: bool) -> None:
    """Stop the gateway and Dovecot, and remove their directories unless
    C{keep} (then say where they are)."""
    gateway.stop()
    if dovecot is not None:
        dovecot.stop()
    if keep:
        print(f"(kept {gateway.dir} and {dovecot_dir})")
    else:
        shutil.rmtree(gateway.dir, ignore_errors=True)
        shutil.rmtree(dovecot_dir, ignore_errors=True)
