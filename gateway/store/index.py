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

An L{AccountIndex} is not thread-safe: L{gateway.store.maildir} runs every
call for one account in a worker thread, one at a time.
"""

from __future__ import annotations

import sqlite3
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
    """

    def __init__(self, path: str, *, uidvalidity_base: Callable[[], int]) -> None:
        self._base = uidvalidity_base
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self.transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        self._version = self._data_version()
        self._usage: tuple[int, int] | None = None

    def close(self) -> None:
        self._db.close()

    def _data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    # -- transactions ---------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            self._usage = None
            raise
        self._db.execute("COMMIT")

    def begin(self) -> bool:
        """
        Start a write transaction.

        @return: C{True} if another connection (another process, or another
            store object) committed since our last transaction: the caller
            must then reload what it caches.
        """
        self._db.execute("BEGIN IMMEDIATE")
        version = self._data_version()
        changed, self._version = version != self._version, version
        if changed:
            self._usage = None
        return changed

    def commit(self) -> None:
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
