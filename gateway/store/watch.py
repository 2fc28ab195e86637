# -*- test-case-name: tests.test_store_idle,tests.test_store_poll_review -*-
"""
The worker-thread halves of the store's poll (L{MaildirStore._poll}): find
the accounts where something moved since their last transaction
(L{changed_accounts}, without the accounts' locks), and close the index of
an idle account (L{close_index}, in its lock).
"""

from __future__ import annotations

import os
from typing import Any

from gateway.store.index import stamp


def changed_accounts(fs: Any, watched: list[tuple[Any, list[Any]]]) -> list[Any]:
    """
    (thread, without the accounts' locks) The accounts where something
    moved since their last transaction: a C{new/} or C{cur/} mtime of a
    folder with sessions differs from the one its last listing recorded
    (or none was: see L{gateway.store.folder}), or the index files differ
    from their stamp.  Reads what the locked calls write: a value read
    half-way through one of them makes a needless look, never a missed one,
    since that call ends by recording what it saw.

    @param watched: C{(account, its folder states with sessions)} pairs.
    """
    moved = []
    stat = fs.stat
    new, cur = os.sep + "new", os.sep + "cur"  # (the hot loop of an idle process)
    for acct, states in watched:
        try:
            if acct.index is not None and stamp(acct.index.path) != acct.stamp:
                moved.append(acct)
                continue
            for state in states:
                if state.gone:
                    continue  # its sessions were told; nothing to look at
                path, row = state.path, state.row
                if (stat(path + new).st_mtime_ns != row.new_mtime
                        or stat(path + cur).st_mtime_ns != row.cur_mtime):
                    moved.append(acct)
                    break
        except OSError:  # a folder vanished: the locked look says so
            moved.append(acct)
    return moved


def close_index(acct: Any) -> None:
    """(thread, in the account's lock) Close an idle account's index and
    drop its folders that have no session (shrinking those that have)."""
    index = acct.index
    if index is None or index.suspended:
        return
    for name, state in list(acct.folders.items()):
        if state.has_views():
            state.shrink()
        else:
            del acct.folders[name]
    # A change another process committed since our last transaction is not
    # in our caches: leave the stamp unknown, so that the next look reopens
    # the index and reports it.
    unseen = index.suspend()
    acct.stamp = None if unseen else stamp(index.path)
