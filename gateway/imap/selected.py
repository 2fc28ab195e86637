# -*- test-case-name: tests.test_imap_selected,tests.test_imap_selected_review -*-
"""
The commands of the selected state that read or change messages (RFC 3501
section 6.4): FETCH, STORE, COPY, EXPUNGE and their UID forms, MOVE (RFC
6851) and UID EXPUNGE / COPYUID (RFC 4315 UIDPLUS).

Message files are opened one at a time, and only when an item needs the
message itself (L{gateway.imap.fetch.needs_body}).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from itertools import islice
from operator import attrgetter
from typing import IO, Any

from gateway.imap import fetch
from gateway.imap.mailboxes import decode_name, parse_flags
from gateway.imap.parser import Atom, Token, format_set, parse_sequence_set, resolve
from gateway.imap.replies import Bad, BadSequence, No, store_refusal
from gateway.store.model import MessageInfo, NoSuchMessage, StoreError

_STORE_MODES = {b"FLAGS": "replace", b"+FLAGS": "add", b"-FLAGS": "remove"}


_UID = attrgetter("uid")


def _walk(messages: list[MessageInfo],
          spans: list[tuple[int, int]]) -> Iterator[tuple[int, MessageInfo]]:
    """The messages of the index spans C{[start, end)}, merged, in order."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for start, end in merged:
        yield from zip(range(start + 1, end + 1), islice(messages, start, end))


