# -*- test-case-name: tests.test_store_names -*-
"""
Names on disk: account directories, Maildir++ folder directories, message
file names and the flags in them.  Pure functions, no I/O.

Accounts live in C{<root>/<domain>/<local>/}, a Maildir (INBOX) whose
sub-folders are Maildir++ directories C{.<name>} with C{"."} as the on-disk
hierarchy separator (C{"Lists/Twisted"} is C{.Lists.Twisted}).  Each part of
a folder name is stored in modified UTF-7 (RFC 3501 section 5.1.3), as
Courier and Dovecot store Maildir++ names, with one addition: a literal
C{"."} inside a name part is written C{"&AC4-"}, the modified-UTF-7 form of
U+002E.  Any modified-UTF-7 decoder turns it back into C{"."}, so other
programs show the right name, and the separator stays unambiguous.

Message files are C{<key>[:2,<info>]}; the key is C{<time>.M<usec>P<pid>
Q<counter>R<random>.<host>,S=<size>,W=<size>}: C{S} is the file size and
C{W} (Dovecot's "virtual size") the size with CRLF line ends, equal for
every file this store writes since it stores CRLF.  Knowing both from the
name, the store never reads or stats a file to learn its size.  The info
letters are the Maildir flags (D F P R S T, in ASCII order); letters we do
not know (Dovecot's lower-case keywords) are kept as they are.
"""

from __future__ import annotations

import base64
import os
import re

from gateway.store.model import SYSTEM_FLAGS, InvalidFolderName, NoSuchAccount, StoreError

INBOX = "INBOX"
INFO = ":2,"
#: The file an account's Maildir++ sub-folders carry (Maildir++ spec).
FOLDER_MARKER = "maildirfolder"
_LETTER_FLAG = {letter: flag for flag, letter in SYSTEM_FLAGS.items()}
_FLAG_CASE = {flag.lower(): flag for flag in SYSTEM_FLAGS}
_FIELD = re.compile(r",([SW])=(\d+)")
#: Domains whose directory the store uses itself (C{<root>/tmp} is the spool).
_RESERVED_DOMAINS = frozenset({"tmp"})


def storage_failure() -> StoreError:
    """The temporary error for a disk failure (the cause goes to the log)."""
    return StoreError(451, "4.3.0", "mail store failure, try again later")


def readonly_failure() -> StoreError:
    return StoreError(550, "5.2.0", "folder is read-only")


# -- accounts -----------------------------------------------------------------

def account_parts(account: str) -> tuple[str, str]:
    """
    C{(domain, local)} of a canonical account id, refusing anything that
    could escape the store's root or hide from it.

    @raise NoSuchAccount: for a name that cannot be a directory name.
    """
    local, at, domain = account.rpartition("@")
    if domain.lower() in _RESERVED_DOMAINS:
        # <root>/tmp is the delivery spool: an account there would mix
        # with it, and its directory would make the spool's clean-up fail.
        raise NoSuchAccount(account)
    for part in (local, domain):
        if (not at or not part or part.startswith(".") or "/" in part or "\\" in part
                or any(ord(c) < 32 or ord(c) == 127 for c in part)
                or not 0 < _utf8_length(part) <= 255):
            raise NoSuchAccount(account)
    return domain, local


def _utf8_length(text: str) -> int:
    """The UTF-8 length of C{text}, or -1 if it has a surrogate: such a
    name (an undecoded byte, C{surrogateescape}) would be written to disk
    as the bytes of another name (C{"\\udcc3\\udca9"} as C{"\\xe9"})."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return -1


def account_path(root: str, account: str) -> str:
    domain, local = account_parts(account)
    return os.path.join(root, domain, local)


# -- folders ------------------------------------------------------------------

def normalise(name: str) -> str:
    """
    The canonical form of a folder name: C{INBOX} in upper case (RFC 3501
    section 5.1), other parts as given.

    @raise InvalidFolderName: for an empty part, a control character, or an
        IMAP wildcard (C{*}, C{%}), which LIST could not tell from a pattern.
    """
    if not isinstance(name, str) or not name:
        raise InvalidFolderName(str(name), "empty name")
    parts = name.split("/")
    if any(not p for p in parts):
        raise InvalidFolderName(name, "empty hierarchy level")
    if any(ord(c) < 32 or ord(c) == 127 or c in "*%" for c in name):
        raise InvalidFolderName(name, "control character or wildcard")
    if _utf8_length(name) < 0:  # modified UTF-7 cannot hold it: no LIST would show it
        raise InvalidFolderName(name, "not Unicode text")
    # ASCII case only (RFC 3501 section 5.1): "\u0131nbox".upper() is "INBOX".
    if parts[0].isascii() and parts[0].upper() == INBOX:
        parts[0] = INBOX
    out = "/".join(parts)
    if len(folder_dir(out).encode("utf-8")) > 255:
        raise InvalidFolderName(name, "too long")
    return out


def folder_dir(name: str) -> str:
    """The directory (relative to the account) of a normalised name."""
    if name == INBOX:
        return ""
    return "." + ".".join(mutf7_encode(part) for part in name.split("/"))


def folder_name(dirname: str) -> str | None:
    """The folder name a directory holds, or C{None} if it is not a folder
    in canonical form (so that C{.inbox} cannot shadow the INBOX)."""
    if not dirname.startswith(".") or dirname in (".", ".."):
        return None
    try:
        name = "/".join(mutf7_decode(part) for part in dirname[1:].split("."))
        canonical = normalise(name)
    except (ValueError, InvalidFolderName):
        return None
    if canonical == INBOX or folder_dir(canonical) != dirname:
        return None
    return canonical


def parent_names(name: str) -> list[str]:
    """C{"a/b/c"} -> C{["a", "a/b"]}."""
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def is_inside(name: str, parent: str) -> bool:
    return name.startswith(parent + "/")


def mutf7_encode(text: str) -> str:
    """Modified UTF-7 (RFC 3501 section 5.1.3), with C{"."} encoded too."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            raw = "".join(run).encode("utf-16-be", "surrogatepass")
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=")
                       .replace("/", ",") + "-")
            run.clear()

    for char in text:
        if 0x20 <= ord(char) <= 0x7E and char != ".":
            flush()
            out.append("&-" if char == "&" else char)
        else:
            run.append(char)
    flush()
    return "".join(out)


