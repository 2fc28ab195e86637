"""
bench/imap_load.py --tracemalloc: the gateway's twistd under tracemalloc
(L{trace_gateway}), snapshots on SIGUSR2 (L{traced_snapshot}) and where
the memory of each connection went (L{where_memory_goes}).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

#: Runs twistd with tracemalloc on; SIGUSR2 dumps a snapshot to
#: $IMAP_BENCH_TRACE.<n> (for --tracemalloc).
TRACED_TWISTD = """\
import gc, os, signal, sys, tracemalloc
tracemalloc.start(int(os.environ.get("IMAP_BENCH_FRAMES", "12")))
dumps = [0]
def dump(signum, frame):
    gc.collect()
    dumps[0] += 1
    target = os.environ["IMAP_BENCH_TRACE"] + ".%d" % dumps[0]
    tracemalloc.take_snapshot().dump(target + ".part")
    os.rename(target + ".part", target)
signal.signal(signal.SIGUSR2, dump)
from twisted.scripts.twistd import run
sys.exit(run())
"""


def traced_snapshot(pid: int, trace: Path, n: int) -> Any:
    import tracemalloc
    os.kill(pid, signal.SIGUSR2)
    target = Path(f"{trace}.{n}")
    deadline = time.monotonic() + 120
    while not target.exists():
        if time.monotonic() > deadline:
            raise SystemExit("the gateway wrote no tracemalloc snapshot within 120 s")
        time.sleep(0.2)
    return tracemalloc.Snapshot.load(str(target))


def where_memory_goes(before: Any, after: Any, n: int, top: int = 25) -> str:
    """The allocations that grew, per connection, by where they were made:
    the innermost frame and the innermost frame of our own code."""
    import tracemalloc
    keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diffs = after.filter_traces(keep).compare_to(before.filter_traces(keep), "traceback")
    grouped: dict[tuple[str, str], list[int]] = {}
    for d in diffs:
        frames = list(d.traceback)  # innermost last (tracemalloc's order varies by version)
        inner = frames[-1] if frames else None
        ours = next((f for f in reversed(frames) if "/gateway/" in f.filename), None)
        def name(f: Any) -> str:
            return f"{'/'.join(f.filename.split('/')[-2:])}:{f.lineno}" if f else "?"
        key = (name(inner), name(ours))
        entry = grouped.setdefault(key, [0, 0])
        entry[0] += d.size_diff
        entry[1] += d.count_diff
    total = sum(v[0] for v in grouped.values())
    lines = [f"  tracemalloc: {total / n / 1024:.1f} KiB per connection traced by Python "
             f"(the rest of the RSS growth is outside Python's allocator: OpenSSL, the kernel's "
             f"socket buffers are not in RSS); top sites, bytes and blocks per connection:"]
    for (inner, ours), (size, count) in sorted(grouped.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"    {size / n:8.0f} B {count / n:6.1f}  {inner}  (from {ours})")
    return "\n".join(lines)


def trace_gateway(gateway: Any, kind: str) -> Path:
    """Make the next L{GatewayProcess.start} run twistd under tracemalloc."""
    import tests.gatewayprocess
    wrapper = gateway.dir / "traced_twistd.py"
    wrapper.write_text(f"#!{sys.executable}\n{TRACED_TWISTD}")
    wrapper.chmod(0o755)
    tests.gatewayprocess.TWISTD = str(wrapper)
    trace = gateway.dir / f"tracemalloc-{kind}"
    os.environ["IMAP_BENCH_TRACE"] = str(trace)
    return trace
