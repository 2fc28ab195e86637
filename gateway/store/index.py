# -*- test-case-name: tests.test_store_index -*-
"""
The per-account index: folders (UIDVALIDITY, UIDNEXT, the highest UID
already given as \\Recent, the directory mtimes last listed), subscriptions,
and per message its UID, key, where its file is, flags, keywords, size and
internal date.

Format: one SQLite database per account, C{<account>/gateway-index.sqlite}
(stdlib C{sqlite3}), in WAL mode with C{synchronous=FULL}.  Why SQLite
rather than a Dovecot-style uidlist or a log plus snapshot:

  - every change (a delivery's UID, a flag change, an expunge) is one
    transaction, atomic and durable at commit without rewriting a file of
    100,000 lines; C{synchronous=FULL} makes a commit survive power loss, so
    a UID shown to a client is never given to another message after a
    crash;
  - a warm open of a 100,000-message folder is one indexed range scan of
    small rows, not a parse of a text file;
  - C{BEGIN IMMEDIATE} serialises writers across processes and
    C{PRAGMA data_version} tells a connection cheaply that another one
    changed the database, so two gateway processes on one state directory
    stay consistent (see L{AccountIndex.begin}).

The Maildir stays the truth for what exists and for the system flags (the
info letters); the index is the truth for UIDs and keywords.  If the
database is lost, the next open rebuilds it from the directories with new
UIDVALIDITYs (RFC 3501 section 2.3.1.1), which is the only way they change.

An open connection costs memory whatever the folder's size: about 100 KiB
(SQLite's lookaside buffers, page cache and schema) and a 32 KiB mapping of
the WAL index (C{-shm}).  So the store closes the connection of an account
that has been idle for a while (L{AccountIndex.suspend}) and the next
transaction opens it again; the account's folders stay in memory meanwhile.
Whether another connection wrote while it was closed, which C{data_version}
cannot tell across connections, is told by a generation counter in the
C{meta} table: every transaction that changes the database adds one to it
in the same commit (one more page in the same WAL write and fsync), and a
reopened index compares it with the value it saw when it closed.
SQLite's freed memory stays in the C heap, in the middle of it, where the
allocator does not give it back: L{release_memory} asks glibc to (about
115 KiB of each closed connection's 145 stayed resident without it).

L{stamp} is what the store's poll compares, without opening anything, to
notice another process's commit (see L{gateway.store.maildir}).

An L{AccountIndex} is not thread-safe: L{gateway.store.maildir} runs every
call for one account in a worker thread, one at a time.
"""

from __future__ import annotations

import ctypes
import os
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

INDEX_FILE = "gateway-index.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS folders (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL,
    recent_uid INTEGER NOT NULL,
    new_mtime INTEGER,
    cur_mtime INTEGER);
CREATE TABLE IF NOT EXISTS messages (
    folder INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    key TEXT NOT NULL,
    subdir TEXT NOT NULL,
    info TEXT,
    keywords TEXT NOT NULL,
    size INTEGER NOT NULL,
    internal_date REAL NOT NULL,
    lf INTEGER NOT NULL,
    PRIMARY KEY (folder, uid)) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_key ON messages (folder, key);
CREATE TABLE IF NOT EXISTS subscriptions (name TEXT PRIMARY KEY);
"""

#: What a file looks like to L{stamp}: inode, size, mtime in nanoseconds.
FileStamp = tuple[int, int, int]


def _file_stamp(path: str) -> FileStamp | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's C{malloc_trim(3)} (the standard library does not offer it),
    or C{None} (another C library or system)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_size_t,)
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_malloc_trim = _find_malloc_trim()


def release_memory() -> None:
    """
    Give the free pages of the C heap back to the kernel, after indexes
    were suspended: glibc's C{malloc_trim(0)}, which returns whole free
    pages anywhere in the heap, not only at its top (nothing elsewhere).
    It walks every free chunk with the heap locked (about 10 ms after
    closing 1,000 connections), so the store calls it once in a while, in
    a worker thread.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


def stamp(path: str) -> tuple[FileStamp | None, FileStamp | None]:
    """
    The index database at C{path} as the file system shows it: its WAL
    file (absent once the last connection closed) and the database file
    (which a checkpoint rewrites).  Any commit by any connection changes
    one of them; comparing two stamps costs two C{stat} calls and no
    SQLite.  A hint, not a proof (a timestamp has the resolution of the
    kernel's clock tick): the generation and C{data_version} checks at
    the next transaction are what a cache relies on.
    """
    return _file_stamp(path + "-wal"), _file_stamp(path)


