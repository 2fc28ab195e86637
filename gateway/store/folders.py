# -*- test-case-name: tests.test_store_contract -*-
"""
An account's folders: LIST, CREATE, DELETE, RENAME, SUBSCRIBE.  Thread
functions, run by L{gateway.store.maildir.MaildirStore} with the account
lock held, inside one index transaction.

The directories are the truth for which folders exist, so folders made by
another program show up; a folder's index row (its UIDVALIDITY) is made at
its first use.  Each change is atomic on disk: a new folder is built under
a staging name (C{..creating-*}, which is no folder name) and renamed into
place; a deleted folder is first renamed to C{..deleted-*}, so it vanishes
for everyone at once, then removed.  The account directory is fsynced
before the call returns.

A step that fails (a rename, a directory fsync, the index) undoes, as
far as the disk lets it, what the call already did on disk, so the index
(rolled back by the store) and the directories keep agreeing: a failed
RENAME puts each directory or message file back and removes the parents
it made, a failed CREATE removes what it made, a DELETE that fails before
the folder is gone for good renames it back.  Once a deleted folder is
renamed away and the index has forgotten it, the deletion stands: a
failure to remove its files is only logged (L{gateway.store.durable}
removes C{..deleted-*} at the next start).

Rules (RFC 3501 section 6.3): creating a folder creates its missing
parents; INBOX cannot be deleted; a folder with children cannot be deleted
either (Maildir++ has no place for a folder that holds only children, so
we refuse rather than leave a hole in the hierarchy); renaming moves the
children along and keeps UIDVALIDITY and UIDs (a UIDVALIDITY is never
reused in an account, so a client that knew another folder by the new name
cannot mistake it); renaming INBOX moves its messages to a new folder and
leaves INBOX empty, with its UIDVALIDITY and UIDNEXT.  Subscribing needs an
existing folder; a folder's subscription follows it when it is renamed
and stays when it is deleted (RFC 3501 section 6.3.6).
"""

from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING

from twisted.logger import Logger

from gateway.store.index import Row
from gateway.store.model import (
    DEFAULT_FOLDERS,
    SYSTEM_FLAGS,
    FolderExists,
    FolderInfo,
    InvalidFolderName,
    NoSuchFolder,
)
from gateway.store.names import (
    INBOX,
    file_name,
    folder_dir,
    folder_name,
    is_inside,
    keywords_text,
    parent_names,
)

if TYPE_CHECKING:
    from gateway.store.fs import FileSystem
    from gateway.store.maildir import MaildirStore, _Account

_log = Logger()


def folder_names(store: MaildirStore, acct: _Account) -> list[str]:
    """The account's folders on disk, INBOX excepted."""
    names = []
    for entry in store.fs.listdir(acct.path):
        name = folder_name(entry)
        if name is not None and store.disk.exists(os.path.join(acct.path, entry, "cur")):
            names.append(name)
    return names


def list_folders(acct: _Account, store: MaildirStore) -> list[FolderInfo]:
    assert acct.index is not None
    names = [INBOX] + sorted(folder_names(store, acct))
    subscribed = acct.index.subscriptions()
    return [FolderInfo(name, DEFAULT_FOLDERS.get(name), name in subscribed,
                       any(is_inside(other, name) for other in names))
            for name in names]


def _forget_state(acct: _Account, name: str) -> None:
    """Drop a cached folder state whose directory is being replaced; its
    sessions see the folder gone."""
    state = acct.folders.pop(name, None)
    if state is not None:
        state.vanish()
        acct.touched.add(state)


def create_folders(store: MaildirStore, acct: _Account, names: list[str]) -> list[str]:
    """Create those of C{names} that do not exist, in order; all or none.
    @return: the names created."""
    assert acct.index is not None
    created: list[str] = []
    try:
        for name in names:
            path = os.path.join(acct.path, folder_dir(name))
            if name == INBOX or store.disk.exists(path):
                continue
            staging = os.path.join(acct.path, "..creating-" + secrets.token_hex(8))
            try:
                store.disk.make_maildir(staging, folder=True)
                store.fs.rename(staging, path)
            except BaseException:
                _remove(store.fs, staging)
                raise
            created.append(name)
            acct.index.drop_folder(name)  # a row left by a folder removed behind our back
            _forget_state(acct, name)
        store.fs.fsync_dir(acct.path)
    except BaseException:
        remove_folders(store, acct, created)
        raise
    return created


def remove_folders(store: MaildirStore, acct: _Account, names: list[str]) -> None:
    """Undo L{create_folders}, best effort: the folders, just made, hold
    no message."""
    for name in reversed(names):
        trash = os.path.join(acct.path, "..deleted-" + secrets.token_hex(8))
        try:
            store.fs.rename(os.path.join(acct.path, folder_dir(name)), trash)
        except OSError:
            continue
        _remove(store.fs, trash)


def _remove(fs: FileSystem, path: str) -> None:
    """Remove a directory, best effort (what stays is removed at the next
    start, L{gateway.store.durable.Disk.recover})."""
    try:
        fs.rmtree(path)
    except OSError:
        pass


