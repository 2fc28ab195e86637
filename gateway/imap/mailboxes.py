# -*- test-case-name: tests.test_imap_mailboxes -*-
"""
The mailbox commands of the authenticated state (RFC 3501 section 6.3):
SELECT, EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST,
LSUB (with CHILDREN and SPECIAL-USE attributes, RFC 3348 and 6154),
STATUS, APPEND (UIDPLUS APPENDUID), NAMESPACE and ENABLE; and UNSELECT,
CLOSE and CHECK, which leave or touch the selected mailbox.

Mailbox names cross the wire in modified UTF-7 (RFC 3501 section 5.1.3),
one spelling per name, and reach the store as text.  LIST shows a level
of hierarchy that is no folder (Maildir++ C{.a.b} without C{.a}) as
C{\\Noselect}, and LSUB with a trailing C{%} an unsubscribed parent of a
subscribed folder (RFC 3501 sections 6.3.8 and 6.3.9).
"""

from __future__ import annotations

import base64
import calendar
import datetime
import re
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Any

from gateway.imap.fetch import flags_list
from gateway.imap.mime import nstring
from gateway.imap.parser import ATOM_CHARS, Atom, String, Token
from gateway.imap.replies import Bad, No, store_refusal
from gateway.store.model import DELIMITER, FolderInfo, StoreError

SYSTEM_FLAGS = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"]
_STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN")
_DATE = re.compile(
    rb"([ 0-9]?[0-9])-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([-+])([0-9]{2})([0-9]{2})\Z")
_MONTHS = {m: i for i, m in enumerate(
    [b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN", b"JUL", b"AUG", b"SEP", b"OCT",
     b"NOV", b"DEC"], 1)}


# -- names --------------------------------------------------------------------

def decode_name(token: Token) -> str:
    """A mailbox argument (astring, modified UTF-7) as text.
    @raise Bad: not a string or not modified UTF-7."""
    if isinstance(token, list):
        raise Bad("mailbox name expected")
    text = bytes(token)
    out: list[str] = []
    i = 0
    try:
        while i < len(text):
            c = text[i]
            if not 0x20 <= c <= 0x7E:
                raise ValueError
            if c != 0x26:
                out.append(chr(c))
                i += 1
                continue
            end = text.index(b"-", i)
            if end == i + 1:
                out.append("&")
            else:
                b64 = text[i + 1:end].replace(b",", b"/")
                chunk = base64.b64decode(b64 + b"=" * (-len(b64) % 4),
                                         validate=True).decode("utf-16-be")
                if any(0x20 <= ord(char) <= 0x7E for char in chunk):
                    # RFC 3501 section 5.1.3: printable US-ASCII is never
                    # encoded; "&AC8-" would be a second spelling of "/".
                    raise ValueError
                out.append(chunk)
            i = end + 1
        name = "".join(out)
        if encode_name(name) != text:
            # One spelling per name: "/" is no modified BASE64 character
            # ("," replaces it), and adjacent runs or stray bits in the
            # last character would be second spellings, which LIST would
            # answer in another form than the client created.
            raise ValueError
    except ValueError:
        raise Bad("mailbox name is not modified UTF-7") from None
    if name.upper() == "INBOX":
        return "INBOX"
    return name


def encode_name(name: str) -> bytes:
    out: list[bytes] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            data = base64.b64encode("".join(run).encode("utf-16-be")).rstrip(b"=")
            out.append(b"&" + data.replace(b"/", b",") + b"-")
            run.clear()
    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append(b"&-" if char == "&" else char.encode())
        else:
            run.append(char)
    flush()
    return b"".join(out)


def quoted_name(name: str) -> bytes:
    return nstring(encode_name(name))


