# -*- test-case-name: tests.test_store_maildir -*-
"""
The Maildir store: L{IMailStore} over one Maildir++ per account, with a
SQLite index per account (L{gateway.store.index}).

Layout (names: L{gateway.store.names})::

    <root>/tmp/                          delivery spool (same file system)
    <root>/<domain>/<local>/             the account's Maildir = INBOX
        tmp/ new/ cur/                     message files <key>[:2,<flags>]
        .Sent/ .Drafts/ .Trash/ ...        Maildir++ folders (+ maildirfolder)
        gateway-index.sqlite               UIDs, flags, sizes, dates
        gateway-pop3.lock                  POP3's exclusive lock (flock)

Durability (what is on disk before a caller is told "stored"): a delivery
or APPEND is written to C{<root>/tmp/}, its mtime set to the internal date,
and fsynced; then hard-linked into each account's C{new/} (or the folder's
C{cur/}), copied instead where a link is refused; the spool name is
unlinked; and each target directory is fsynced: an APPEND's through the
group commit of L{gateway.store.fs.DirSyncer}, a delivery's C{new/} by its
account's commit, one fsync of C{new/} and one index transaction shared by
the deliveries waiting for it (L{MaildirStore._arrive}).  Only then is the
message indexed and the caller answered.  A failure at any step unlinks
what was linked and answers a temporary failure for that account; a crash leaves at most a
complete file nobody was told about, or a spool file that the age rule
(Maildir's 36 hours) removes at the next start.  New accounts and folders
are built under a staging name, fsynced, and renamed into place.  Flag
renames, expunges and moves fsync the directories they change before
answering; the index commits with C{synchronous=FULL}.

Changes: a session sees changes only when it syncs (L{gateway.store.view}).
Right after a call changed a folder (a delivery, another session's flags
or expunge), the store calls the C{on_change} callbacks of the folder's
other sessions.  Changes by other programs (or another gateway process on
the same directory) are found by a poll every C{poll_interval} seconds of
the injected clock while any session is open: one worker call per tick
for all accounts, which stats C{new/} and C{cur/} of each folder that has
sessions and the account's index files (L{gateway.store.index.stamp}),
and touches no SQLite.  Only an account where something moved since its
last transaction gets a serialised call, which lists only a directory
whose mtime moved (L{gateway.store.folder}) and notices a change another
connection made to the index by SQLite's C{data_version} (or the index's
generation) at the start of its transaction, as every transaction does.
An idle account with a session thus costs three or four C{stat} calls a
second, where it cost a thread hand-off and an index transaction.

Memory: an account's index connection is closed once the account has
been idle for C{index_idle} seconds (L{gateway.store.index.AccountIndex.suspend})
and opened again by its next call: an open connection costs about 130 KiB
(SQLite's buffers and the WAL index mapping), which for 10,000 IDLE
clients of 10,000 users was most of their memory.  More than
C{open_indexes} open connections (a login storm) are closed sooner, the
least recently used first.  Folders with sessions stay in memory
meanwhile; the others are dropped from the cache.  What
SQLite freed is given back to the kernel at most every C{TRIM_INTERVAL}
seconds (L{gateway.store.index.release_memory}).  Closing changes nothing
on disk but a checkpoint of the WAL into the database (which SQLite does
anyway), so the durability above and the two-process rules stay as they
are.

Threads: every disk operation runs through C{run_in_thread}.  Work on one
account is serialised by a L{DeferredLock} (one worker thread at a time
per account, each call one index transaction), so two sessions changing
flags at once are applied one after the other and lose nothing.  The
files of deliveries are written outside that lock, by at most C{writers}
worker calls at once, each taking all the deliveries that waited for it
(L{gateway.store.fs.Batcher}, L{gateway.store.durable.Disk.deliver_files});
only the quota reservation (for an account with a quota, or not yet
opened), the fsync of C{new/} and the indexing take it.  Per delivery in
the usual case that is two thread hand-offs shared with the deliveries
around it, where each step once had its own.  Sessions live in
L{gateway.store.session}.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, DeferredLock, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.interfaces import IMailStore
from gateway.store import folders
from gateway.store.durable import TMP_MAX_AGE, Disk
from gateway.store.folder import FolderState
from gateway.store.fs import Batcher, FileSystem, call_in_thread
from gateway.store.index import INDEX_FILE, AccountIndex, Row, release_memory
from gateway.store.model import (
    DEFAULT_FOLDERS,
    DeliveryReport,
    FolderInfo,
    FolderStatus,
    MailboxInUse,
    NoSuchAccount,
    NoSuchFolder,
    Quota,
    QuotaExceeded,
    StoreError,
    Usage,
)
from gateway.store.names import (
    INBOX,
    account_path,
    folder_dir,
    make_key,
    normalise,
    storage_failure,
)
from gateway.store.watch import changed_accounts, close_index

LOCK_FILE = "gateway-pop3.lock"
#: Seconds between two L{release_memory} calls, at most.
TRIM_INTERVAL = 10.0


class _Account:
    """One account's state; C{index} and C{folders} only in its lock."""

    def __init__(self, name: str, path: str) -> None:
        self.name, self.path = name, path
        self.lock = DeferredLock()
        self.index: AccountIndex | None = None
        self.folders: dict[str, FolderState] = {}  # least recently used first
        self.sessions: dict[FolderState, set[Any]] = {}
        self.touched: set[FolderState] = set()
        self.pending = [0, 0]  # messages, bytes reserved by deliveries in flight
        self.polling = False
        self.used = 0.0  # the store's clock at its last call
        # The index files after its last transaction (index.stamp), for the poll.
        self.stamp: Any = None
        # Deliveries linked into new/ and waiting for their commit (the
        # fsync of new/ and their UIDs), and whether one is under way.
        self.arrivals: list[tuple[Row, Deferred[None]]] = []
        self.committing = False
        # What the call in the account's transaction asks for in memory if
        # it rolls back (a session's view put back), or once it committed.
        self.undo: list[Callable[[], object]] = []
        self.committed: list[Callable[[], object]] = []

    def ended(self, committed: bool) -> None:
        """(thread) The transaction ended: run its C{committed} hooks, or
        its C{undo} (latest first)."""
        todo = self.committed if committed else self.undo[::-1]
        self.undo, self.committed = [], []
        for fn in todo:
            fn()


