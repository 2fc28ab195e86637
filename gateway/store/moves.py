# -*- test-case-name: tests.test_store_contract -*-
"""
COPY and MOVE of messages between folders of one account.  A thread
function, run by the store with the account lock held and inside one index
transaction, so no session sees half of one (sessions only see what a
committed transaction left).

COPY hard-links each file under a new key into the destination's C{cur/}
(keeping its flags; a copy only where a link is refused), MOVE renames it;
then the destination directory (and for MOVE the source's) is fsynced
before the new UIDs are indexed.  If a step fails (the indexing
included), the links or renames already made are undone, so a failed COPY
or MOVE leaves both folders as they were.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from gateway.store.folder import FolderState
from gateway.store.index import Row
from gateway.store.model import (
    SYSTEM_FLAGS,
    Quota,
    QuotaExceeded,
)
from gateway.store.names import (
    file_name,
    keywords_text,
    size_fields,
)

if TYPE_CHECKING:
    from gateway.store.maildir import MaildirStore, _Account


def _row(state: FolderState, uid: int, key: str, subdir: str, info: str | None) -> Row:
    message, lf = state.infos[uid], state.place[uid][2]
    keywords = keywords_text(message.flags - SYSTEM_FLAGS.keys())
    return Row(0, key, subdir, info, keywords, message.size, message.internal_date, lf)


def transfer(store: MaildirStore, acct: _Account, source: FolderState, uids: list[int],
             destination: str, move: bool, quota: Quota) -> dict[int, int]:
    """COPY or MOVE.  @return: C{{source uid: destination uid}}."""
    target = store.folder(acct, destination)
    source.ensure_loaded()
    wanted = [uid for uid in sorted(set(uids)) if uid in source.infos]
    if not move and acct.index is not None:
        count, total = acct.index.usage()
        size = sum(source.infos[uid].size for uid in wanted)
        if (quota.max_messages is not None and count + acct.pending[0] + len(wanted)
                > quota.max_messages) or (quota.max_bytes is not None and total
                                          + acct.pending[1] + size > quota.max_bytes):
            raise QuotaExceeded(acct.name)
    fs = store.fs
    done: list[tuple[int, str, str]] = []  # (uid, where it was, where it went)
    rows: list[Row] = []
    try:
        for uid in wanted:
            letters = source.place[uid][1] or ""
            info = source.infos[uid]
            key = store._unique(None) + size_fields(info.key, info.size)
            origin = source.file_path(uid)
            path = os.path.join(target.path, "cur", file_name(key, letters))
            try:
                if move:
                    fs.rename(origin, path)
                else:
                    failed = store.disk.link_or_copy(origin, path)
                    if failed is not None:
                        raise failed
            except FileNotFoundError:
                continue  # expunged behind our back: nothing to copy
            done.append((uid, origin, path))
            rows.append(_row(source, uid, key, "cur", letters))
        if done:
            fs.fsync_dir(os.path.join(target.path, "cur"))
            if move:
                for sub in ("new", "cur"):
                    fs.fsync_dir(os.path.join(source.path, sub))
        # Inside the try: if indexing fails, the index is rolled back, and
        # files left in the target would show up there at its next listing
        # (a COPY answered NO made anyway, a MOVE's messages gone from the
        # source with their keywords lost).
        new_uids = target.add_rows(rows)
        if move:
            source.forget([uid for uid, _, _ in done])
    except BaseException:
        for _, origin, path in done:  # undo, best effort
            try:
                if move:
                    fs.rename(path, origin)
                else:
                    fs.unlink(path)
            except OSError:
                pass
        raise
    acct.touched.update((source, target))
    return {uid: new for (uid, _, _), new in zip(done, new_uids)}