class ListPattern:
    """
    A LIST pattern (RFC 3501 section 6.3.8): C{*} matches anything, C{%}
    anything but the delimiter, every other character itself.

    Matched as a set of pattern positions kept in the bits of an integer,
    one step per character of the name: time linear in the name's length.
    The regular expression this replaces (C{.*[^/]*.*[^/]*...}) backtracked
    exponentially: C{LIST "" "*%*%*%*%*%*%x"} held the reactor (every
    connection of the gateway) for some 16 seconds per folder, one more
    C{*%} for minutes.
    """

    def __init__(self, pattern: str) -> None:
        # A run of wildcards matches what its widest member matches.
        chars: list[str] = []
        for c in pattern:
            if c in "*%" and chars and chars[-1] in "*%":
                if c == "*":
                    chars[-1] = "*"
                continue
            chars.append(c)
        self._star = self._percent = 0
        self._literal: dict[str, int] = {}
        for i, c in enumerate(chars):
            if c == "*":
                self._star |= 1 << i
            elif c == "%":
                self._percent |= 1 << i
            else:
                self._literal[c] = self._literal.get(c, 0) | 1 << i
        self._wild = self._star | self._percent
        self._end = 1 << len(chars)

    def _skip_wildcards(self, positions: int) -> int:
        # A wildcard may match nothing; no two wildcards are adjacent.
        return positions | (positions & self._wild) << 1

    def match(self, name: str) -> bool:
        positions = self._skip_wildcards(1)
        for c in name:
            positions = ((positions & self._literal.get(c, 0)) << 1
                         | positions & self._star
                         | (positions & self._percent if c != DELIMITER else 0))
            if not positions:
                return False
            positions = self._skip_wildcards(positions)
        return bool(positions & self._end)


def name_matcher(pattern: str) -> Callable[[str], bool]:
    """
    The test of a LIST or LSUB pattern against folder names.  Only the
    name INBOX is case-insensitive (RFC 3501 section 5.1): a pattern that
    starts with C{inbox} in any case matches INBOX and its children, and
    otherwise means what it says, so that C{inboxes} still finds the
    folder C{inboxes}.
    """
    plain = ListPattern(pattern)
    if pattern[:5].upper() != "INBOX" or pattern[:5] == "INBOX":
        return plain.match
    inbox = ListPattern("INBOX" + pattern[5:])

    def match(name: str) -> bool:
        if name == "INBOX" or name.startswith("INBOX" + DELIMITER):
            return inbox.match(name) or plain.match(name)
        return plain.match(name)
    return match


def missing_parents(names: Iterable[str]) -> list[str]:
    """The levels of hierarchy above C{names} that are not among them."""
    present = set(names)
    missing = set()
    for name in present:
        parts = name.split(DELIMITER)
        for i in range(1, len(parts)):
            parent = DELIMITER.join(parts[:i])
            if parent not in present:
                missing.add(parent)
    return sorted(missing)


def _listing_order(entry: tuple[str, Any]) -> tuple[bool, str]:
    """INBOX first, then by name (the store's order)."""
    return entry[0] != "INBOX", entry[0]


def parse_date_time(token: Token) -> float:
    """APPEND's date-time, C{"17-Jul-1996 02:44:25 -0700"}, as POSIX seconds."""
    match = _DATE.match(bytes(token)) if isinstance(token, String) else None
    month = _MONTHS.get(match.group(2).upper()) if match else None
    if match is None or month is None:
        raise Bad("invalid date-time")
    day, _, year, hh, mm, ss, sign, zh, zm = match.groups()
    if int(zh) > 23 or int(zm) > 59:  # hhmm east of Greenwich: +9999 is none
        raise Bad("invalid date-time")
    try:
        moment = datetime.datetime(int(year), month, int(day), int(hh), int(mm), int(ss))
        seconds = calendar.timegm(moment.timetuple())
    except (ValueError, OverflowError):
        raise Bad("invalid date-time") from None
    offset = (int(zh) * 60 + int(zm)) * 60
    return float(seconds - offset if sign == b"+" else seconds + offset)


_SYSTEM = {flag.lower(): flag for flag in SYSTEM_FLAGS}


