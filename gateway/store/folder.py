# -*- test-case-name: tests.test_store_maildir -*-
"""
One Maildir folder as the store sees it: the index rows in memory, brought
up to date from the directories, and the file operations on its messages.

Runs in a worker thread, one call at a time per account (the store's
account lock); the caller wraps each call in an index transaction.

Bringing the folder up to date (L{FolderState.refresh}) must not read or
stat 100,000 files each time.  It stats C{new/} and C{cur/} and lists only
a directory whose mtime differs from the one recorded at its last listing;
a file that appears is stat-ed once (its mtime is its arrival time and
internal date) and read once only if its name lacks the C{W=} size.  An
mtime is recorded only if it was at least a second old when the listing
began: a change within the same clock tick of a coarse file-system
timestamp then still causes one more listing (Dovecot's "dirty mtime"
rule).  Our own renames change the mtimes too, so a listing follows our
own changes; listing C{new/} alone (deliveries) never lists C{cur/}, and
listing C{cur/} alone leaves the messages in C{new/} as they were.
"""

from __future__ import annotations

import io
import os
import time
from typing import IO, Any

from gateway.store.fs import FileSystem
from gateway.store.index import AccountIndex, FolderRow, Row
from gateway.store.model import SYSTEM_FLAGS, MessageInfo, NoSuchMessage
from gateway.store.names import (
    file_name,
    flags_of,
    folder_dir,
    keywords_text,
    letters_for,
    sizes,
    split_name,
    to_crlf,
)
from gateway.store.view import FolderModel

#: A file's place: (subdir, info letters or None, has bare LF line ends).
Place = tuple[str, "str | None", bool]
_PLACES: dict[Place, Place] = {}
_STABLE_NS = 1_000_000_000


def _place(subdir: str, info: str | None, lf: bool) -> Place:
    place = (subdir, info, lf)
    return _PLACES.setdefault(place, place)


