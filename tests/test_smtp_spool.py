"""The outbound spool: what is written, in which order, and what a fault leaves."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.smtp.spool import Spool
from gateway.store.fs import FileSystem


def sync_run(f: Any, *a: Any, **kw: Any) -> Deferred[Any]:
    try:
        return succeed(f(*a, **kw))
    except Exception:
        from twisted.internet.defer import fail

        return fail()


class RecordingFS(FileSystem):
    """Records every operation; raises at the one named in C{fail_at}."""

    def __init__(self, fail_at: str | None = None) -> None:
        self.ops: list[tuple[str, str]] = []
        self.fail_at = fail_at
        self._paths: dict[int, str] = {}

    def _op(self, name: str, path: str) -> None:
        self.ops.append((name, os.path.basename(path)))
        if self.fail_at == name:
            raise OSError(f"injected {name} failure")

    def open_new(self, path: str) -> int:
        fd = super().open_new(path)
        self._paths[fd] = path
        self._op("open", path)
        return fd

    def write(self, fd: int, data: bytes) -> None:
        self._op("write", self._paths[fd])
        super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._op("fsync", self._paths[fd])
        super().fsync(fd)

    def rename(self, source: str, target: str) -> None:
        self._op("rename", target)
        super().rename(source, target)

    def fsync_dir(self, path: str) -> None:
        self._op("fsync_dir", path)
        super().fsync_dir(path)


class SpoolTests(SynchronousTestCase):
    def spool(self, fs: FileSystem) -> Spool:
        self.root = Path(self.mktemp()).absolute()
        clock = Clock()
        clock.advance(1000)
        return Spool(str(self.root), run_in_thread=sync_run, clock=clock, fs=fs)

    def test_order_of_operations(self) -> None:
        fs = RecordingFS()
        spool = self.spool(fs)
        self.assertEqual(self.successResultOf(spool.enqueue("a@b.c", ["x@y.z"], b"DATA", "Q1")), "Q1")
        ops = [op for op in fs.ops if op[0] != "open"]
        self.assertEqual(ops, [
            ("write", "Q1.eml"), ("fsync", "Q1.eml"),
            ("write", "Q1.json"), ("fsync", "Q1.json"),
            ("rename", "Q1.eml"), ("rename", "Q1.json"),
            ("fsync_dir", "new"),
        ])
        [envelope] = spool.pending()
        self.assertEqual((envelope["sender"], envelope["recipients"], envelope["received"]),
                         ("a@b.c", ["x@y.z"], 1000))
        self.assertEqual((self.root / "new" / "Q1.eml").read_bytes(), b"DATA")

    def test_fault_at_each_step_acknowledges_nothing(self) -> None:
        for step in ("write", "fsync", "rename", "fsync_dir"):
            fs = RecordingFS(fail_at=step)
            spool = self.spool(fs)
            failure = self.failureResultOf(spool.enqueue("a@b.c", ["x@y.z"], b"DATA", "Q2"))
            self.assertIn("injected", str(failure.value), step)
            leftovers = os.listdir(self.root / "tmp")
            self.assertEqual(leftovers, [], step)
            if step != "fsync_dir":
                # No committed envelope: the queue never sees a half message.
                self.assertEqual(spool.pending(), [], step)

    def test_envelope_is_json(self) -> None:
        spool = self.spool(FileSystem())
        self.successResultOf(spool.enqueue("", ["ü@bücher.de"], b"x", "Q3"))
        data = json.loads((self.root / "new" / "Q3.json").read_text())
        self.assertEqual((data["version"], data["sender"], data["recipients"]),
                         (1, "", ["ü@bücher.de"]))
