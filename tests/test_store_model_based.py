"""
A property-based test of the store: random deliveries, APPENDs, flag
changes from two sessions, expunges, deletions, changes by another
program, polls and restarts, checked after every step against a model (a
dict UID -> (content, flags)).  Runs against the Maildir store and, without
the disk-only steps, against the in-memory store.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.store.maildir import MaildirStore
from gateway.store.model import SYSTEM_FLAGS
from gateway.testing import MemoryStore
from tests.test_store_contract import ALICE, NOW, synchronous

FLAGS = ["\\Seen", "\\Flagged", "\\Deleted", "\\Answered", "\\Draft", "$Forwarded", "$Label"]
bodies = st.binary(max_size=40).map(lambda b: b"Subject: t\n\n" + b)
flag_sets = st.sets(st.sampled_from(FLAGS), max_size=3)


def ok(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred did not fire"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def crlf(body: bytes) -> bytes:
    return body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class StoreMachine(RuleBasedStateMachine):
    on_disk = True

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.clock.advance(NOW)
        self.root = tempfile.mkdtemp()
        self.model: dict[int, tuple[bytes, frozenset[str]]] = {}
        self.max_uid = 0
        self.externals = 0
        self.start()
        self.validity = self.sessions[0].uidvalidity

    def make_store(self) -> Any:
        return MaildirStore(self.root, run_in_thread=synchronous, clock=self.clock)

    def start(self) -> None:
        self.store = self.make_store()
        self.sessions = [ok(self.store.open_folder(ALICE, "INBOX")) for _ in range(2)]

    def teardown(self) -> None:
        if self.on_disk:
            ok(self.store.close())
        shutil.rmtree(self.root, ignore_errors=True)

    def arrived(self, content: bytes, flags: frozenset[str] = frozenset()) -> None:
        """Exactly one new message appears, with a UID never used before."""
        added = ok(self.sessions[0].sync()).added
        assert len(added) == 1, added
        assert added[0].uid > self.max_uid
        self.max_uid = added[0].uid
        self.model[added[0].uid] = (content, flags)

    def pick(self, data: st.DataObject) -> list[int]:
        return data.draw(st.lists(st.sampled_from(sorted(self.model) + [self.max_uid + 7])))

    # -- rules ----------------------------------------------------------------

    @rule(body=bodies)
    def deliver(self, body: bytes) -> None:
        assert ok(self.store.deliver([ALICE], body)).stored == (ALICE,)
        self.arrived(crlf(body))

    @rule(body=bodies, flags=flag_sets, which=st.integers(0, 1))
    def append(self, body: bytes, flags: set[str], which: int) -> None:
        uid = ok(self.sessions[which].append(body, flags))
        self.arrived(crlf(body), frozenset(flags))
        assert uid == self.max_uid

    @rule(data=st.data(), flags=flag_sets, mode=st.sampled_from(["add", "remove", "replace"]),
          which=st.integers(0, 1))
    def set_flags(self, data: st.DataObject, flags: set[str], mode: str, which: int) -> None:
        uids = self.pick(data)
        infos = ok(self.sessions[which].set_flags(uids, flags, mode))
        for uid in sorted(set(uids) & set(self.model)):
            content, old = self.model[uid]
            new = {"add": old | flags, "remove": old - flags, "replace": frozenset(flags)}[mode]
            self.model[uid] = (content, frozenset(new))
        assert {i.uid: i.flags for i in infos} == {
            uid: self.model[uid][1] for uid in set(uids) & set(self.model)}

    @rule(data=st.data(), which=st.integers(0, 1), subset=st.booleans())
    def expunge(self, data: st.DataObject, which: int, subset: bool) -> None:
        uids = self.pick(data) if subset else None
        expected = sorted(uid for uid, (_, flags) in self.model.items()
                          if "\\Deleted" in flags and (uids is None or uid in uids))
        assert ok(self.sessions[which].expunge(uids)) == expected
        for uid in expected:
            del self.model[uid]

    @rule(data=st.data(), which=st.integers(0, 1))
    def delete(self, data: st.DataObject, which: int) -> None:
        uids = self.pick(data)
        expected = sorted(set(uids) & set(self.model))
        assert ok(self.sessions[which].delete(uids)) == expected
        for uid in expected:
            del self.model[uid]

    @precondition(lambda self: self.on_disk)
    @rule(body=bodies)
    def another_program_delivers(self, body: bytes) -> None:
        self.externals += 1
        with open(os.path.join(self.inbox(), "new", f"other.{self.externals}"), "wb") as f:
            f.write(body)
        self.arrived(crlf(body))

    @precondition(lambda self: self.on_disk and self.model)
    @rule(data=st.data(), flags=st.sets(st.sampled_from(FLAGS[:5]), max_size=3))
    def another_program_sets_flags(self, data: st.DataObject, flags: set[str]) -> None:
        uid = data.draw(st.sampled_from(sorted(self.model)))
        key = next(m.key for m in self.sessions[0].messages() if m.uid == uid)
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(self.inbox(), sub)):
                if name.partition(":2,")[0] == key:
                    letters = "".join(sorted(SYSTEM_FLAGS[f] for f in flags))
                    os.rename(os.path.join(self.inbox(), sub, name),
                              os.path.join(self.inbox(), "cur", f"{key}:2,{letters}"))
        content, old = self.model[uid]
        self.model[uid] = (content, frozenset(flags) | (old - SYSTEM_FLAGS.keys()))

    @precondition(lambda self: self.on_disk and self.model)
    @rule(data=st.data())
    def another_program_deletes(self, data: st.DataObject) -> None:
        uid = data.draw(st.sampled_from(sorted(self.model)))
        key = next(m.key for m in self.sessions[1].messages() if m.uid == uid)
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(self.inbox(), sub)):
                if name.partition(":2,")[0] == key:
                    os.unlink(os.path.join(self.inbox(), sub, name))
        del self.model[uid]

    @rule()
    def tick(self) -> None:
        self.clock.advance(1)

    @precondition(lambda self: self.on_disk)
    @rule()
    def restart(self) -> None:
        ok(self.store.close())
        self.start()

    def inbox(self) -> str:
        return os.path.join(self.root, "example.org", "alice")

    # -- the check ------------------------------------------------------------

    @invariant()
    def views_match_the_model(self) -> None:
        for session in self.sessions:
            ok(session.sync())
            assert session.uidvalidity == self.validity
            assert [(m.uid, m.flags, m.size) for m in session.messages()] == [
                (uid, flags, len(content)) for uid, (content, flags) in sorted(self.model.items())]
            assert session.uidnext() > self.max_uid
        for uid, (content, _) in self.model.items():
            with ok(self.sessions[0].open_message(uid)) as f:
                assert f.read() == content


class MemoryStoreMachine(StoreMachine):
    on_disk = False

    def make_store(self) -> Any:
        return MemoryStore(clock=self.clock)


SETTINGS = settings(max_examples=60, stateful_step_count=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


class ModelTests(SynchronousTestCase):
    def test_maildir_store(self) -> None:
        run_state_machine_as_test(StoreMachine, settings=SETTINGS)

    def test_memory_store(self) -> None:
        run_state_machine_as_test(MemoryStoreMachine, settings=SETTINGS)
