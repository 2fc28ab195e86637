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