def parse_flags(token: Token) -> list[str]:
    """
    The flags of STORE and APPEND (RFC 3501 section 9, C{flag-list}):
    system flags, in their usual spelling whatever the case sent, and
    keywords that are atoms, so that every FLAGS response stays valid.

    @raise Bad: a keyword that is no atom (C{a]b}, C{x*}, C{[a b]}) or is
        C{NIL}, a flag-extension we do not know (C{\\Foo}: a server must
        not make up such flags, section 9, C{flag-extension}), or
        C{\\Recent}.
    """
    items = token if isinstance(token, list) else [token]
    flags = []
    for item in items:
        if not isinstance(item, Atom):
            raise Bad("invalid flag")
        word = bytes(item)
        name = word[1:] if word.startswith(b"\\") else word
        if not name or not ATOM_CHARS.issuperset(name) or word.upper() == b"NIL":
            # NIL is an atom, but clients read it as no value (Dovecot: BAD).
            raise Bad("invalid flag")
        flag = word.decode("ascii")
        if word.startswith(b"\\"):
            if flag.lower() == "\\recent":
                raise Bad("\\Recent cannot be set")
            if flag.lower() not in _SYSTEM:
                raise Bad("invalid system flag")
            flag = _SYSTEM[flag.lower()]
        flags.append(flag)
    return flags