@dataclass
class FolderRow:
    id: int
    name: str
    uidvalidity: int
    uidnext: int
    recent_uid: int
    new_mtime: int | None
    cur_mtime: int | None


@dataclass(frozen=True)
class Row:
    """One message as the index keeps it.  C{info} is C{None} for a file
    without a C{":2,"} suffix; C{lf} means the file has bare LF line ends
    and is converted when read (C{size} is then the CRLF size)."""

    uid: int
    key: str
    subdir: str
    info: str | None
    keywords: str
    size: int
    internal_date: float
    lf: bool


class AccountIndex:
    """
    One account's index database.

    @param uidvalidity_base: returns the time-based floor for new
        UIDVALIDITY values (POSIX seconds from the store's clock).
    @param timeout: seconds to wait for another connection's write lock.
    """

    def __init__(self, path: str, *, uidvalidity_base: Callable[[], int],
                 timeout: float = 5.0) -> None:
        self.path = path
        self._base = uidvalidity_base
        self._timeout = timeout
        self._db = self._connect()
        self.suspended = False
        self._generation: int | None = None  # seen when suspended, if nobody else wrote
        self._changes = 0
        self._usage: tuple[int, int] | None = None
        self._version = self._data_version()
        with self.transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('generation', 0)")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None,
                             check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def close(self) -> None:
        if not self.suspended:
            self._db.close()

    def suspend(self) -> bool:
        """
        Close the connection (outside a transaction) until the next
        L{begin}, which opens it again; remember the generation, so that
        L{begin} can tell whether another connection wrote meanwhile.  The
        last connection to close checkpoints the WAL into the database and
        removes the C{-wal} and C{-shm} files.

        @return: C{True} if another connection committed since our last
            transaction: a change our caches have not taken yet, so the
            caller must not record the files' L{stamp} as seen (its poll
            would then never look, and the change would reach nobody
            before the account's next call).
        """
        if self.suspended:
            return False
        self._db.execute("BEGIN")
        try:
            generation = self._read_generation()
            unchanged = self._data_version() == self._version
        finally:
            self._db.execute("COMMIT")
        self._db.close()
        self.suspended = True
        # Unknown (None) if another connection wrote since our last
        # transaction: its change is not in our caches yet.
        self._generation = generation if unchanged else None
        return not unchanged

    def _read_generation(self) -> int:
        found = self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(found[0]) if found else 0

    def _data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def stamp(self) -> tuple[FileStamp | None, FileStamp | None] | None:
        """(between transactions) L{stamp} of this database, or C{None} if
        another connection committed since our last transaction (so that
        a poll comparing with it looks again)."""
        found = stamp(self.path)
        if not self.suspended and self._data_version() != self._version:
            return None
        return found

    # -- transactions ---------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.begin()
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def begin(self) -> bool:
        """
        Start a write transaction, opening the connection again if it was
        suspended.

        @return: C{True} if another connection (another process, or another
            store object) committed since our last transaction: the caller
            must then reload what it caches.
        """
        if self.suspended:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                generation = db.execute(
                    "SELECT value FROM meta WHERE key = 'generation'").fetchone()
                version = int(db.execute("PRAGMA data_version").fetchone()[0])
            except BaseException:
                db.close()  # still suspended: the next begin tries again
                raise
            self._db, self.suspended = db, False
            changed = self._generation is None or generation is None or (
                int(generation[0]) != self._generation)
            self._version = version
        else:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = self._data_version()
            except BaseException:
                self.rollback()  # or every later begin fails: a transaction is open
                raise
            changed, self._version = version != self._version, version
        if changed:
            self._usage = None
        self._changes = self._db.total_changes
        return changed

    def commit(self) -> None:
        if self._db.total_changes != self._changes:
            # Seen by indexes that reopen after a suspend (see the module
            # docstring); in the same commit, so no fsync of its own.
            self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._usage = None

    # -- folders --------------------------------------------------------------

    def folder(self, name: str) -> FolderRow | None:
        found = self._db.execute(
            "SELECT id, name, uidvalidity, uidnext, recent_uid, new_mtime, cur_mtime"
            " FROM folders WHERE name = ?", (name,)).fetchone()
        return FolderRow(*found) if found else None

    def add_folder(self, name: str) -> FolderRow:
        cursor = self._db.execute(
            "INSERT INTO folders (name, uidvalidity, uidnext, recent_uid)"
            " VALUES (?, ?, 1, 0)", (name, self._next_uidvalidity()))
        return FolderRow(int(cursor.lastrowid or 0), name,
                         self._last_uidvalidity(), 1, 0, None, None)

    def _last_uidvalidity(self) -> int:
        found = self._db.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone()
        return int(found[0]) if found else 0

    def _next_uidvalidity(self) -> int:
        # Strictly increasing per account, so that a folder deleted and
        # created again never gets its old value back (RFC 3501 2.3.1.1).
        value = max(self._base(), self._last_uidvalidity() + 1, 1) % 2**32 or 1
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('uidvalidity', ?)", (value,))
        return value

    def update_folder(self, row: FolderRow) -> None:
        self._db.execute(
            "UPDATE folders SET uidnext = ?, recent_uid = ?, new_mtime = ?, cur_mtime = ?"
            " WHERE id = ?",
            (row.uidnext, row.recent_uid, row.new_mtime, row.cur_mtime, row.id))

    def drop_folder(self, name: str) -> None:
        row = self.folder(name)
        if row is not None:
            self._db.execute("DELETE FROM messages WHERE folder = ?", (row.id,))
            self._db.execute("DELETE FROM folders WHERE id = ?", (row.id,))
            self._usage = None

    def rename_folders(self, renames: Iterable[tuple[str, str]]) -> None:
        for old, new in renames:
            self.drop_folder(new)  # a stale row of a folder deleted behind our back
            self._db.execute("UPDATE folders SET name = ? WHERE name = ?", (new, old))
            if self._db.execute("DELETE FROM subscriptions WHERE name = ?", (old,)).rowcount:
                self._db.execute("INSERT OR IGNORE INTO subscriptions VALUES (?)", (new,))

    # -- messages -------------------------------------------------------------

    def raw_rows(self, folder: int) -> Iterator[tuple[Any, ...]]:
        """The folder's rows as tuples in L{Row}'s field order, by UID."""
        return iter(self._db.execute(
            "SELECT uid, key, subdir, info, keywords, size, internal_date, lf"
            " FROM messages WHERE folder = ? ORDER BY uid", (folder,)))

    def rows(self, folder: int) -> list[Row]:
        return [Row(uid, key, sub, info, kw, size, date, bool(lf))
                for uid, key, sub, info, kw, size, date, lf in self.raw_rows(folder)]

    def row_for_key(self, folder: int, key: str) -> Row | None:
        found = self._db.execute(
            "SELECT uid, key, subdir, info, keywords, size, internal_date, lf"
            " FROM messages WHERE folder = ? AND key = ?", (folder, key)).fetchone()
        if not found:
            return None
        uid, key, sub, info, kw, size, date, lf = found
        return Row(uid, key, sub, info, kw, size, date, bool(lf))

    def insert(self, folder: int, rows: Iterable[Row]) -> None:
        rows = list(rows)
        self._db.executemany(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(folder, r.uid, r.key, r.subdir, r.info, r.keywords, r.size, r.internal_date,
              int(r.lf)) for r in rows])
        if self._usage is not None:
            self._usage = (self._usage[0] + len(rows),
                           self._usage[1] + sum(r.size for r in rows))

    def update(self, folder: int, rows: Iterable[Row]) -> None:
        """Store the file place, info letters and keywords of these rows."""
        self._db.executemany(
            "UPDATE messages SET subdir = ?, info = ?, keywords = ? WHERE folder = ? AND uid = ?",
            [(r.subdir, r.info, r.keywords, folder, r.uid) for r in rows])

    def delete(self, folder: int, rows: Iterable[Row]) -> None:
        rows = list(rows)
        self._db.executemany("DELETE FROM messages WHERE folder = ? AND uid = ?",
                             [(folder, r.uid) for r in rows])
        if self._usage is not None:
            self._usage = (self._usage[0] - len(rows),
                           self._usage[1] - sum(r.size for r in rows))

    def usage(self) -> tuple[int, int]:
        """C{(messages, bytes)} over all folders; counted once, then kept up
        to date by L{insert} and L{delete}."""
        if self._usage is None:
            count, total = self._db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM messages").fetchone()
            self._usage = (int(count), int(total))
        return self._usage

    # -- subscriptions --------------------------------------------------------

    def subscriptions(self) -> set[str]:
        return {name for (name,) in self._db.execute("SELECT name FROM subscriptions")}

    def subscribe(self, name: str, subscribed: bool) -> None:
        if subscribed:
            self._db.execute("INSERT OR IGNORE INTO subscriptions VALUES (?)", (name,))
        else:
            self._db.execute("DELETE FROM subscriptions WHERE name = ?", (name,))