class SelectedCommands:
    """Mixed into L{gateway.imap.protocol.IMAPServer}."""

    store: Any
    account: str | None
    session: Any
    transport: Any
    context: Any
    untagged: Any
    log: Any

    def messages_for(self, token: Token, uid: bool) -> Iterator[tuple[int, MessageInfo]]:
        """
        The C{(sequence number, info)} of the messages a set names, in
        order, each once, produced as they are consumed: a FETCH 1:* of
        100,000 messages builds no set or list of them.  The set is checked
        at once.

        @raise Bad: a malformed set.
        @raise BadSequence: a sequence number that does not exist, C{*}
            in an empty mailbox included (RFC 3501 and RFC 9051 section 9,
            C{seq-number}; Dovecot answers the same).  UIDs that do not
            exist are ignored (RFC 3501 section 6.4.8, RFC 9051 section
            6.4.9): a UID command on an empty mailbox succeeds, doing
            nothing.
        """
        ranges = parse_sequence_set(token)  # type: ignore[arg-type]
        messages = self.session.messages()  # replaced by a sync, never changed
        if not messages:
            if uid:
                return iter(())
            raise BadSequence("invalid message sequence number: the mailbox is empty")
        spans = []
        if uid:
            for lo, hi in resolve(ranges, messages[-1].uid):
                spans.append((bisect_left(messages, lo, key=_UID),
                               bisect_right(messages, hi, key=_UID)))
        else:
            for lo, hi in resolve(ranges, len(messages)):
                if hi > len(messages):
                    raise BadSequence("invalid message sequence number: the last "
                                      f"message is {len(messages)}")
                spans.append((lo - 1, hi))
        return _walk(messages, spans)

    def _writable(self) -> None:
        if self.session.readonly:
            raise No("[READ-ONLY] the mailbox is selected read-only")

    # FETCH

    async def cmd_FETCH(self, tag: bytes, args: list[Token], uid: bool = False) -> str | None:
        """
        @return: the text of the tagged OK, with C{[EXPUNGEISSUED]} if
            messages of the view were gone from the store when read (RFC
            5530; RFC 2180 section 4.1: the client must not take the
            missing responses for empty data); C{None} if the connection
            is closing, when the response stopped short: no tagged OK then
            for a FETCH that did not finish.
        """
        if len(args) != 2:
            raise Bad("FETCH needs a sequence set and data items")
        items = fetch.parse_items(args[1])
        targets = self.messages_for(args[0], uid)
        session = self.session
        body = fetch.needs_body(items)
        stream = body and fetch.streamable(items)
        seen = fetch.sets_seen(items) and not session.readonly
        with_flags = items if any(i.name == b"FLAGS" for i in items) else [
            *items, fetch.Item(b"FLAGS")]
        # One message at a time, and none while the client is not reading
        # (fetch.Backpressure): never the whole folder in memory.
        expunged = False
        with fetch.Backpressure(self.transport, self.context.clock) as pressure:
            for seq, info in targets:
                if not await pressure.ready():
                    return None  # the connection is closing
                data = source = None
                if body:
                    try:
                        if stream and info.size > fetch.STREAM_SIZE:
                            source = await session.open_message(info.uid)
                        else:
                            data = await session.read_message(info.uid)  # read in a thread
                    except NoSuchMessage:
                        expunged = True  # by another session meanwhile
                        continue
                    if pressure.closing:
                        # Lost while the file was read: its session is
                        # closed, and setting \Seen would fail (logged as
                        # a server bug) for a client that is gone.
                        if source is not None:
                            source.close()
                        return None
                try:
                    wanted = items
                    if seen and "\\Seen" not in info.flags:
                        updated = await session.set_flags([info.uid], ["\\Seen"], "add")
                        if updated and updated[0].flags != info.flags:
                            # The FLAGS item only when they changed (RFC
                            # 3501 section 6.4.5); a message expunged
                            # meanwhile comes back with none.
                            info = updated[0]
                            wanted = with_flags
                    pieces = fetch.render_pieces(
                        info, wanted, info.uid in session.recent, uid, data,
                        None if source is None else source.seek(0, 2))
                    if not await self._write_fetch(seq, pieces, pressure, source):
                        return None
                finally:
                    if source is not None:
                        source.close()
        done = "UID FETCH completed" if uid else "FETCH completed"
        if expunged:
            return "[EXPUNGEISSUED] some messages were expunged meanwhile; " + done
        return done

    async def _write_fetch(self, seq: int, pieces: Iterator[bytes | fetch.Span],
                           pressure: fetch.Backpressure, source: IO[bytes] | None = None) -> bool:
        """
        Write one FETCH response, waiting for the client to read after each
        L{fetch.FLUSH_SIZE} octets: C{FETCH 1 (BODY.PEEK[] BODY.PEEK[] ...)}
        may name a large message hundreds of times in one line.  A
        L{fetch.Span} is copied from C{source}, the message's file.

        @return: C{False} if the connection is closing.
        """
        out = [b"* %d FETCH " % seq]
        size = 0
        for piece in pieces:
            if isinstance(piece, fetch.Span):
                assert source is not None
                self.transport.write(b"".join(out))
                out, size = [], 0
                if not await self._copy(source, piece, pressure):
                    return False
                continue
            out.append(piece)
            size += len(piece)
            if size >= fetch.FLUSH_SIZE:
                self.transport.write(b"".join(out))
                out, size = [], 0
                if not await pressure.ready():
                    return False
        out.append(b"\r\n")
        self.transport.write(b"".join(out))
        return True

    async def _copy(self, source: IO[bytes], span: fetch.Span,
                    pressure: fetch.Backpressure) -> bool:
        """
        Copy C{span} of C{source} to the client, a L{fetch.FLUSH_SIZE}
        piece per worker call (inline without one), each once the client
        has read the one before.  A file shorter than the literal announced
        (cut by another program meanwhile) leaves no way to finish the
        response, nor after a read that fails: the connection is closed.

        @return: C{False} if the connection is closing.
        """
        run = self.context.extras.get("run_in_thread")

        def read(origin: int, count: int) -> bytes:
            source.seek(origin)
            return source.read(count)

        origin, end = span.origin, span.origin + span.count
        while origin < end:
            count = min(fetch.FLUSH_SIZE, end - origin)
            try:
                chunk = read(origin, count) if run is None else await run(read, origin, count)
            except OSError as e:
                chunk, why = b"", str(e)
            else:
                why = "the file is shorter than its literal"
            if not chunk:
                self.log.error("{listener}: FETCH stopped {missing} octets before the end of "
                               "a literal ({why}); closing the connection",
                               listener=self.context.listener.name, missing=end - origin, why=why)
                self.transport.abortConnection()
                return False
            self.transport.write(fetch.octets(chunk))
            origin += len(chunk)
            if not await pressure.ready():
                return False
        return True

    # STORE

    async def cmd_STORE(self, tag: bytes, args: list[Token], uid: bool = False) -> str:
        if len(args) < 3 or not isinstance(args[1], Atom):
            raise Bad("STORE needs a sequence set, a data item and flags")
        item = args[1].upper()
        silent = item.endswith(b".SILENT")
        mode = _STORE_MODES.get(item[:-7] if silent else item)
        if mode is None:
            raise Bad("invalid STORE data item")
        flags = parse_flags(args[2] if len(args) == 3 else args[2:])  # type: ignore[arg-type]
        targets = self.messages_for(args[0], uid)
        self._writable()
        session = self.session
        seqs: dict[int, int] = {}
        before: dict[int, frozenset[str]] = {}
        for seq, info in targets:
            seqs[info.uid] = seq
            before[info.uid] = info.flags
        try:
            updated = await session.set_flags(list(seqs), flags, mode)
        except StoreError as e:
            raise No(store_refusal(e)) from None
        given = frozenset(flags)
        for info in updated:
            if info.uid not in seqs:
                continue
            if silent:
                # RFC 3501 section 6.4.6: even with .SILENT, a change made
                # by another session is reported.  The store hands back the
                # message's flags, others' changes included, and the view
                # takes them: unless told now, the client never learns them.
                old = before[info.uid]
                if info.flags == {"replace": given, "add": old | given,
                                  "remove": old - given}[mode]:
                    continue
            text = b"FLAGS " + fetch.flags_list(info.flags, info.uid in session.recent)
            if uid:
                text = b"UID %d " % info.uid + text
            self.untagged(b"%d FETCH (" % seqs[info.uid] + text + b")")
        return "UID STORE completed" if uid else "STORE completed"

    # COPY, MOVE

    async def _transfer(self, args: list[Token], uid: bool, move: bool) -> str:
        verb = ("UID " if uid else "") + ("MOVE" if move else "COPY")
        if len(args) != 2:
            raise Bad(f"{verb} needs a sequence set and a mailbox name")
        targets = self.messages_for(args[0], uid)
        destination = decode_name(args[1])
        if move:
            self._writable()
        uids = [info.uid for _, info in targets]
        try:
            if move:
                mapping = await self.session.move(uids, destination)
            else:
                mapping = await self.session.copy(uids, destination)
            status = await self.store.status(self.account, destination)
        except StoreError as e:
            raise No(store_refusal(e, trycreate=True)) from None
        if not mapping:
            return f"{verb} completed"
        source = sorted(mapping)
        code = (f"[COPYUID {status.uidvalidity} {format_set(source)} "
                f"{format_set([mapping[s] for s in source])}]")
        if move:
            # RFC 6851 section 4.3: COPYUID in an untagged OK, before the
            # EXPUNGE responses.
            self.untagged(f"OK {code} moved")
            return f"{verb} completed"
        return f"{code} {verb} completed"

    async def cmd_COPY(self, tag: bytes, args: list[Token], uid: bool = False) -> str:
        return await self._transfer(args, uid, False)

    async def cmd_MOVE(self, tag: bytes, args: list[Token], uid: bool = False) -> str:
        return await self._transfer(args, uid, True)

    # EXPUNGE

    async def cmd_EXPUNGE(self, tag: bytes, args: list[Token], uid: bool = False) -> str:
        if uid:
            if len(args) != 1:
                raise Bad("UID EXPUNGE needs a UID set")
            uids = [info.uid for _, info in self.messages_for(args[0], True)]
        elif args:
            raise Bad("EXPUNGE takes no arguments")
        self._writable()
        try:
            await self.session.expunge(uids if uid else None)
        except StoreError as e:
            raise No(store_refusal(e)) from None
        # The EXPUNGE responses come from the sync after the command.
        return "UID EXPUNGE completed" if uid else "EXPUNGE completed"

    # UID

    def cmd_UID(self, tag: bytes, args: list[Token]) -> Any:
        if not args or not isinstance(args[0], Atom):
            raise Bad("UID needs a command")
        sub = args[0].upper()
        handler = {b"FETCH": self.cmd_FETCH, b"STORE": self.cmd_STORE,
                   b"COPY": self.cmd_COPY, b"MOVE": self.cmd_MOVE,
                   b"EXPUNGE": self.cmd_EXPUNGE,
                   b"SEARCH": getattr(self, "cmd_SEARCH", None)}.get(sub)
        if handler is None:
            raise Bad("unknown UID command")
        return handler(tag, args[1:], uid=True)