class MailboxCommands:
    """Mixed into L{gateway.imap.protocol.IMAPServer}."""

    store: Any
    account: str | None
    session: Any
    state: str
    untagged: Any

    async def _open(self, tag: bytes, args: list[Token], readonly: bool) -> str:
        if len(args) != 1:
            raise Bad("one mailbox name expected")
        name = decode_name(args[0])
        await self.close_session()
        try:
            session = await self.store.open_folder(self.account, name, readonly)
        except StoreError as e:
            raise No(store_refusal(e)) from None
        self.session = session
        self.state = "SELECTED"
        self.watch(session)
        messages = session.messages()
        # Messages share their few distinct flag sets: look at each set once
        # (a SELECT of 100,000 messages spent most of its time here).
        distinct = set(map(attrgetter("flags"), messages))
        keywords = sorted({f for flags in distinct for f in flags if f not in SYSTEM_FLAGS})
        flags = flags_list(set(SYSTEM_FLAGS) | set(keywords), False)
        self.untagged(b"FLAGS " + flags)
        if readonly:
            self.untagged(b"OK [PERMANENTFLAGS ()] read-only mailbox")
        else:
            permanent = flags[:-1] + b" \\*)"
            self.untagged(b"OK [PERMANENTFLAGS " + permanent + b"] flags permitted")
        self.untagged(f"{len(messages)} EXISTS")
        self.untagged(f"{len(session.recent)} RECENT")
        for seq, info in enumerate(messages, 1):
            if "\\Seen" not in info.flags:
                self.untagged(f"OK [UNSEEN {seq}] first unseen message")
                break
        self.untagged(f"OK [UIDVALIDITY {session.uidvalidity}] UIDs valid")
        self.untagged(f"OK [UIDNEXT {session.uidnext()}] predicted next UID")
        if readonly:
            return "[READ-ONLY] EXAMINE completed"
        return "[READ-WRITE] SELECT completed"

    async def cmd_SELECT(self, tag: bytes, args: list[Token]) -> str:
        return await self._open(tag, args, False)

    async def cmd_EXAMINE(self, tag: bytes, args: list[Token]) -> str:
        return await self._open(tag, args, True)

    async def _store_call(self, call: Any, *args: Any) -> None:
        try:
            await call(self.account, *args)
        except StoreError as e:
            raise No(store_refusal(e)) from None

    async def cmd_CREATE(self, tag: bytes, args: list[Token]) -> str:
        if len(args) != 1:
            raise Bad("one mailbox name expected")
        name = decode_name(args[0])
        if name.endswith(DELIMITER):
            # RFC 3501 section 6.3.3: one trailing delimiter declares the
            # intent to create children; "a//" keeps an empty level, which
            # the store refuses as it refuses "a//b".
            name = name[:-1]
        if name == "INBOX":
            raise No("[ALREADYEXISTS] INBOX always exists")
        await self._store_call(self.store.create_folder, name)
        return "CREATE completed"

    async def cmd_DELETE(self, tag: bytes, args: list[Token]) -> str:
        if len(args) != 1:
            raise Bad("one mailbox name expected")
        name = decode_name(args[0])
        if name == "INBOX":
            raise No("[CANNOT] INBOX cannot be deleted")
        await self._store_call(self.store.delete_folder, name)
        return "DELETE completed"

    async def cmd_RENAME(self, tag: bytes, args: list[Token]) -> str:
        if len(args) != 2:
            raise Bad("two mailbox names expected")
        old, new = decode_name(args[0]), decode_name(args[1])
        if new == "INBOX":
            raise No("[ALREADYEXISTS] INBOX always exists")
        await self._store_call(self.store.rename_folder, old, new)
        return "RENAME completed"

    async def cmd_SUBSCRIBE(self, tag: bytes, args: list[Token]) -> str:
        if len(args) != 1:
            raise Bad("one mailbox name expected")
        await self._store_call(self.store.subscribe, decode_name(args[0]), True)
        return "SUBSCRIBE completed"

    async def cmd_UNSUBSCRIBE(self, tag: bytes, args: list[Token]) -> str:
        if len(args) != 1:
            raise Bad("one mailbox name expected")
        await self._store_call(self.store.subscribe, decode_name(args[0]), False)
        return "UNSUBSCRIBE completed"

    async def _list(self, args: list[Token], verb: str) -> tuple[str, list[FolderInfo]]:
        """The pattern (reference and mailbox joined) and the account's
        folders; for an empty pattern, the root's delimiter is answered at
        once and the pattern returned is empty."""
        if len(args) != 2 or any(isinstance(a, list) for a in args):
            raise Bad(f"{verb} needs a reference and a mailbox pattern")
        reference = decode_name(args[0]) if args[0] else ""
        pattern = bytes(args[1]).decode("ascii", "replace")
        if not pattern:
            # RFC 3501 section 6.3.8: the delimiter and the root name.
            self.untagged(f'{verb} (\\Noselect) "{DELIMITER}" ""')
            return "", []
        full = reference + decode_name(args[1])
        try:
            folders = await self.store.folders(self.account)
        except StoreError as e:
            raise No(store_refusal(e)) from None
        return full, folders

    async def cmd_LIST(self, tag: bytes, args: list[Token]) -> str:
        full, folders = await self._list(args, "LIST")
        if not full:
            return "LIST completed"
        match = name_matcher(full)
        entries = [(f.name, ["\\HasChildren" if f.has_children else "\\HasNoChildren"]
                    + ([f.special_use] if f.special_use else [])) for f in folders]
        # RFC 3501 section 6.3.8: a level of hierarchy that is no mailbox
        # (Maildir++ ".a.b" without ".a", made by another program) is
        # listed with \Noselect, or a client cannot reach its children.
        entries += [(name, ["\\Noselect", "\\HasChildren"])
                    for name in missing_parents(f.name for f in folders)]
        for name, attributes in sorted(entries, key=_listing_order):
            if match(name):
                self.untagged(f'LIST ({" ".join(attributes)}) "{DELIMITER}" '.encode()
                              + quoted_name(name))
        return "LIST completed"

    async def cmd_LSUB(self, tag: bytes, args: list[Token]) -> str:
        full, folders = await self._list(args, "LSUB")
        if not full:
            return "LSUB completed"
        match = name_matcher(full)
        subscribed = [f.name for f in folders if f.subscribed]
        entries = [(name, "") for name in subscribed]
        if full.endswith("%"):
            # RFC 3501 section 6.3.9: "foo/bar" subscribed and "foo" not,
            # a "%" wildcard MUST return "foo", flagged \Noselect.
            entries += [(name, "\\Noselect") for name in missing_parents(subscribed)]
        for name, attributes in sorted(entries, key=_listing_order):
            if match(name):
                self.untagged(f'LSUB ({attributes}) "{DELIMITER}" '.encode() + quoted_name(name))
        return "LSUB completed"

    async def cmd_STATUS(self, tag: bytes, args: list[Token]) -> str:
        if len(args) != 2 or not isinstance(args[1], list) or not args[1]:
            raise Bad("STATUS needs a mailbox name and a list of items")
        name = decode_name(args[0])
        items = []
        for item in args[1]:
            word = bytes(item).upper().decode("ascii", "replace") if not isinstance(
                item, list) else ""
            if word not in _STATUS_ITEMS:
                raise Bad("unknown STATUS item")
            items.append(word)
        try:
            status = await self.store.status(self.account, name)
        except StoreError as e:
            raise No(store_refusal(e)) from None
        values = " ".join(f"{item} {getattr(status, item.lower())}" for item in items)
        self.untagged(b"STATUS " + quoted_name(name) + f" ({values})".encode())
        return "STATUS completed"

    async def cmd_APPEND(self, tag: bytes, args: list[Token]) -> str:
        if len(args) < 2 or len(args) > 4 or not isinstance(args[-1], String):
            raise Bad("APPEND needs a mailbox name and a message literal")
        name = decode_name(args[0])
        flags: list[str] = []
        date = None
        for extra in args[1:-1]:
            if isinstance(extra, list) and not flags and date is None:
                flags = parse_flags(extra)
            elif isinstance(extra, String) and date is None:
                date = parse_date_time(extra)
            else:
                raise Bad("invalid APPEND arguments")
        message = bytes(args[-1])
        if not message:
            raise No("empty message")
        try:
            # Read-only: a read-write session would take the \Recent of the
            # folder's new messages from the session that selects it next
            # (RFC 3501 section 2.3.2), and move them to cur/.
            session = await self.store.open_folder(self.account, name, True)
        except StoreError as e:
            raise No(store_refusal(e, trycreate=True)) from None
        try:
            uid = await session.append(message, flags, date)
        except StoreError as e:
            # (deleted by another session meanwhile: TRYCREATE still)
            raise No(store_refusal(e, trycreate=True)) from None
        finally:
            await session.close()
        return f"[APPENDUID {session.uidvalidity} {uid}] APPEND completed"

    def cmd_NAMESPACE(self, tag: bytes, args: list[Token]) -> str:
        if args:
            raise Bad("NAMESPACE takes no arguments")
        self.untagged(f'NAMESPACE (("" "{DELIMITER}")) NIL NIL')
        return "NAMESPACE completed"

    def cmd_ENABLE(self, tag: bytes, args: list[Token]) -> str:
        # RFC 5161: no capability we offer needs enabling.
        if not args or any(not isinstance(a, Atom) for a in args):
            raise Bad("ENABLE needs capability names")
        self.untagged("ENABLED")
        return "ENABLE completed"

    async def cmd_UNSELECT(self, tag: bytes, args: list[Token]) -> str:
        if args:
            raise Bad("UNSELECT takes no arguments")
        await self.close_session()
        return "UNSELECT completed"

    async def cmd_CLOSE(self, tag: bytes, args: list[Token]) -> str:
        if args:
            raise Bad("CLOSE takes no arguments")
        session = self.session
        if not session.readonly:
            # RFC 3501 section 6.4.2: expunge silently.
            try:
                await session.expunge()
            except StoreError:
                pass
        await self.close_session()
        return "CLOSE completed"

    def cmd_CHECK(self, tag: bytes, args: list[Token]) -> str:
        if args:
            raise Bad("CHECK takes no arguments")
        return "CHECK completed"

    # Provided by the protocol.
    async def close_session(self) -> None:
        raise NotImplementedError

    def watch(self, session: Any) -> None:
        raise NotImplementedError
