# -*- test-case-name: tests.test_store_contract -*-
"""
L{MemoryStore}: a working L{IMailStore} kept in memory, for protocol tests
(exported by L{gateway.testing}).

It has the semantics of L{gateway.store.maildir.MaildirStore} (UIDs,
UIDVALIDITY, \\Recent, session views and change notification, folders and
their rules, the POP3 lock, quotas, CRLF storage) without a disk: every
method answers with an already-fired L{Deferred}.  The same contract tests
run against both (C{tests/test_store_contract.py}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from io import BytesIO
from typing import IO, Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from gateway.interfaces import IFolderSession, IMailStore
from gateway.store.model import (
    DEFAULT_FOLDERS,
    Changes,
    DeliveryReport,
    FolderExists,
    FolderInfo,
    FolderStatus,
    InvalidFolderName,
    MailboxInUse,
    MessageInfo,
    NoSuchAccount,
    NoSuchFolder,
    NoSuchMessage,
    Quota,
    QuotaExceeded,
    StoreError,
    Usage,
)
from gateway.store.names import (
    INBOX,
    account_parts,
    canonical_flags,
    is_inside,
    normalise,
    parent_names,
    readonly_failure,
    to_crlf,
)
from gateway.store.view import FolderModel, View


class _Folder(FolderModel):
    def __init__(self, name: str, uidvalidity: int) -> None:
        super().__init__(name, uidvalidity, 1, 0)
        self.bodies: dict[int, bytes] = {}
        self.sessions: set[MemorySession] = set()

    def add(self, key: str, body: bytes, flags: frozenset[str], date: float) -> int:
        uid = self.uidnext
        self.uidnext += 1
        self.bodies[uid] = body
        self.put(MessageInfo(uid, key, len(body), flags, date))
        return uid

    def remove(self, uid: int) -> None:
        self.bodies.pop(uid, None)
        self.drop(uid)

    def notify(self, origin: object = None) -> None:
        for session in list(self.sessions):
            if session is not origin and session._view.version < self.version:
                session._changed()


class _Account:
    def __init__(self) -> None:
        self.folders: dict[str, _Folder] = {}
        self.subscribed: set[str] = set()
        self.locked = False
        self.last_uidvalidity = 0


@implementer(IMailStore)
class MemoryStore:
    """
    @param clock: gives internal dates and UIDVALIDITYs (an
        L{IReactorTime}); default: a clock that stays at 1e9.
    """

    def __init__(self, *, clock: Any = None,
                 quota_for: Callable[[str], Quota] = lambda account: Quota(),
                 known_account: Callable[[str], bool] = lambda account: True) -> None:
        self._seconds: Callable[[], float] = clock.seconds if clock else (lambda: 1e9)
        self._quota_for = quota_for
        self._known = known_account
        self._accounts: dict[str, _Account] = {}
        self._keys = 0

    # -- helpers ------------------------------------------------------------------

    def _account(self, name: str) -> _Account:
        account_parts(name)
        if not self._known(name):
            raise NoSuchAccount(name)
        acct = self._accounts.get(name)
        if acct is None:
            acct = self._accounts[name] = _Account()
            self._new_folder(acct, INBOX)
            for folder in DEFAULT_FOLDERS:
                self._new_folder(acct, folder)
            acct.subscribed.update([INBOX, *DEFAULT_FOLDERS])
        return acct

    def _new_folder(self, acct: _Account, name: str) -> _Folder:
        acct.last_uidvalidity = max(int(self._seconds()), acct.last_uidvalidity + 1)
        folder = acct.folders[name] = _Folder(name, acct.last_uidvalidity)
        return folder

    def _folder(self, account: str, name: str) -> tuple[_Account, _Folder]:
        acct = self._account(account)
        name = normalise(name)
        if name not in acct.folders:
            raise NoSuchFolder(name)
        return acct, acct.folders[name]

    def _key(self) -> str:
        self._keys += 1
        return f"{int(self._seconds())}.M0P0Q{self._keys}.memory"

    def _check_quota(self, account: str, acct: _Account, count: int, size: int,
                     largest: int) -> None:
        quota = self._quota_for(account)
        if quota.max_bytes is not None and largest > quota.max_bytes:
            raise QuotaExceeded(account, permanent=True)
        used = self._usage(acct)
        if (quota.max_messages is not None and used.messages + count > quota.max_messages) or (
                quota.max_bytes is not None and used.bytes + size > quota.max_bytes):
            raise QuotaExceeded(account)

    def _usage(self, acct: _Account) -> Usage:
        sizes = [m.size for f in acct.folders.values() for m in f.infos.values()]
        return Usage(bytes=sum(sizes), messages=len(sizes))

    @staticmethod
    def _body(message: bytes | str) -> bytes:
        if isinstance(message, str):
            with open(message, "rb") as f:
                message = f.read()
        return to_crlf(message)

    # -- IMailStore ---------------------------------------------------------------

    def deliver(self, accounts: Iterable[str], message: bytes | str,
                internal_date: float | None = None) -> Deferred[DeliveryReport]:
        body = self._body(message)
        date = self._seconds() if internal_date is None else float(internal_date)
        stored, refused = [], {}
        for account in dict.fromkeys(accounts):
            try:
                acct = self._account(account)
                self._check_quota(account, acct, 1, len(body), len(body))
            except StoreError as e:
                refused[account] = e
                continue
            inbox = acct.folders[INBOX]
            inbox.add(self._key(), body, frozenset(), date)
            inbox.notify()
            stored.append(account)
        return succeed(DeliveryReport(tuple(stored), refused))

    def open_folder(self, account: str, name: str,
                    readonly: bool = False) -> Deferred[MemorySession]:
        try:
            acct, folder = self._folder(account, name)
        except StoreError as e:
            return fail(e)
        return succeed(MemorySession(self, account, acct, folder, readonly))

    def status(self, account: str, name: str) -> Deferred[FolderStatus]:
        try:
            _, folder = self._folder(account, name)
        except StoreError as e:
            return fail(e)
        return succeed(FolderStatus(
            messages=len(folder.infos),
            recent=sum(1 for uid in folder.infos if uid > folder.recent_uid),
            unseen=sum(1 for m in folder.infos.values() if "\\Seen" not in m.flags),
            uidvalidity=folder.uidvalidity, uidnext=folder.uidnext))

    def folders(self, account: str) -> Deferred[list[FolderInfo]]:
        try:
            acct = self._account(account)
        except StoreError as e:
            return fail(e)
        names = [INBOX] + sorted(n for n in acct.folders if n != INBOX)
        return succeed([FolderInfo(n, DEFAULT_FOLDERS.get(n), n in acct.subscribed,
                                   any(is_inside(o, n) for o in names)) for n in names])

    def create_folder(self, account: str, name: str) -> Deferred[None]:
        try:
            acct = self._account(account)
            name = normalise(name)
            if name in acct.folders:
                raise FolderExists(name)
        except StoreError as e:
            return fail(e)
        for each in [*parent_names(name), name]:
            if each not in acct.folders:
                self._new_folder(acct, each)
        return succeed(None)

    def delete_folder(self, account: str, name: str) -> Deferred[None]:
        try:
            acct = self._account(account)
            name = normalise(name)
            if name == INBOX:
                raise InvalidFolderName(name, "INBOX cannot be deleted")
            _, folder = self._folder(account, name)
            if any(is_inside(other, name) for other in acct.folders):
                raise InvalidFolderName(name, "it has child folders; delete them first")
        except StoreError as e:
            return fail(e)
        del acct.folders[name]
        folder.gone = True
        for uid in list(folder.infos):
            folder.remove(uid)
        folder.notify()
        return succeed(None)

    def rename_folder(self, account: str, old: str, new: str) -> Deferred[None]:
        try:
            acct, folder = self._folder(account, old)
            old, new = folder.name, normalise(new)
            if new == INBOX or new in acct.folders:
                raise FolderExists(new)
            if is_inside(new, old):
                raise InvalidFolderName(new, "a folder cannot move inside itself")
        except StoreError as e:
            return fail(e)
        for parent in parent_names(new):
            if parent not in acct.folders:
                self._new_folder(acct, parent)
        if old == INBOX:
            target = self._new_folder(acct, new)
            for uid in list(folder.infos):
                info = folder.infos[uid]
                target.add(info.key, folder.bodies[uid], info.flags, info.internal_date)
                folder.remove(uid)
            folder.notify()
            return succeed(None)
        for name in [n for n in list(acct.folders) if n == old or is_inside(n, old)]:
            moved = acct.folders.pop(name)
            moved.name = new + name[len(old):]
            acct.folders[moved.name] = moved
            if name in acct.subscribed:
                acct.subscribed.discard(name)
                acct.subscribed.add(moved.name)
        return succeed(None)

    def subscribe(self, account: str, name: str, subscribed: bool) -> Deferred[None]:
        try:
            acct = self._account(account)
            name = normalise(name)
            if subscribed and name not in acct.folders:
                raise NoSuchFolder(name)
        except StoreError as e:
            return fail(e)
        (acct.subscribed.add if subscribed else acct.subscribed.discard)(name)
        return succeed(None)

    def lock_pop3(self, account: str) -> Deferred[Callable[[], None]]:
        try:
            acct = self._account(account)
        except StoreError as e:
            return fail(e)
        if acct.locked:
            return fail(MailboxInUse(account))
        acct.locked = True
        done: list[bool] = []

        def release() -> None:
            if not done:
                done.append(True)
                acct.locked = False
        return succeed(release)

    def usage(self, account: str) -> Deferred[Usage]:
        try:
            return succeed(self._usage(self._account(account)))
        except StoreError as e:
            return fail(e)


@implementer(IFolderSession)
class MemorySession:
    def __init__(self, store: MemoryStore, account: str, acct: _Account, folder: _Folder,
                 readonly: bool) -> None:
        self._store, self._account, self._acct, self._folder = store, account, acct, folder
        self._view = View(folder, readonly)
        self.readonly = readonly
        self.uidvalidity = folder.uidvalidity
        self._callbacks: list[Callable[[], object]] = []
        folder.sessions.add(self)

    name = property(lambda self: self._folder.name)
    recent = property(lambda self: self._view.recent)

    def messages(self) -> list[MessageInfo]:
        return self._view.messages

    def uidnext(self) -> int:
        return self._view.uidnext

    def _changed(self) -> None:
        for callback in list(self._callbacks):
            callback()

    def _live(self, write: bool = False) -> _Folder:
        if write and self.readonly:
            raise readonly_failure()
        if self._folder.gone:
            raise NoSuchFolder(self._folder.name)
        return self._folder

    def _do(self, fn: Callable[[], Any]) -> Deferred[Any]:
        try:
            result = fn()
        except StoreError as e:
            return fail(e)
        self._folder.notify(self)
        return succeed(result)

    def sync(self) -> Deferred[Changes]:
        return succeed(self._view.sync(self._folder))

    def open_message(self, uid: int) -> Deferred[IO[bytes]]:
        body = self._folder.bodies.get(uid)
        return fail(NoSuchMessage(uid)) if body is None else succeed(BytesIO(body))

    def read_message(self, uid: int) -> Deferred[bytes]:
        body = self._folder.bodies.get(uid)
        return fail(NoSuchMessage(uid)) if body is None else succeed(body)

    def read_messages(self, uids: Iterable[int]) -> Deferred[dict[int, bytes]]:
        bodies = self._folder.bodies
        return succeed({uid: bodies[uid] for uid in uids if uid in bodies})

    def append(self, message: bytes | str, flags: Iterable[str] = (),
               internal_date: float | None = None) -> Deferred[int]:
        body = self._store._body(message)
        system, keywords = canonical_flags(flags)
        date = self._store._seconds() if internal_date is None else float(internal_date)

        def append() -> int:
            folder = self._live()
            self._store._check_quota(self._account, self._acct, 1, len(body), len(body))
            return folder.add(self._store._key(), body, system | keywords, date)
        return self._do(append)

    def set_flags(self, uids: Iterable[int], flags: Iterable[str],
                  mode: str) -> Deferred[list[MessageInfo]]:
        if mode not in ("replace", "add", "remove"):
            return fail(ValueError(f"unknown mode {mode!r}"))
        system, keywords = canonical_flags(flags)
        wanted = system | keywords

        def set_flags() -> list[MessageInfo]:
            folder, out = self._live(write=True), []
            for uid in sorted(set(uids)):
                info = folder.infos.get(uid)
                if info is None:
                    continue
                new = {"replace": wanted, "add": info.flags | wanted,
                       "remove": info.flags - wanted}[mode]
                if new != info.flags:
                    folder.put(MessageInfo(uid, info.key, info.size, frozenset(new),
                                           info.internal_date))
                out.append(folder.infos[uid])
            self._view.update(out)
            return out
        return self._do(set_flags)

    def _remove(self, uids: Iterable[int], deleted_only: bool) -> list[int]:
        folder = self._live(write=True)
        gone = [uid for uid in sorted(set(uids)) if uid in folder.infos
                and (not deleted_only or "\\Deleted" in folder.infos[uid].flags)]
        for uid in gone:
            folder.remove(uid)
        return gone

    def expunge(self, uids: Iterable[int] | None = None) -> Deferred[list[int]]:
        return self._do(lambda: self._remove(self._folder.infos if uids is None else uids, True))

    def delete(self, uids: Iterable[int]) -> Deferred[list[int]]:
        return self._do(lambda: self._remove(uids, False))

    def _transfer(self, uids: Iterable[int], destination: str, move: bool) -> dict[int, int]:
        source = self._live(write=move)
        _, target = self._store._folder(self._account, destination)
        wanted = [uid for uid in sorted(set(uids)) if uid in source.infos]
        if not move:
            sizes = [source.infos[uid].size for uid in wanted]
            self._store._check_quota(self._account, self._acct, len(wanted), sum(sizes), 0)
        mapping = {}
        for uid in wanted:
            info = source.infos[uid]
            mapping[uid] = target.add(self._store._key(), source.bodies[uid], info.flags,
                                      info.internal_date)
            if move:
                source.remove(uid)
        if target is not source:
            target.notify()
        return mapping

    def copy(self, uids: Iterable[int], destination: str) -> Deferred[dict[int, int]]:
        return self._do(lambda: self._transfer(uids, destination, False))

    def move(self, uids: Iterable[int], destination: str) -> Deferred[dict[int, int]]:
        return self._do(lambda: self._transfer(uids, destination, True))

    def on_change(self, callback: Callable[[], object]) -> None:
        self._callbacks.append(callback)

    def close(self) -> Deferred[None]:
        self._callbacks.clear()
        self._folder.sessions.discard(self)
        self._folder.detach(self._view)
        return succeed(None)
