"""
How the cost of opening a Maildir folder grows with its size (issue 4).

For each size (default 10,000 and 100,000 messages) this script:

  1. writes that many small messages (300-900 octets) straight into a new
     account's C{cur/}, named as the store names them, without fsync;
  2. opens the folder once with the store, which lists C{cur/}, stats each
     file once and builds the index (printed as "index build");
  3. in fresh processes, prints:

     - cold open: a new process, after C{posix_fadvise(DONTNEED)} on the
       index database and on every message file, so their pages are not in
       the page cache.  That is as cold as an unprivileged process can
       make it: the kernel's directory-entry and inode caches cannot be
       dropped without root (C{/proc/sys/vm/drop_caches}), so the two
       C{stat} calls of an open are warm in every run;
     - warm open: a new process right after, everything cached; and a
       second open in that same process after closing the first session
       (the store keeps the last few folders' state in memory, so this one
       costs two C{stat} calls);
     - a no-change sync (what the once-a-second poll costs);
     - full read: reading every message file, cold (after DONTNEED) and
       warm, which is what an index-less store (or Twisted's
       C{MaildirMailbox}, which lists and stats every file) pays at least;
     - peak RSS (C{getrusage} C{ru_maxrss}) of each process, and of a
       process that only imports the store, for comparison;

  and the ratio warm open / warm full read.

The folder's directory mtimes are set ten seconds into the past before the
index is built, as for a folder that has not changed for a while, so that
the store records them as settled (see L{gateway.store.folder}) and opens
without listing.  Run by hand::

    .venv/bin/python bench/store_open.py [--sizes 10000 100000] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ACCOUNT = "bench@example.org"
INDEX_FILE = "gateway-index.sqlite"
# The parent process imports neither Twisted nor the store: getrusage's peak
# RSS is kept across fork and exec, so a child started by a big parent would
# report the parent's peak.  Every measurement, the build included, runs in a
# child of this small process.


def ok(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def new_store(root: str) -> Any:
    from twisted.internet.defer import maybeDeferred
    from twisted.internet.task import Clock

    from gateway.store.maildir import MaildirStore
    clock = Clock()
    clock.advance(time.time())
    return MaildirStore(root, run_in_thread=maybeDeferred, clock=clock, hostname="bench")


def inbox(root: str) -> str:
    return os.path.join(root, "example.org", "bench")


def message_files(root: str) -> list[str]:
    cur = os.path.join(inbox(root), "cur")
    return [os.path.join(cur, name) for name in os.listdir(cur)]


def drop_cache(paths: list[str]) -> None:
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def index_files(root: str) -> list[str]:
    return [os.path.join(inbox(root), INDEX_FILE + suffix) for suffix in ("", "-wal", "-shm")]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- building ---------------------------------------------------------------------

def child_build(root: str, count: int) -> dict[str, float]:
    from gateway.store.names import make_key
    store = new_store(root)
    ok(store.status(ACCOUNT, "INBOX"))  # creates the account
    cur = os.path.join(inbox(root), "cur")
    rng = random.Random(count)
    started = time.perf_counter()
    base = time.time() - count
    for i in range(count):
        body = (f"From: sender{i % 97}@example.net\r\nTo: {ACCOUNT}\r\n"
                f"Subject: message {i}\r\nMessage-ID: <{i}@bench>\r\n\r\n").encode()
        body += b"x" * rng.randrange(200, 800) + b"\r\n"
        key = make_key(base + i, 4242, i, f"{i:08x}", "bench", len(body))
        flags = "S" if i % 3 else ""
        path = os.path.join(cur, f"{key}:2,{flags}")
        with open(path, "wb") as f:
            f.write(body)
        os.utime(path, (base + i, base + i))
    written = time.perf_counter() - started
    past = time.time_ns() - 10 * 10**9
    for sub in ("new", "cur"):
        os.utime(os.path.join(inbox(root), sub), ns=(past, past))
    started = time.perf_counter()
    session = ok(store.open_folder(ACCOUNT, "INBOX"))
    indexed = time.perf_counter() - started
    assert len(session.messages()) == count
    ok(session.close())
    ok(store.close())
    return {"write_files": written, "index_build": indexed}


# -- the measurements, each in a fresh process --------------------------------------

def child_open(root: str) -> dict[str, float]:
    before = rss_mib()
    store = new_store(root)
    started = time.perf_counter()
    session = ok(store.open_folder(ACCOUNT, "INBOX"))
    first = time.perf_counter() - started
    count = len(session.messages())
    peak = rss_mib()
    started = time.perf_counter()
    ok(session.sync())
    idle_sync = time.perf_counter() - started
    ok(session.close())
    started = time.perf_counter()
    session = ok(store.open_folder(ACCOUNT, "INBOX"))
    second = time.perf_counter() - started
    assert len(session.messages()) == count
    return {"open": first, "reopen": second, "idle_sync": idle_sync, "messages": count,
            "rss_before": before, "rss_peak": max(peak, rss_mib())}


def child_read(root: str) -> dict[str, float]:
    started = time.perf_counter()
    total = 0
    for path in message_files(root):
        with open(path, "rb") as f:
            total += len(f.read())
    return {"read": time.perf_counter() - started, "bytes": total, "rss_peak": rss_mib()}


def child_import(root: str) -> dict[str, float]:
    new_store(root)
    return {"rss_peak": rss_mib()}


def run_child(kind: str, root: str, cold: bool = False, count: int = 0) -> dict[str, float]:
    if cold:
        drop_cache(index_files(root) + message_files(root))
    out = subprocess.run([sys.executable, __file__, "--child", kind, root, str(count)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def measure(count: int, directory: str | None, keep: bool) -> None:
    root = tempfile.mkdtemp(prefix=f"store-bench-{count}-", dir=directory)
    try:
        built = run_child("build", root, count=count)
        cold = run_child("open", root, cold=True)
        warm = run_child("open", root, cold=False)
        read_cold = run_child("read", root, cold=True)
        read_warm = run_child("read", root, cold=False)
        bare = run_child("import", root, cold=False)
        index_size = sum(os.path.getsize(p) for p in index_files(root) if os.path.exists(p))
        ms = 1000
        print(f"\n== {count:,} messages ({read_warm['bytes'] / 2**20:.1f} MiB of mail, "
              f"index {index_size / 2**20:.1f} MiB) ==")
        print(f"  write files (setup)       {built['write_files']:8.2f} s")
        print(f"  index build (first open)  {built['index_build']:8.2f} s")
        print(f"  cold open, new process    {cold['open'] * ms:8.1f} ms")
        print(f"  warm open, new process    {warm['open'] * ms:8.1f} ms")
        print(f"  warm re-open, same proc.  {warm['reopen'] * ms:8.1f} ms")
        print(f"  sync, nothing changed     {warm['idle_sync'] * ms:8.3f} ms")
        print(f"  full read, cold           {read_cold['read'] * ms:8.1f} ms")
        print(f"  full read, warm           {read_warm['read'] * ms:8.1f} ms")
        print(f"  peak RSS: store, no folder {bare['rss_peak']:.0f} MiB, open folder "
              f"{warm['rss_peak']:.0f} MiB (+{warm['rss_peak'] - bare['rss_peak']:.0f} MiB, "
              f"{(warm['rss_peak'] - bare['rss_peak']) * 2**20 / count:.0f} B/message), "
              f"full read {read_warm['rss_peak']:.0f} MiB")
        print(f"  ratio warm open / warm full read: {warm['open'] / read_warm['read']:.3f}; "
              f"cold open / cold full read: {cold['open'] / read_cold['read']:.3f}")
    finally:
        if keep:
            print(f"  (kept {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dir", default=None, help="where to create the folders")
    parser.add_argument("--keep", action="store_true", help="keep the folders")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, root, count = args.child
        if kind == "build":
            result = child_build(root, int(count))
        else:
            result = {"open": child_open, "read": child_read, "import": child_import}[kind](root)
        print(json.dumps(result))
        return
    for count in args.sizes:
        measure(count, args.dir, args.keep)


if __name__ == "__main__":
    main()