def _undo_renames(fs: FileSystem, done: list[tuple[str, str]]) -> bool:
    """Rename back, last first, best effort.  @return: whether all went back."""
    back = True
    for source, target in reversed(done):
        try:
            fs.rename(target, source)
        except OSError:
            back = False
    return back


def create_folder(acct: _Account, name: str, store: MaildirStore) -> None:
    if name == INBOX or store.disk.exists(os.path.join(acct.path, folder_dir(name))):
        raise FolderExists(name)
    create_folders(store, acct, [*parent_names(name), name])


def delete_folder(acct: _Account, name: str, store: MaildirStore) -> None:
    assert acct.index is not None
    if name == INBOX:
        raise InvalidFolderName(name, "INBOX cannot be deleted")
    state = store.folder(acct, name)
    if any(is_inside(other, name) for other in folder_names(store, acct)):
        raise InvalidFolderName(name, "it has child folders; delete them first")
    trash = os.path.join(acct.path, "..deleted-" + secrets.token_hex(8))
    store.fs.rename(state.path, trash)
    try:
        store.fs.fsync_dir(acct.path)
        acct.index.drop_folder(name)
    except BaseException:
        _undo_renames(store.fs, [(state.path, trash)])
        raise
    _forget_state(acct, name)
    try:
        store.fs.rmtree(trash)
    except OSError:
        # The folder is gone for everyone and the index forgot it: a NO
        # now would bring back its row (its UIDVALIDITY) for a folder
        # that no longer exists.
        _log.failure("mail store: removing the deleted folder {folder} of {account} "
                     "(removed at the next start)", folder=name, account=acct.name)


def subscribe(acct: _Account, name: str, store: MaildirStore, subscribed: bool) -> None:
    assert acct.index is not None
    if subscribed and not store.disk.exists(os.path.join(acct.path, folder_dir(name), "cur")):
        raise NoSuchFolder(name)
    acct.index.subscribe(name, subscribed)


def rename_folder(acct: _Account, old: str, store: MaildirStore, new: str) -> None:
    disk, fs = store.disk, store.fs
    assert acct.index is not None
    if new == INBOX or disk.exists(os.path.join(acct.path, folder_dir(new))):
        raise FolderExists(new)
    if old == INBOX:
        _rename_inbox(acct, store, new)
        return
    if not disk.exists(os.path.join(acct.path, folder_dir(old), "cur")):
        raise NoSuchFolder(old)
    if is_inside(new, old):
        raise InvalidFolderName(new, "a folder cannot move inside itself")
    names = [old] + sorted(n for n in folder_names(store, acct) if is_inside(n, old))
    pairs = [(name, new + name[len(old):]) for name in names]
    for _, renamed in pairs:
        if disk.exists(os.path.join(acct.path, folder_dir(renamed))):
            raise FolderExists(renamed)
    created = create_folders(store, acct, parent_names(new))
    done: list[tuple[str, str]] = []
    try:
        for name, renamed in pairs:
            source = os.path.join(acct.path, folder_dir(name))
            target = os.path.join(acct.path, folder_dir(renamed))
            fs.rename(source, target)
            done.append((source, target))
        fs.fsync_dir(acct.path)
        acct.index.rename_folders(pairs)
    except BaseException:
        if _undo_renames(fs, done):
            remove_folders(store, acct, created)
        raise
    for _, renamed in pairs:
        _forget_state(acct, renamed)
    for name, renamed in pairs:
        state = acct.folders.pop(name, None)
        if state is not None:
            state.rename(renamed)
            acct.folders[renamed] = state


def _rename_inbox(acct: _Account, store: MaildirStore, new: str) -> None:
    """RFC 3501 section 6.3.5: move INBOX's messages to a new folder;
    INBOX stays, empty, with its UIDVALIDITY and UIDNEXT."""
    fs = store.fs
    source = store.folder(acct, INBOX)
    source.ensure_loaded()
    created = create_folders(store, acct, [*parent_names(new), new])
    moved, rows = [], []
    done: list[tuple[str, str]] = []
    try:
        target = store.folder(acct, new)
        for uid in list(source.infos):
            subdir, letters, _ = source.place[uid]
            key = source.infos[uid].key
            origin = source.file_path(uid)
            path = os.path.join(target.path, subdir, file_name(key, letters))
            try:
                fs.rename(origin, path)
            except FileNotFoundError:
                continue
            done.append((origin, path))
            moved.append(uid)
            info = source.infos[uid]
            keywords = keywords_text(info.flags - SYSTEM_FLAGS.keys())
            rows.append(Row(0, key, subdir, letters, keywords, info.size, info.internal_date,
                            source.place[uid][2]))
        for state in (source, target):
            for sub in ("new", "cur"):
                fs.fsync_dir(os.path.join(state.path, sub))
        target.add_rows(rows)
        source.forget(moved)
    except BaseException:
        # Messages back in INBOX, and the new folder gone only if all came
        # back (never remove a folder that may hold a message).
        if _undo_renames(fs, done):
            remove_folders(store, acct, created)
        raise
    acct.touched.update((source, target))