def mutf7_decode(text: str) -> str:
    """@raise ValueError: for text that is not modified UTF-7."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if not 0x20 <= ord(char) <= 0x7E:
            raise ValueError("not modified UTF-7")
        if char != "&":
            out.append(char)
            i += 1
            continue
        end = text.index("-", i)
        if end == i + 1:
            out.append("&")
        else:
            b64 = text[i + 1:end].replace(",", "/")
            raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
            out.append(raw.decode("utf-16-be"))
        i = end + 1
    return "".join(out)


# -- message files ------------------------------------------------------------

def split_name(filename: str) -> tuple[str, str | None]:
    """C{(key, info letters or None)} of a message file name."""
    key, sep, info = filename.partition(INFO)
    return key, (info if sep else None)


def file_name(key: str, info: str | None) -> str:
    return key if info is None else key + INFO + info


def sizes(key: str) -> tuple[int | None, int | None]:
    """The C{S=} and C{W=} fields of a key (C{None} when absent)."""
    found = dict(_FIELD.findall(key))
    s, w = found.get("S"), found.get("W")
    return (int(s) if s else None), (int(w) if w else None)


def make_key(seconds: float, pid: int, counter: int, random_hex: str, host: str,
             size: int | None) -> str:
    """A unique name; with C{size}, its C{,S=} and C{,W=} fields."""
    # Maildir spec: "/" and ":" in the host name are written \057 and \072.
    host = host.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054") or "localhost"
    usec = int(seconds * 1_000_000) % 1_000_000
    key = f"{int(seconds)}.M{usec}P{pid}Q{counter}R{random_hex}.{host}"
    return key if size is None else key + f",S={size},W={size}"


def size_fields(key: str, size: int) -> str:
    """The size fields to give a copy of the file C{key} (whose CRLF size
    is C{size}): its own C{S=} if it has one, and C{W=}."""
    s, w = sizes(key)
    return ("" if s is None else f",S={s}") + f",W={size if w is None else w}"


# -- flags --------------------------------------------------------------------

def canonical_flags(flags: object) -> tuple[frozenset[str], frozenset[str]]:
    """
    Split IMAP flags into system flags (canonical case; IMAP flags are
    case-insensitive) and keywords.  C{\\Recent} and unknown backslash flags
    cannot be set and are dropped.
    """
    system: set[str] = set()
    keywords: set[str] = set()
    for flag in flags:  # type: ignore[attr-defined]
        known = _FLAG_CASE.get(flag.lower())
        if known is not None:
            system.add(known)
        elif not flag.startswith("\\"):
            keywords.add(flag)
    return frozenset(system), frozenset(keywords)


def letters_for(system: frozenset[str], old: str | None = None) -> str:
    """The info letters for these system flags, keeping unknown letters."""
    keep = {c for c in (old or "") if c not in _LETTER_FLAG}
    return "".join(sorted(keep | {SYSTEM_FLAGS[f] for f in system}))


_FLAGSETS: dict[tuple[str, str], frozenset[str]] = {}


def flags_of(info: str | None, keywords: str) -> frozenset[str]:
    """The IMAP flags of a file's info letters and its stored keywords
    (space-separated); one shared frozenset per distinct combination."""
    cache_key = (info or "", keywords)
    found = _FLAGSETS.get(cache_key)
    if found is None:
        flags = {_LETTER_FLAG[c] for c in info or "" if c in _LETTER_FLAG}
        flags.update(keywords.split())
        found = _FLAGSETS.setdefault(cache_key, frozenset(flags))
    return found


def keywords_text(keywords: frozenset[str]) -> str:
    return " ".join(sorted(keywords))


def to_crlf(data: bytes, after_cr: bool = False) -> bytes:
    """Bare LF -> CRLF.  C{after_cr}: the previous chunk ended with CR."""
    out = re.sub(rb"(?<!\r)\n", b"\r\n", data)
    if after_cr and data.startswith(b"\n"):
        out = out[1:]  # that LF already had its CR
    return out
