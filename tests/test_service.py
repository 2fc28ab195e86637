# -*- test-case-name: tests.test_service -*-
"""
L{gateway.service}: the composition root.  Its wiring is exercised end to
end by tests/test_e2e_*.py; here, the worker threads it hands to the
directory, the store and the spool (L{ThreadRunner}).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gateway.service import ThreadRunner


class ThreadedReactor:
    """Just what L{ThreadRunner} uses of a reactor: C{callFromThread} queues
    the call for L{run_calls}, as the reactor queues it for its thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...]]] = []
        self.lock = threading.Lock()
        self.triggers: list[tuple[str, str, Any]] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        with self.lock:
            self.calls.append((f, args))

    def addSystemEventTrigger(self, phase: str, event: str, f: Any) -> None:
        self.triggers.append((phase, event, f))

    def run_calls(self) -> None:
        with self.lock:
            calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)


class ThreadRunnerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = ThreadedReactor()
        self.runner = ThreadRunner(self.reactor, size=2)
        self.addCleanup(self.runner.stop)

    def settle(self, count: int) -> None:
        """Wait for C{count} results to be handed to the reactor, then run
        them (on this, the "reactor" thread)."""
        for _ in range(500):
            with self.reactor.lock:
                if len(self.reactor.calls) >= count:
                    break
            threading.Event().wait(0.01)
        self.reactor.run_calls()

    def test_result_on_the_reactor_thread(self) -> None:
        """The function runs in a worker thread; its result arrives through
        C{callFromThread}, not before."""
        main = threading.get_ident()
        d = self.runner(lambda a, b=0: (threading.get_ident(), a + b), 1, b=2)
        self.assertNoResult(d)
        self.settle(1)
        ident, value = self.successResultOf(d)
        self.assertNotEqual(ident, main)
        self.assertEqual(value, 3)

    def test_exception_becomes_failure(self) -> None:
        def fails() -> None:
            raise ValueError("no")

        d = self.runner(fails)
        self.settle(1)
        self.failureResultOf(d, ValueError)

    def test_several_at_once(self) -> None:
        """Calls queue for the pool's threads; each gets its own result."""
        release = threading.Event()
        ds = [self.runner(lambda i=i: (release.wait(5), i)[1]) for i in range(5)]
        release.set()
        self.settle(5)
        self.assertEqual([self.successResultOf(d) for d in ds], list(range(5)))

    def test_threads_start_with_the_first_call_and_stop_at_shutdown(self) -> None:
        before = threading.active_count()
        self.assertEqual(self.reactor.triggers, [])
        d = self.runner(lambda: None)
        self.settle(1)
        self.successResultOf(d)
        self.assertEqual(threading.active_count(), before + 2)
        [(phase, event, stop)] = self.reactor.triggers
        self.assertEqual((phase, event), ("during", "shutdown"))
        stop()
        self.assertEqual(threading.active_count(), before)
        self.failureResultOf(self.runner(lambda: None), RuntimeError)

    def test_stop_finishes_queued_work(self) -> None:
        """What was queued before the shutdown still runs (a delivery's
        fsync is not cut short)."""
        done: list[int] = []
        release = threading.Event()
        self.runner(lambda: release.wait(5))
        for i in range(4):
            self.runner(done.append, i)
        release.set()
        self.runner.stop()
        self.assertEqual(sorted(done), [0, 1, 2, 3])

    def test_stop_does_not_wait_for_ever(self) -> None:
        """A worker stuck in its call (a hung file system) holds the
        shutdown only as long as C{stop}'s wait, and is logged."""
        release = threading.Event()
        self.addCleanup(release.set)
        d = self.runner(release.wait, 30)
        seen: list[dict[str, object]] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        started = time.monotonic()
        self.runner.stop(wait=0.2)
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual([e["count"] for e in seen if "count" in e
                          and "left behind" in str(e.get("log_format"))], [1])
        self.assertNoResult(d)
