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
    from gateway.store.maildir import MaildirStore, _Account


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


def create_folders(store: MaildirStore, acct: _Account, names: list[str]) -> None:
    """Create those of C{names} that do not exist, in order."""
    assert acct.index is not None
    for name in names:
        path = os.path.join(acct.path, folder_dir(name))
        if name == INBOX or store.disk.exists(path):
            continue
        staging = os.path.join(acct.path, "..creating-" + secrets.token_hex(8))
        store.disk.make_maildir(staging, folder=True)
        store.fs.rename(staging, path)
        acct.index.drop_folder(name)  # a row left by a folder removed behind our back
        _forget_state(acct, name)
    store.fs.fsync_dir(acct.path)


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
    store.fs.fsync_dir(acct.path)
    acct.index.drop_folder(name)
    _forget_state(acct, name)
    store.fs.rmtree(trash)


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
    create_folders(store, acct, parent_names(new))
    for name, renamed in pairs:
        fs.rename(os.path.join(acct.path, folder_dir(name)),
                  os.path.join(acct.path, folder_dir(renamed)))
    fs.fsync_dir(acct.path)
    acct.index.rename_folders(pairs)
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
    create_folders(store, acct, [*parent_names(new), new])
    target = store.folder(acct, new)
    moved, rows = [], []
    for uid in list(source.infos):
        subdir, letters, _ = source.place[uid]
        key = source.infos[uid].key
        try:
            fs.rename(source.file_path(uid),
                      os.path.join(target.path, subdir, file_name(key, letters)))
        except FileNotFoundError:
            continue
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
    acct.touched.update((source, target))
