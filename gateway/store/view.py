# -*- test-case-name: tests.test_store_contract,tests.test_store_rollback -*-
"""
What a folder's sessions share, and each session's view of it, kept in
memory.  Both stores use these (L{gateway.store.maildir} through its
L{gateway.store.folder.FolderState}, L{gateway.store.memory} directly), so
the session semantics of the contract are written once:

  - a session's view (hence IMAP sequence numbers) changes only at
    L{View.sync}, including for the session's own appends and expunges;
    its own flag changes update its view at once and are not reported
    again;
  - the folder keeps a change log (the UIDs it added, changed or removed,
    in order); a view remembers how far it has read, so a sync costs the
    number of changes, not the size of the folder; the log is trimmed to
    what the slowest view has not read;
  - \\Recent (RFC 3501 section 2.3.2): the folder remembers the highest UID
    already given as recent; the first read-write session to see a newer
    message gets it, read-only (EXAMINE) sessions see it recent without
    taking it away from others;
  - a store whose call can still fail after the view changed (the Maildir
    store's index commit, L{gateway.store.session}) takes a
    L{View.checkpoint} first and calls it if the call fails: the client
    was told nothing, so the view (and the \\Recent it claimed) must be
    as the client knows it, and the next sync reports the changes again.
    Such a store syncs with C{trim=False} and trims the log once the call
    succeeded, since the log must still hold what a restored view has not
    read.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from weakref import WeakSet

from gateway.store.model import Changes, MessageInfo


class FolderModel:
    """
    One folder in memory: its messages in UID order and its change log.

    @ivar infos: UID -> L{MessageInfo}, in UID order.
    @ivar gone: the folder was deleted (its sessions see everything expunged).
    """

    def __init__(self, name: str, uidvalidity: int, uidnext: int, recent_uid: int) -> None:
        self.name = name
        self.uidvalidity = uidvalidity
        self.uidnext = uidnext
        self.recent_uid = recent_uid
        self.infos: dict[int, MessageInfo] = {}
        self.gone = False
        self._log: list[int] = []
        self._base = 0
        # Weak: a session that is dropped without close() must not pin the log.
        self._views: WeakSet[View] = WeakSet()
        self._snapshot: tuple[tuple[int, int], list[MessageInfo], list[int]] | None = None

    @property
    def version(self) -> int:
        return self._base + len(self._log)

    def put(self, info: MessageInfo) -> None:
        """Add a message or replace its info (its flags changed)."""
        self.infos[info.uid] = info
        self._logged(info.uid)

    def drop(self, uid: int) -> None:
        if self.infos.pop(uid, None) is not None:
            self._logged(uid)

    def _logged(self, uid: int) -> None:
        if self._views:
            self._log.append(uid)
        else:  # nobody will read it: count the change, keep nothing
            self._base += len(self._log) + 1
            self._log.clear()

    def since(self, version: int) -> list[int]:
        return self._log[version - self._base:]

    def has_views(self) -> bool:
        return bool(self._views)

    def attach(self, view: View) -> None:
        self._views.add(view)

    def detach(self, view: View) -> None:
        self._views.discard(view)
        self.trim()

    def snapshot(self) -> tuple[list[MessageInfo], list[int]]:
        """
        The messages in UID order and their UIDs, shared by every view that
        opens while the folder does not change: a view never changes these
        lists in place (it replaces them), so a SELECT of a big folder
        copies nothing, and sessions on it share one list.  Kept while the
        folder is (16 bytes a message, next to the few hundred of its
        L{MessageInfo}), for the next SELECT.
        """
        key = (self.version, len(self.infos))  # (a first load changes no version)
        if self._snapshot is None or self._snapshot[0] != key:
            self._snapshot = (key, list(self.infos.values()), list(self.infos))
        return self._snapshot[1], self._snapshot[2]

    def trim(self) -> None:
        low = min((v.version for v in self._views), default=self.version)
        if low > self._base:
            del self._log[:low - self._base]
            self._base = low

    def claim_recent(self, uids: list[int], readonly: bool) -> set[int]:
        """The UIDs among C{uids} (in ascending order) that are recent for
        a session; a read-write session takes them (the caller persists
        C{recent_uid})."""
        fresh = uids[bisect_right(uids, self.recent_uid):]
        if fresh and not readonly:
            self.recent_uid = fresh[-1]
        return set(fresh)


class View:
    """One session's view of a L{FolderModel} (see the module docstring)."""

    def __init__(self, folder: FolderModel, readonly: bool) -> None:
        self.readonly = readonly
        self.uidvalidity = folder.uidvalidity
        self.version = folder.version
        # Shared with the folder's other views until one of them changes
        # (see FolderModel.snapshot): replaced, never changed in place.
        self.messages, self._uids = folder.snapshot()
        self.uidnext = folder.uidnext
        self.recent = frozenset(folder.claim_recent(self._uids, readonly))
        folder.attach(self)

    def find(self, uid: int) -> int | None:
        """The index of C{uid} in the view, or C{None}."""
        i = bisect_left(self._uids, uid)
        return i if i < len(self._uids) and self._uids[i] == uid else None

    def checkpoint(self, folder: FolderModel) -> Callable[[], None]:
        """
        A function that puts this view, and the \\Recent that C{folder}
        gave, back as they are now (for a call that fails after L{sync} or
        L{update}).  Cheap: the view's lists are replaced, never changed in
        place, so keeping references keeps them as they are.
        """
        fields = self.version, self.uidnext, self.messages, self._uids, self.recent
        recent_uid = folder.recent_uid

        def restore() -> None:
            self.version, self.uidnext, self.messages, self._uids, self.recent = fields
            folder.recent_uid = recent_uid
        return restore

    def sync(self, folder: FolderModel, trim: bool = True) -> Changes:
        """Take the folder's changes since the last sync into the view.
        @param trim: trim the folder's change log after (see the module
            docstring for when not to)."""
        uids = sorted(set(folder.since(self.version)))
        self.version = folder.version
        self.uidnext = max(self.uidnext, folder.uidnext)
        added: list[MessageInfo] = []
        expunged: list[int] = []
        flags: list[MessageInfo] = []
        for uid in uids:
            now = folder.infos.get(uid)
            i = self.find(uid)
            if i is None:
                if now is not None:
                    added.append(now)
            elif now is None:
                expunged.append(uid)
            elif now != self.messages[i]:
                flags.append(now)
        if added or expunged or flags:
            gone = set(expunged)
            changed = {m.uid: m for m in flags}
            messages = [changed.get(m.uid, m) for m in self.messages if m.uid not in gone]
            if added and messages and added[0].uid < messages[-1].uid:
                messages = sorted(messages + added, key=lambda m: m.uid)
            else:
                messages += added
            self.messages = messages
            self._uids = [m.uid for m in messages]
            fresh = folder.claim_recent([m.uid for m in added], self.readonly)
            self.recent = frozenset((self.recent - gone) | fresh)
        if trim:
            folder.trim()
        return Changes(tuple(added), tuple(expunged), tuple(flags))

    def update(self, infos: Iterable[MessageInfo]) -> None:
        """Take the session's own flag changes into the view at once."""
        messages = None
        for info in infos:
            i = self.find(info.uid)
            if i is not None:
                if messages is None:
                    messages = list(self.messages)
                messages[i] = info
        if messages is not None:
            self.messages = messages