@implementer(IMailStore)
class MaildirStore:
    """
    @param root: the store's directory (C{<state_dir>/mail}).
    @param run_in_thread: runs a function in a worker thread, returning a
        L{Deferred} (like L{deferToThread}); tests pass a synchronous one.
    @param clock: the time of internal dates and UIDVALIDITYs, and the
        clock of the polling for changes made by other programs.
    @param quota_for: account -> its L{Quota} (called on the reactor).
    @param known_account: account -> whether it exists (its Maildir is
        created on first use).
    @param fs: the file-system operations (a test seam for faults).
    @param poll_interval: seconds between looks at the directories of
        folders that have open sessions.
    @param index_idle: seconds after an account's last call at which its
        index connection is closed (it opens again at the next call).
    @param open_indexes: how many index connections may stay open before
        the least recently used are closed sooner (after a second unused):
        a bound on their memory when many accounts wake at once (a login
        storm after a restart).
    @param writers: how many worker calls may write delivered files at once
        (L{Batcher}: the deliveries that wait meanwhile are written together
        by the next call).  Few threads do more: each more thread competing
        for the GIL cost the benchmark CPU time in the kernel.
    """

    def __init__(self, root: str, *, run_in_thread: Callable[..., Deferred[Any]],
                 clock: IReactorTime,
                 quota_for: Callable[[str], Quota] = lambda account: Quota(),
                 known_account: Callable[[str], bool] = lambda account: True,
                 fs: FileSystem | None = None, hostname: str | None = None,
                 poll_interval: float = 1.0, tmp_max_age: float = TMP_MAX_AGE,
                 cached_folders: int = 8, writers: int = 2, index_idle: float = 30.0,
                 open_indexes: int = 1000, log: Logger | None = None) -> None:
        self.root = os.path.abspath(root)
        self._run = run_in_thread
        self._clock = clock
        self._quota_for = quota_for
        self._known = known_account
        self.fs = fs or FileSystem()
        self._host = hostname or socket.gethostname()
        self._cached = cached_folders
        self._log = log or Logger()
        self._accounts: dict[str, _Account] = {}
        self._counter = itertools.count(1)
        self._random = secrets.token_hex(4)
        self.disk = Disk(self.root, self.fs, run_in_thread, tmp_max_age)
        self.writer = Batcher(run_in_thread, self._write_deliveries, writers)
        self._poller = LoopingCall(self._poll)
        self._poller.clock = clock
        self._poll_interval = poll_interval
        self._index_idle = index_idle
        self._open_indexes = open_indexes
        self._looking = False  # a poll's worker call is under way
        self._suspending = 0  # index suspensions under way
        self._untrimmed = False  # indexes were suspended since the last release_memory
        self._trimmed_at = float("-inf")
        self._pending_lock = threading.Lock()  # for _Account.pending

    # -- plumbing -----------------------------------------------------------------

    def _account(self, name: str) -> _Account:
        acct = self._accounts.get(name)  # its name was checked when it was made
        path = acct.path if acct is not None else account_path(self.root, name)
        # account_path raised NoSuchAccount for path tricks
        if not self._known(name):
            raise NoSuchAccount(name)
        if acct is None:
            acct = self._accounts[name] = _Account(name, path)
        return acct

    def serial(self, account: str | _Account, fn: Callable[..., Any], *args: Any,
               origin: object = None) -> Deferred[Any]:
        """Run C{fn(acct, *args)} in a worker thread, alone for its account,
        inside one index transaction; then tell the sessions of the folders
        it changed (except C{origin})."""
        try:
            acct = account if isinstance(account, _Account) else self._account(account)
        except StoreError as e:
            return fail(e)
        self._touch(acct)
        return acct.lock.run(
            lambda: self._run(self._in_thread, acct, fn, args).addBoth(self._after, acct, origin))

    def _touch(self, acct: _Account) -> None:
        """The account is in use: keep its index open for C{index_idle}
        seconds more, and make sure the poll runs to close it after."""
        acct.used = self._clock.seconds()
        if not self._poller.running:
            self._poller.start(self._poll_interval, now=False)

    def _after(self, result: object, acct: _Account, origin: object) -> object:
        touched, acct.touched = acct.touched, set()
        self.notify(acct, touched, origin)
        if isinstance(result, Failure) and not isinstance(result.value, StoreError):
            # A disk or other failure: the cause to the log, a temporary
            # failure to the protocol.
            return Failure(self.failure(result, "{account}", account=acct.name))
        return result

    def _in_thread(self, acct: _Account, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if acct.index is None:
            self._open_account(acct)
        assert acct.index is not None
        changed = acct.index.begin()
        try:
            # Inside the transaction's try: a reload that fails must roll
            # back, or the open transaction fails every later call.
            if changed:  # another process changed the index: take its changes
                for state in list(acct.folders.values()):
                    version = state.version
                    state.reload()
                    if state.version != version:
                        acct.touched.add(state)
            result = fn(acct, *args)
            acct.index.commit()
        except StoreError:
            acct.ended(committed=False)
            acct.index.rollback()  # refusals are raised before any change
            raise
        except BaseException:
            acct.ended(committed=False)  # first: even if the rollback fails
            acct.index.rollback()
            for state in acct.folders.values():
                state.invalidate()
            raise
        finally:
            self._stamp(acct)
        acct.ended(committed=True)
        return result

    def _stamp(self, acct: _Account) -> None:
        """(thread) Remember what the index files look like after our
        transaction, for the poll (L{changed_accounts})."""
        try:
            acct.stamp = acct.index.stamp() if acct.index is not None else None
        except Exception:
            acct.stamp = None  # look again at the next tick

    def notify(self, acct: _Account, touched: Iterable[FolderState], origin: object) -> None:
        for state in touched:
            for session in list(acct.sessions.get(state, ())):
                if session is not origin and session.behind():
                    session.changed()

    def folder(self, acct: _Account, name: str) -> FolderState:
        """(thread) The folder's state, cached; raise L{NoSuchFolder}."""
        state = acct.folders.pop(name, None)
        if state is not None and state.stale:
            state.reload()
        if not self.disk.exists(os.path.join(acct.path, folder_dir(name), "cur")):
            if state is not None:
                state.vanish()
                acct.touched.add(state)
            raise NoSuchFolder(name)
        if state is None or state.gone:
            assert acct.index is not None
            row = acct.index.folder(name) or acct.index.add_folder(name)
            state = FolderState(self.fs, acct.index, acct.path, row)
        acct.folders[name] = state
        idle = [n for n, s in acct.folders.items() if not s.has_views()]
        for n in idle[:max(0, len(idle) - self._cached)]:
            del acct.folders[n]
        return state

    def _unique(self, size: int | None) -> str:
        """A new file name (thread-safe).  The random part is drawn once per
        store: time, process, counter and that are unique enough (a random
        draw per message cost a system call on the reactor)."""
        return make_key(self._clock.seconds(), os.getpid(), next(self._counter),
                        self._random, self._host, size)

    # -- accounts on disk ---------------------------------------------------------

    def _open_account(self, acct: _Account) -> None:
        created = False
        if not self.disk.exists(os.path.join(acct.path, "cur")):
            created = self.disk.create_account(acct.path)
        acct.index = AccountIndex(os.path.join(acct.path, INDEX_FILE),
                                  uidvalidity_base=lambda: int(self._clock.seconds()))
        if created:
            with acct.index.transaction():
                for name in (INBOX, *DEFAULT_FOLDERS):
                    acct.index.subscribe(name, True)
        self.disk.recover(acct.path)
        self._stamp(acct)

    def reserve(self, acct: _Account, size: int) -> Deferred[None]:
        """Check the quota for one more message of C{size} octets and hold
        it until L{release}."""
        quota = self._quota_for(acct.name)

        def over(acct: _Account) -> bool:
            assert acct.index is not None
            count, total = acct.index.usage()
            return (quota.max_messages is not None
                    and count + acct.pending[0] + 1 > quota.max_messages) or (
                    quota.max_bytes is not None
                    and total + acct.pending[1] + size > quota.max_bytes)

        def check(acct: _Account) -> bool:
            if quota.max_bytes is not None and size > quota.max_bytes:
                raise QuotaExceeded(acct.name, permanent=True)
            # The index counts what it last saw: before refusing, take in
            # what other programs deleted (a user freeing space with
            # another client), or the account stays "full" until a session
            # happens to look at the folder that shrank.  A refusal after
            # that is returned, not raised: a StoreError rolls the
            # transaction back, and the recount must be committed.
            if over(acct) and (not self._recount(acct) or over(acct)):
                return False
            with self._pending_lock:
                acct.pending[0] += 1
                acct.pending[1] += size
            return True

        def checked(fits: bool) -> None:
            if not fits:
                raise QuotaExceeded(acct.name)

        return self.serial(acct, check).addCallback(checked)

    def _recount(self, acct: _Account) -> bool:
        """(thread, in the account's lock) Bring the index up to date with
        each folder whose directories changed since it was last listed.
        @return: whether anything changed."""
        assert acct.index is not None
        changed = False
        for name in [INBOX, *folders.folder_names(self, acct)]:
            state = acct.folders.get(name)
            row = state.row if state is not None and not state.stale else acct.index.folder(name)
            if row is not None:
                try:
                    path = os.path.join(acct.path, folder_dir(name))
                    if (self.fs.stat(os.path.join(path, "new")).st_mtime_ns == row.new_mtime
                            and self.fs.stat(os.path.join(path, "cur")).st_mtime_ns
                            == row.cur_mtime):
                        continue
                except FileNotFoundError:
                    continue  # removed meanwhile: its own lookup says so later
            try:
                state = self.folder(acct, name)
            except NoSuchFolder:
                continue
            if state.refresh():
                acct.touched.add(state)
                changed = True
        return changed

    def release(self, acct: _Account, size: int) -> None:
        # (on the reactor, while L{reserve}'s check may run in a worker
        # thread: a read-modify-write each side, so under one lock)
        with self._pending_lock:
            acct.pending[0] -= 1
            acct.pending[1] -= size

    def failure(self, f: Failure, what: str, **kw: Any) -> StoreError:
        if isinstance(f.value, StoreError):
            return f.value
        self._log.failure("mail store: " + what, f, **kw)
        return storage_failure()

    # -- IMailStore: delivery -----------------------------------------------------

    def deliver(self, accounts: Iterable[str], message: bytes | str,
                internal_date: float | None = None) -> Deferred[DeliveryReport]:
        date = self._clock.seconds() if internal_date is None else float(internal_date)
        refused: dict[str, StoreError] = {}
        stored: set[str] = set()
        wanted: list[_Account] = []
        for name in dict.fromkeys(accounts):
            try:
                wanted.append(self._account(name))
            except StoreError as e:
                refused[name] = e
        if not wanted:
            return succeed(DeliveryReport((), refused))

        def refuse(f: Failure, acct: _Account, what: str) -> None:
            refused[acct.name] = self.failure(f, what, account=acct.name)

        def linked(result: tuple[str, int, list[Exception | None]],
                   accepted: list[_Account]) -> Deferred[Any]:
            key, size, errors = result
            arrivals = []
            for acct, error in zip(accepted, errors):
                if error is not None:
                    refuse(Failure(error), acct, "delivery")
                    continue
                row = Row(0, key, "new", None, "", size, date, False)
                d = self._arrive(acct, row)
                d.addCallbacks(lambda _, name=acct.name: stored.add(name), refuse,
                               errbackArgs=(acct, "delivery"))
                arrivals.append(d)
            return DeferredList(arrivals)

        def report(result: object) -> DeliveryReport:
            if isinstance(result, Failure):
                error = self.failure(result, "writing a delivery")
                for acct in wanted:
                    if acct.name not in stored:
                        refused.setdefault(acct.name, error)
            order = [acct.name for acct in wanted if acct.name in stored]
            return DeliveryReport(tuple(order), refused)

        if isinstance(message, bytes) and all(map(self._admitted, wanted)):
            # The common case: one worker call writes, fsyncs and links
            # (several deliveries' files, when they wait for a writer).
            dirs = [os.path.join(acct.path, "new") for acct in wanted]
            d = self.writer.submit((message, date, dirs))
            return d.addCallback(linked, wanted).addBoth(report)

        def spooled(result: tuple[str, int]) -> Deferred[Any]:
            path, size = result
            checks = [self.reserve(acct, size) for acct in wanted]
            return DeferredList(checks, consumeErrors=True).addCallback(reserved, path, size)

        def reserved(outcome: list[tuple[bool, Any]], path: str, size: int) -> Deferred[Any]:
            accepted = []
            for acct, (ok, value) in zip(wanted, outcome):
                if ok:
                    accepted.append(acct)
                else:
                    refuse(value, acct, "quota check")
            key = self._unique(size)
            targets = [os.path.join(acct.path, "new", key) for acct in accepted]

            def release(result: object) -> object:
                for acct in accepted:
                    self.release(acct, size)
                return result

            # (a runner that raises would otherwise skip the release)
            d = call_in_thread(self._run, self.disk.link_all, path, targets)
            return d.addCallback(lambda errors: linked((key, size, errors), accepted)).addBoth(
                release)

        return call_in_thread(self._run, self.disk.spool, message, date).addCallback(
            spooled).addBoth(report)

    def _write_deliveries(self, jobs: list[tuple[bytes | str, float, list[str]]]
                          ) -> list[tuple[bool, Any]]:
        """(thread) The file work of the deliveries L{writer} grouped."""
        return self.disk.deliver_files(jobs, self._unique)

    def _admitted(self, acct: _Account) -> bool:
        """Can a delivery to C{acct} skip L{reserve}: its Maildir is open
        (so it exists) and it has no quota to check?"""
        if acct.index is None:
            return False
        quota = self._quota_for(acct.name)
        return quota.max_bytes is None and quota.max_messages is None

    # -- group commit of deliveries -----------------------------------------------

    def _arrive(self, acct: _Account, row: Row) -> Deferred[None]:
        """
        Make a delivery linked into C{acct}'s C{new/} durable and give it its
        UID: an fsync of C{new/}, then one index transaction, in one worker
        call shared by every delivery waiting when it starts (group commit,
        like L{gateway.store.fs.DirSyncer}: nobody is answered by an fsync
        that started before its link).

        @return: a L{Deferred} firing with C{None} once C{new/} is fsynced,
            or failing with the fsync's error (the file is unlinked again).
            An indexing failure is only logged: the file is on disk, and the
            next listing of the folder indexes it.
        """
        d: Deferred[None] = Deferred()
        acct.arrivals.append((row, d))
        self._touch(acct)
        if not acct.committing:
            acct.committing = True
            acct.lock.run(self._commit_arrivals, acct)
        return d

    def _commit_arrivals(self, acct: _Account) -> Deferred[None]:
        """(holding the account's lock) Commit what arrived until now."""
        batch, acct.arrivals = acct.arrivals, []

        def done(result: tuple[Exception | None, Failure | None] | Failure) -> None:
            self._after(None, acct, None)
            error: Exception | Failure | None
            error, unindexed = (result, None) if isinstance(result, Failure) else result
            if unindexed is not None:
                self._log.failure("mail store: indexing deliveries to {account}", unindexed,
                                  account=acct.name)
            for _, d in batch:
                if error is None:
                    d.callback(None)
                else:
                    d.errback(error)
            if acct.arrivals:
                acct.lock.run(self._commit_arrivals, acct)
            else:
                acct.committing = False

        rows = [row for row, _ in batch]
        # No thread to run it (stopping): fail the batch, not hang it.
        return call_in_thread(self._run, self._commit_in_thread, acct, rows).addBoth(done)

    def _commit_in_thread(self, acct: _Account,
                          rows: list[Row]) -> tuple[Exception | None, Failure | None]:
        """(thread) fsync C{new/}, then index C{rows} in one transaction.
        @return: the fsync's error (the files are then unlinked) and the
            indexing's failure, each C{None} if all went well."""
        new = os.path.join(acct.path, "new")
        try:
            self.fs.fsync_dir(new)
        except Exception as e:
            for row in rows:
                self.disk.try_unlink(os.path.join(new, row.key))
            return e, None
        try:
            self._in_thread(acct, self.index_rows, (INBOX, rows))
        except Exception:
            return None, Failure()
        return None, None

    def index_rows(self, acct: _Account, name: str | FolderState, rows: list[Row]) -> list[int]:
        """(thread) Give UIDs to files we put in a folder."""
        state = self.folder(acct, name) if isinstance(name, str) else name
        if state.gone:
            raise NoSuchFolder(state.name)
        acct.touched.add(state)
        return state.add_rows(rows)

    # -- IMailStore: folders ------------------------------------------------------

    def open_folder(self, account: str, name: str, readonly: bool = False) -> Deferred[Any]:
        from gateway.store.session import open_session
        return open_session(self, account, name, readonly)

    def status(self, account: str, name: str) -> Deferred[FolderStatus]:
        def status(acct: _Account, name: str) -> FolderStatus:
            state = self.folder(acct, name)
            if state.refresh():
                acct.touched.add(state)
            infos = state.infos.values()
            return FolderStatus(
                messages=len(state.infos),
                recent=sum(1 for uid in state.infos if uid > state.recent_uid),
                unseen=sum(1 for m in infos if "\\Seen" not in m.flags),
                uidvalidity=state.uidvalidity, uidnext=state.uidnext)
        return self._named(account, name, status)

    def _named(self, account: str, name: str, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        try:
            name = normalise(name)
        except StoreError as e:
            return fail(e)
        return self.serial(account, fn, name, *args)

    def folders(self, account: str) -> Deferred[list[FolderInfo]]:
        return self.serial(account, folders.list_folders, self)

    def create_folder(self, account: str, name: str) -> Deferred[None]:
        return self._named(account, name, folders.create_folder, self)

    def delete_folder(self, account: str, name: str) -> Deferred[None]:
        return self._named(account, name, folders.delete_folder, self)

    def rename_folder(self, account: str, old: str, new: str) -> Deferred[None]:
        try:
            new = normalise(new)
        except StoreError as e:
            return fail(e)
        return self._named(account, old, folders.rename_folder, self, new)

    def subscribe(self, account: str, name: str, subscribed: bool) -> Deferred[None]:
        return self._named(account, name, folders.subscribe, self, subscribed)

    # -- IMailStore: POP3 lock and usage --------------------------------------

    def lock_pop3(self, account: str) -> Deferred[Callable[[], None]]:
        def lock(acct: _Account) -> int:
            handle = self.fs.lock(os.path.join(acct.path, LOCK_FILE))
            if handle is None:
                raise MailboxInUse(acct.name)
            return handle

        def locked(handle: int) -> Callable[[], None]:
            done: list[bool] = []

            def release() -> None:
                if not done:
                    done.append(True)
                    self.fs.unlock(handle)

            # A releaser dropped without being called (a session lost without
            # its protocol noticing) releases on collection; a crashed
            # process releases because the kernel drops flocks.
            weakref.finalize(release, lambda: None if done else self.fs.unlock(handle))
            return release

        return self.serial(account, lock).addCallback(locked)

    def usage(self, account: str) -> Deferred[Usage]:
        def usage(acct: _Account) -> Usage:
            assert acct.index is not None
            count, total = acct.index.usage()
            return Usage(bytes=total, messages=count)
        return self.serial(account, usage)

    # -- sessions and polling -------------------------------------------------

    def add_session(self, acct: _Account, state: FolderState, session: object) -> None:
        acct.sessions.setdefault(state, set()).add(session)
        self._touch(acct)

    def remove_session(self, acct: _Account, state: FolderState, session: object) -> None:
        sessions = acct.sessions.get(state, set())
        sessions.discard(session)
        if not sessions:
            acct.sessions.pop(state, None)

    def _poll(self) -> None:
        """
        A tick: close the index of each account idle for C{index_idle}
        seconds, and more if over C{open_indexes}; start one worker call that looks at every account with
        sessions (L{changed_accounts}), unless the last one is still running; now and
        then give freed memory back; stop ticking when no account has a
        session or an open index and nothing is left to give back.
        """
        now = self._clock.seconds()
        watched: list[tuple[_Account, list[FolderState]]] = []
        busy = False
        opened = 0
        spare: list[_Account] = []  # open, unused for a tick, could be closed
        for acct in self._accounts.values():
            if acct.sessions:
                busy = True
                if not acct.polling:
                    watched.append((acct, list(acct.sessions)))
            index = acct.index
            if index is not None and not index.suspended:
                busy = True
                opened += 1
                if (now - acct.used >= self._poll_interval and not acct.lock.locked
                        and not acct.committing and not acct.polling):
                    if now - acct.used >= self._index_idle:
                        self._suspend(acct)
                        opened -= 1
                    else:
                        spare.append(acct)
        if opened > self._open_indexes:  # the least recently used go first
            spare.sort(key=lambda acct: acct.used)
            for acct in spare[:opened - self._open_indexes]:
                self._suspend(acct)
        if self._untrimmed and not self._suspending and (
                now - self._trimmed_at >= TRIM_INTERVAL):
            self._untrimmed, self._trimmed_at = False, now
            try:
                trimmed = self._run(release_memory)
            except Exception:  # no thread to run it (stopping)
                trimmed = fail()
            trimmed.addErrback(lambda f: self._log.failure("mail store: releasing memory", f))
        busy = busy or self._untrimmed
        if watched and not self._looking:
            self._looking = True
            try:
                d = self._run(changed_accounts, self.fs, watched)
            except Exception:  # no thread to run it (stopping)
                d = fail()
            d.addBoth(self._looked)
        if not busy and not self._looking:
            self._poller.stop()

    def _looked(self, result: list[_Account] | Failure) -> None:
        from gateway.store.session import poll
        self._looking = False
        if isinstance(result, Failure):
            self._log.failure("mail store: polling", result)
            return
        for acct in result:
            poll(self, acct)

    def _suspend(self, acct: _Account) -> None:
        """Close the index of an idle account (in its lock, in a worker
        thread) and drop its folders that have no session; a later tick
        gives the memory back (L{release_memory})."""

        def done(result: object) -> None:
            self._suspending -= 1
            self._untrimmed = True
            if isinstance(result, Failure):
                self._log.failure("mail store: closing the index of {account}", result,
                                  account=acct.name)

        self._suspending += 1
        acct.lock.run(self._run, close_index, acct).addBoth(done)

    def close(self) -> Deferred[None]:
        """Stop polling and close the index databases (at shutdown)."""
        if self._poller.running:
            self._poller.stop()

        def close(acct: _Account) -> None:
            if acct.index is not None:
                acct.index.close()
                acct.index = None
                acct.folders.clear()

        # After the worker threads stopped (shutdown) an index stays open:
        # SQLite needs no close to be consistent, and that is no error.
        return DeferredList([acct.lock.run(call_in_thread, self._run, close, acct)
                             for acct in self._accounts.values()],
                            consumeErrors=True).addCallback(lambda _: None)