class FolderState(FolderModel):
    """
    @ivar loaded: the messages are in memory (else only the folder row is).
    @ivar stale: another connection changed the index: reload before use.
    """

    def __init__(self, fs: FileSystem, index: AccountIndex, account_path: str,
                 row: FolderRow) -> None:
        super().__init__(row.name, row.uidvalidity, row.uidnext, row.recent_uid)
        self.fs, self.index, self.row = fs, index, row
        self.account_path = account_path
        self.path = os.path.join(account_path, folder_dir(row.name))
        self.loaded = False
        self.stale = False
        self.place: dict[int, Place] = {}
        self._by_key: dict[str, int] | None = None  # key -> UID, built when needed
        self.in_new: set[int] = set()

    def rename(self, name: str) -> None:
        self.name = self.row.name = name
        self.path = os.path.join(self.account_path, folder_dir(name))

    # -- loading ------------------------------------------------------------------

    def _set(self, row: Row) -> None:
        info = MessageInfo(row.uid, row.key, row.size, flags_of(row.info, row.keywords),
                           row.internal_date)
        if self.infos.get(row.uid) != info:
            self.put(info)
        self.place[row.uid] = _place(row.subdir, row.info, row.lf)
        if self._by_key is not None:
            self._by_key[row.key] = row.uid
        if row.subdir == "new":
            self.in_new.add(row.uid)
        else:
            self.in_new.discard(row.uid)

    def _unset(self, uid: int) -> None:
        info = self.infos.get(uid)
        if info is not None:
            if self._by_key is not None:
                self._by_key.pop(info.key, None)
        self.place.pop(uid, None)
        self.in_new.discard(uid)
        self.drop(uid)

    def ensure_loaded(self) -> None:
        if self.stale:
            self.reload()
        if not self.loaded:
            # The hot path of a warm open: no Row objects, no change log (no
            # session can be looking at a folder that is not loaded yet), one
            # lookup for the place and flags that most messages share.
            infos, place, in_new = self.infos, self.place, self.in_new
            shared: dict[tuple[Any, ...], tuple[Place, frozenset[str]]] = {}
            for uid, key, subdir, info, keywords, size, date, lf in self.index.raw_rows(
                    self.row.id):
                found = shared.get((subdir, info, keywords, lf))
                if found is None:
                    found = shared[(subdir, info, keywords, lf)] = (
                        _place(subdir, info, bool(lf)), flags_of(info, keywords))
                place[uid] = found[0]
                infos[uid] = MessageInfo(uid, key, size, found[1], date)
                if subdir == "new":
                    in_new.add(uid)
            self.loaded = True

    @property
    def by_key(self) -> dict[str, int]:
        """Key -> UID, built at the first listing (a warm open needs none)."""
        if self._by_key is None:
            self._by_key = {info.key: uid for uid, info in self.infos.items()}
        return self._by_key

    def shrink(self) -> None:
        """The account goes idle: drop what the next listing can rebuild
        (the key -> UID map, as big as the folder)."""
        self._by_key = None

    def reload(self) -> None:
        """Another connection changed the index: take its state."""
        self.stale = False
        row = self.index.folder(self.name)
        if row is None or row.uidvalidity != self.uidvalidity:
            self.vanish()
            return
        self.row, self.recent_uid = row, row.recent_uid
        self.path = os.path.join(self.account_path, folder_dir(row.name))
        if self.uidnext > row.uidnext:
            # UIDs given by a transaction that failed are never given
            # again: a UID names one message for ever (RFC 3501 section
            # 2.3.1.1), even one nobody was told of.  This transaction
            # records it.
            self.save_row()
        else:
            self.uidnext = row.uidnext
        if self.loaded:
            rows = {r.uid: r for r in self.index.rows(row.id)}
            for uid in [u for u in self.infos if u not in rows]:
                self._unset(uid)
            for r in rows.values():
                self._set(r)

    def invalidate(self) -> None:
        """A transaction failed: memory may be ahead of the index and the
        disk; reload and list both directories at next use."""
        self.stale = True
        self.row.new_mtime = self.row.cur_mtime = None

    def vanish(self) -> None:
        self.gone = True
        for uid in list(self.infos):
            self._unset(uid)

    def save_row(self) -> None:
        self.row.uidnext, self.row.recent_uid = self.uidnext, self.recent_uid
        self.index.update_folder(self.row)

    # -- rows -----------------------------------------------------------------

    def row_of(self, uid: int) -> Row:
        info, (subdir, letters, lf) = self.infos[uid], self.place[uid]
        keywords = keywords_text(info.flags - SYSTEM_FLAGS.keys())
        return Row(uid, info.key, subdir, letters, keywords, info.size, info.internal_date, lf)

    def file_path(self, uid: int) -> str:
        subdir, letters, _ = self.place[uid]
        return os.path.join(self.path, subdir, file_name(self.infos[uid].key, letters))

    # -- bringing it up to date -----------------------------------------------

    def refresh(self, force: bool = False) -> bool:
        """List what changed on disk and index it.  @return: whether the
        folder changed."""
        self.ensure_loaded()
        try:
            mtimes = {sub: self.fs.stat(os.path.join(self.path, sub)).st_mtime_ns
                      for sub in ("new", "cur")}
        except FileNotFoundError:
            self.vanish()
            return True
        known = {"new": self.row.new_mtime, "cur": self.row.cur_mtime}
        subdirs = [sub for sub in ("new", "cur") if force or mtimes[sub] != known[sub]]
        if not subdirs:
            return False
        started = time.time_ns()
        listed: dict[str, tuple[str, str | None]] = {}
        for sub in subdirs:
            for name in self.fs.listdir(os.path.join(self.path, sub)):
                if not name.startswith("."):
                    key, info = split_name(name)
                    if sub == "cur" or key not in listed:
                        listed[key] = (sub, info)
        # Only the messages in a listed directory can be missing from the
        # listing: one still in new/ is not gone because cur/ alone moved.
        if "cur" not in subdirs:
            candidates = list(self.in_new)
        elif "new" in subdirs:
            candidates = list(self.infos)
        else:
            candidates = [uid for uid in self.infos if uid not in self.in_new]
        removed: list[int] = []
        changed: list[Row] = []
        for uid in candidates:
            found = listed.get(self.infos[uid].key)
            if found is None:
                removed.append(uid)
            elif found != self.place[uid][:2]:
                row = self.row_of(uid)
                changed.append(Row(uid, row.key, found[0], found[1], row.keywords, row.size,
                                   row.internal_date, row.lf))
        arrived = self._arrivals([(key, sub, info) for key, (sub, info) in listed.items()
                                  if key not in self.by_key])
        for sub in subdirs:  # see the module docstring: only a settled mtime
            stable = mtimes[sub] <= started - _STABLE_NS
            setattr(self.row, sub + "_mtime", mtimes[sub] if stable else None)
        self.index.delete(self.row.id, [self.row_of(uid) for uid in removed])
        for uid in removed:
            self._unset(uid)
        self.index.update(self.row.id, changed)
        for row in changed:
            self._set(row)
        self.add_rows(arrived)
        self.save_row()
        return bool(removed or changed or arrived)

    def _arrivals(self, files: list[tuple[str, str, str | None]]) -> list[Row]:
        """Rows (UID 0) for files that appeared, in arrival order."""
        found = []
        for key, sub, info in files:
            path = os.path.join(self.path, sub, file_name(key, info))
            try:
                st = self.fs.stat(path)
                size_s, size_w = sizes(key)
                if size_w is None:
                    size_w = self._crlf_size(path)
                size_s = st.st_size if size_s is None else size_s
            except FileNotFoundError:
                continue  # gone again already
            row = Row(0, key, sub, info, "", size_w, st.st_mtime, size_s != size_w)
            found.append((st.st_mtime_ns, key, row))
        found.sort(key=lambda t: (t[0], t[1]))
        return [row for _, _, row in found]

    def _crlf_size(self, path: str) -> int:
        size, after_cr = 0, False
        with self.fs.open_read(path) as f:
            while chunk := f.read(1 << 20):
                size += len(to_crlf(chunk, after_cr))
                after_cr = chunk.endswith(b"\r")
        return size

    def add_rows(self, rows: list[Row]) -> list[int]:
        """Index files we or others put in the folder (UID 0 in C{rows}):
        a key already indexed keeps its UID.  @return: the UIDs."""
        uids, fresh = [], []
        for row in rows:
            known = self.by_key.get(row.key) if self.loaded else None
            if known is None and not self.loaded:
                old = self.index.row_for_key(self.row.id, row.key)
                known = old.uid if old else None
            if known is None:
                known = self.uidnext
                self.uidnext += 1
                row = Row(known, row.key, row.subdir, row.info, row.keywords, row.size,
                          row.internal_date, row.lf)
                fresh.append(row)
            uids.append(known)
        self.index.insert(self.row.id, fresh)
        if self.loaded:
            for row in fresh:
                self._set(row)
        self.save_row()
        return uids

    # -- changing messages ----------------------------------------------------

    def set_flags(self, uids: list[int], system: frozenset[str], keywords: frozenset[str],
                  mode: str) -> list[MessageInfo]:
        """Read-modify-write of each message's flags (the caller holds the
        account lock, so concurrent changes are applied one after another)."""
        self.ensure_loaded()
        out, renamed = [], False
        for uid in sorted(set(uids)):
            if uid not in self.infos:
                continue
            flags = self.infos[uid].flags
            old_system, old_keywords = flags & SYSTEM_FLAGS.keys(), flags - SYSTEM_FLAGS.keys()
            if mode == "replace":
                new_system, new_keywords = system, keywords
            elif mode == "add":
                new_system, new_keywords = old_system | system, old_keywords | keywords
            elif mode == "remove":
                new_system, new_keywords = old_system - system, old_keywords - keywords
            else:
                raise ValueError(f"unknown mode {mode!r}")
            subdir, letters, lf = self.place[uid]
            new_letters = letters_for(frozenset(new_system), letters)
            if new_letters != (letters or ""):
                renamed |= self._move(uid, "cur", new_letters)
            if uid in self.place:  # (unless it vanished while we renamed it)
                row = self.row_of(uid)
                row = Row(uid, row.key, row.subdir, row.info, keywords_text(frozenset(new_keywords)),
                          row.size, row.internal_date, row.lf)
                self.index.update(self.row.id, [row])
                self._set(row)
                out.append(self.infos[uid])
        if renamed:
            self.fs.fsync_dir(os.path.join(self.path, "cur"))
        return out

    def _move(self, uid: int, subdir: str, letters: str | None) -> bool:
        """Rename a message file; if it moved behind our back, list the
        folder and try once more.  @return: whether a file was renamed."""
        for attempt in (1, 2):
            if uid not in self.place:
                return False
            source = self.file_path(uid)
            target = os.path.join(self.path, subdir, file_name(self.infos[uid].key, letters))
            try:
                self.fs.rename(source, target)
            except FileNotFoundError:
                if attempt == 2:
                    raise
                self.refresh(force=True)
                continue
            self.place[uid] = _place(subdir, letters, self.place[uid][2])
            return True
        return False

    def to_cur(self) -> None:
        """Move the messages still in C{new/} to C{cur/}, keeping their key
        (done when a read-write session has seen them, as Dovecot does).
        No fsync: after a crash the file is in one place or the other, and
        both are right."""
        moved = []
        for uid in sorted(self.in_new):
            if self._move(uid, "cur", self.place[uid][1] or ""):
                moved.append(uid)
                self.in_new.discard(uid)
        self.index.update(self.row.id, [self.row_of(uid) for uid in moved])

    def remove(self, uids: list[int]) -> list[int]:
        """Unlink these messages, fsync, then drop them from the index."""
        self.ensure_loaded()
        gone = []
        for uid in sorted(set(uids)):
            if uid in self.infos:
                try:
                    self.fs.unlink(self.file_path(uid))
                except FileNotFoundError:
                    pass  # deleted behind our back: gone all the same
                gone.append(uid)
        if gone:
            for sub in ("new", "cur"):
                self.fs.fsync_dir(os.path.join(self.path, sub))
            self.index.delete(self.row.id, [self.row_of(uid) for uid in gone])
            for uid in gone:
                self._unset(uid)
        return gone

    def forget(self, uids: list[int]) -> None:
        """Drop these messages from the index (their files were moved)."""
        self.index.delete(self.row.id, [self.row_of(uid) for uid in uids])
        for uid in uids:
            self._unset(uid)

    def open(self, uid: int) -> IO[bytes]:
        self.ensure_loaded()
        for attempt in (1, 2):
            if uid not in self.infos:
                break
            try:
                f = self.fs.open_read(self.file_path(uid))
            except FileNotFoundError:
                if attempt == 1:
                    self.refresh(force=True)
                continue
            if not self.place[uid][2]:
                return f
            with f:  # bare LF line ends: give what the size promised
                return io.BytesIO(to_crlf(f.read()))
        raise NoSuchMessage(uid)
