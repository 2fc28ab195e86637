# -*- test-case-name: tests.test_store_contract,tests.test_store_rollback -*-
"""
Sessions on Maildir folders (L{IFolderSession}): a session holds its
L{View} of the folder's shared L{FolderState}; every operation runs as one
serialised call of the store (see L{gateway.store.maildir}).

A read-write session moves the messages it has seen from C{new/} to
C{cur/} (keeping their key) and takes their \\Recent; a read-only
(EXAMINE) session changes nothing, refuses flag changes, expunges and
moves with a L{StoreError}, and may still APPEND and COPY, which do not
change its folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.interfaces import IFolderSession
from gateway.store.folder import FolderState
from gateway.store.index import Row
from gateway.store.model import Changes, MessageInfo, NoSuchFolder, StoreError
from gateway.store.names import (
    canonical_flags,
    file_name,
    keywords_text,
    letters_for,
    normalise,
    readonly_failure,
)
from gateway.store.view import View

if TYPE_CHECKING:
    from gateway.store.maildir import MaildirStore, _Account

_log = Logger()


def open_session(store: MaildirStore, account: str, name: str,
                 readonly: bool) -> Deferred[MaildirSession]:
    try:
        name = normalise(name)
    except StoreError as e:
        return fail(e)

    def open_(acct: _Account, name: str) -> tuple[_Account, FolderState, View]:
        state = store.folder(acct, name)
        if state.refresh():
            acct.touched.add(state)
        recent = state.recent_uid
        view = View(state, readonly)

        def undo() -> None:  # (see View.checkpoint) the SELECT failed
            state.recent_uid = recent
            state.detach(view)
        acct.undo.append(undo)
        if not readonly:
            state.to_cur()
            _save_recent(state, recent)
        return acct, state, view

    def opened(result: tuple[_Account, FolderState, View]) -> MaildirSession:
        acct, state, view = result
        session = MaildirSession(store, acct, state, view)
        store.add_session(acct, state, session)
        return session

    return store.serial(account, open_, name).addCallback(opened)


def _save_recent(state: FolderState, before: int) -> None:
    """(thread) Persist the \\Recent a read-write session took, if it took
    any: a sync with nothing new (an IMAP NOOP) then writes nothing, so
    costs no commit and fsync, and wakes no other process to reload the
    index."""
    if state.recent_uid != before:
        state.save_row()


def poll(store: MaildirStore, acct: _Account) -> None:
    """Look for changes made by other programs in the folders of C{acct}
    that have sessions (when the store's poll saw something move there;
    skipped while the account's previous look has not finished)."""
    if acct.polling or not acct.sessions:
        return
    acct.polling = True
    states = list(acct.sessions)

    def look(acct: _Account) -> None:
        for state in states:
            if not state.gone and state.refresh():
                acct.touched.add(state)

    def done(result: object) -> None:
        acct.polling = False
        if isinstance(result, Failure):
            _log.failure("mail store: polling {account}", result, account=acct.name)

    store.serial(acct, look).addBoth(done)


@implementer(IFolderSession)
class MaildirSession:
    def __init__(self, store: MaildirStore, acct: _Account, state: FolderState,
                 view: View) -> None:
        self._store, self._acct, self._state, self._view = store, acct, state, view
        self.readonly = view.readonly
        self.uidvalidity = view.uidvalidity
        self._callbacks: list[Callable[[], object]] = []
        self._closed = False

    @property
    def name(self) -> str:
        return self._state.name

    @property
    def recent(self) -> frozenset[int]:
        return self._view.recent

    def messages(self) -> list[MessageInfo]:
        return self._view.messages

    def uidnext(self) -> int:
        return self._view.uidnext

    # -- for the store ------------------------------------------------------------

    def behind(self) -> bool:
        return self._view.version < self._state.version

    def changed(self) -> None:
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:
                _log.failure("on_change callback of {folder}", folder=self.name)

    def _op(self, fn: Callable[..., Any], *args: Any, write: bool = False) -> Deferred[Any]:
        if self._closed:
            return fail(RuntimeError("the session is closed"))
        if write and self.readonly:
            return fail(readonly_failure())
        return self._store.serial(self._acct, fn, *args, origin=self)

    def _live(self, acct: _Account) -> FolderState:
        """(thread) The folder, reloaded if need be; L{NoSuchFolder} if gone."""
        state = self._state
        if state.stale:
            state.reload()
        if state.gone:
            raise NoSuchFolder(state.name)
        return state

    # -- IFolderSession -----------------------------------------------------------

    def sync(self) -> Deferred[Changes]:
        def sync(acct: _Account) -> Changes:
            state = self._state
            if state.stale:
                state.reload()
            if not state.gone and state.refresh():
                acct.touched.add(state)
            recent = state.recent_uid
            # Until the commit the view can still be put back, and the
            # change log must keep what it read (see gateway.store.view).
            acct.undo.append(self._view.checkpoint(state))
            changes = self._view.sync(state, trim=False)
            acct.committed.append(state.trim)
            if not self.readonly and not state.gone:
                state.to_cur()
                _save_recent(state, recent)
            return changes
        return self._op(sync)

    def _path(self, uid: int) -> str | None:
        """
        The file where the index last saw message C{uid}, if it can be read
        as it is without the account's lock: the lookup reads two dicts
        whose values are immutable tuples.  C{None} if the folder must be
        reloaded, the message is unknown, or its file needs converting.
        """
        state = self._state
        place = state.place.get(uid) if not (state.stale or state.gone) else None
        info = state.infos.get(uid)
        if self._closed or place is None or info is None or place[2]:
            return None
        return os.path.join(state.path, place[0], file_name(info.key, place[1]))

    def _unlocked(self, uid: int, work: Callable[[str], Any],
                  locked: Callable[[_Account], Any]) -> Deferred[Any]:
        """
        Run C{work(path)} in a worker thread on the file where the index last
        saw message C{uid}, without the account's lock and transaction (POP3
        RETR and IMAP FETCH of many messages queued behind them).  If the
        file moved meanwhile (a flag change, another program) or needs
        converting, C{locked} runs the locked path, which refreshes and
        retries.
        """
        path = self._path(uid)
        if path is None:
            return self._op(locked)

        def moved(failure: Any) -> Deferred[Any]:
            failure.trap(FileNotFoundError)
            return self._op(locked)

        return self._store._run(work, path).addErrback(moved)

    def open_message(self, uid: int) -> Deferred[IO[bytes]]:
        return self._unlocked(uid, self._store.fs.open_read,
                              lambda acct: self._live(acct).open(uid))

    def read_message(self, uid: int) -> Deferred[bytes]:
        def read_path(path: str) -> bytes:
            with self._store.fs.open_read(path) as f:
                return f.read()

        def read_locked(acct: _Account) -> bytes:
            with self._live(acct).open(uid) as f:
                return f.read()

        return self._unlocked(uid, read_path, read_locked)

    def read_messages(self, uids: Iterable[int]) -> Deferred[dict[int, bytes]]:
        """
        One worker call reads every message whose file is where the index
        saw it, without the account's lock (as L{read_message}'s fast
        path); the others (moved, or unreadable) are left out, for
        L{read_message} to find or explain.
        """
        if self._closed:
            return fail(RuntimeError("the session is closed"))
        paths = [(uid, path) for uid in uids if (path := self._path(uid)) is not None]
        if not paths:
            return succeed({})
        open_read = self._store.fs.open_read

        def read_all(paths: list[tuple[int, str]]) -> dict[int, bytes]:
            found = {}
            for uid, path in paths:
                try:
                    with open_read(path) as f:
                        found[uid] = f.read()
                except OSError:
                    # Moved meanwhile (read_message takes the locked path),
                    # or unreadable: read_message, asked for it alone, says
                    # why, and one bad file fails no other message's read.
                    pass
            return found

        return self._store._run(read_all, paths)

    def append(self, message: bytes | str, flags: Iterable[str] = (),
               internal_date: float | None = None) -> Deferred[int]:
        if self._closed:
            return fail(RuntimeError("the session is closed"))
        store = self._store
        date = store._clock.seconds() if internal_date is None else float(internal_date)
        system, keywords = canonical_flags(flags)
        letters = letters_for(system)

        def spooled(result: tuple[str, int]) -> Deferred[int]:
            path, size = result

            def reserved(_: None) -> Deferred[int]:
                key = store._unique(size)
                target = os.path.join(self._state.path, "cur", file_name(key, letters))
                row = Row(0, key, "cur", letters, keywords_text(keywords), size, date, False)

                def release(result: object) -> object:
                    store.release(self._acct, size)
                    return result

                return store.disk.commit_file(path, [target]).addCallback(
                    committed, row).addBoth(release)

            def refused(f: Failure) -> Failure:
                store._run(store.disk.try_unlink, path)
                return f

            return store.reserve(self._acct, size).addCallbacks(reserved, refused)

        def committed(errors: list[Exception | None], row: Row) -> Deferred[int]:
            if errors[0] is not None:
                raise store.failure(Failure(errors[0]), "append")
            return store.serial(self._acct, lambda acct: store.index_rows(
                acct, self._live(acct), [row])[0], origin=self)

        def failed(f: Failure) -> Failure:
            return Failure(store.failure(f, "append to {folder}", folder=self.name))

        return store._run(store.disk.spool, message, date).addCallback(spooled).addErrback(
            failed)

    def set_flags(self, uids: Iterable[int], flags: Iterable[str],
                  mode: str) -> Deferred[list[MessageInfo]]:
        if mode not in ("replace", "add", "remove"):
            return fail(ValueError(f"unknown mode {mode!r}"))
        system, keywords = canonical_flags(flags)
        uids = list(uids)

        def set_flags(acct: _Account) -> list[MessageInfo]:
            state = self._live(acct)
            infos = state.set_flags(uids, system, keywords, mode)
            acct.touched.add(state)
            acct.undo.append(self._view.checkpoint(state))
            self._view.update(infos)
            return infos
        return self._op(set_flags, write=True)

    def expunge(self, uids: Iterable[int] | None = None) -> Deferred[list[int]]:
        wanted = None if uids is None else set(uids)

        def expunge(acct: _Account) -> list[int]:
            state = self._live(acct)
            state.ensure_loaded()
            deleted = [uid for uid, info in state.infos.items() if "\\Deleted" in info.flags
                       and (wanted is None or uid in wanted)]
            acct.touched.add(state)
            return state.remove(deleted)
        return self._op(expunge, write=True)

    def delete(self, uids: Iterable[int]) -> Deferred[list[int]]:
        uids = list(uids)

        def delete(acct: _Account) -> list[int]:
            state = self._live(acct)
            acct.touched.add(state)
            return state.remove(uids)
        return self._op(delete, write=True)

    def copy(self, uids: Iterable[int], destination: str) -> Deferred[dict[int, int]]:
        return self._transfer(uids, destination, move=False)

    def move(self, uids: Iterable[int], destination: str) -> Deferred[dict[int, int]]:
        return self._transfer(uids, destination, move=True)

    def _transfer(self, uids: Iterable[int], destination: str,
                  move: bool) -> Deferred[dict[int, int]]:
        from gateway.store.moves import transfer
        try:
            destination = normalise(destination)
        except StoreError as e:
            return fail(e)
        quota = self._store._quota_for(self._acct.name)
        return self._op(lambda acct: transfer(self._store, acct, self._live(acct), list(uids),
                                              destination, move, quota), write=move)

    def on_change(self, callback: Callable[[], object]) -> None:
        self._callbacks.append(callback)

    def close(self) -> Deferred[None]:
        if self._closed:
            return self._store.serial(self._acct, lambda acct: None)
        self._closed = True
        self._callbacks.clear()
        self._store.remove_session(self._acct, self._state, self)
        return self._store.serial(self._acct, lambda acct: self._state.detach(self._view))
