# -*- test-case-name: tests.interop.test_mail_imap -*-
"""
What the IMAP interoperability tests (L{tests.interop.test_mail_imap}) need
around the clients: a mailbox as a test sees it (the messages of some
folders, by token, with their flags) on the client's side (a Maildir tree)
and on the gateway's (through imaplib, read-only), imaplib sessions, and an
account with an awkward password.
"""

from __future__ import annotations

import imaplib
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from twisted.trial.unittest import SkipTest

from tests.gatewayprocess import add_account
from tests.interop.clients import Run
from tests.interop.mailclients import MailGateway, message, token

#: Maildir info letters (in the order the Maildir spec sorts them) and IMAP flags.
LETTERS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
#: The folders the two-way syncs look at.
FOLDERS = ("INBOX", "Sent", "Projects/2026 Q1")
TOKEN = re.compile(rb"tok[0-9a-f]{16}")
#: A body of about 600 kB (base64-like lines): more than one read and one
#: literal chunk.
BIG_BODY = "\r\n".join(f"{i:06d}QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0MTIzNDU2Nzg5{'x' * 20}"
                        for i in range(8000))

#: C{folder -> {token: flags}}: a mailbox as a test sees it.
View = dict[str, dict[str, frozenset[str]]]


@dataclass(frozen=True)
class Box:
    """A mailbox of its own for one test, on the shared gateway."""

    gw: MailGateway
    account: str
    password: str


def imapclient_module():  # type: ignore[no-untyped-def]
    try:
        import imapclient
    except ImportError:
        raise SkipTest("imapclient is not installed: pip install imapclient "
                       "(make test installs it)") from None
    return imapclient


# -- the local side: a Maildir tree ------------------------------------------


def local_view(root: Path, folders: tuple[str, ...] = FOLDERS) -> View:
    """The messages of the local Maildir folders, by token, with their flags."""
    view: View = {}
    for folder in folders:
        found: dict[str, frozenset[str]] = {}
        for sub in ("new", "cur"):
            directory = root / folder / sub
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                mark = TOKEN.search(path.read_bytes())
                if mark is None:
                    continue
                _, _, info = path.name.partition(":2,")
                found[mark.group().decode()] = frozenset(
                    LETTERS[c] for c in info if c in LETTERS)
        view[folder] = found
    return view


def local_file(root: Path, folder: str, mark: str) -> Path:
    """The one file of the local folder that carries C{mark}."""
    found = [p for sub in ("new", "cur") if (root / folder / sub).is_dir()
             for p in (root / folder / sub).iterdir() if mark.encode() in p.read_bytes()]
    if len(found) != 1:
        raise AssertionError(f"{mark} is in {len(found)} files of {root / folder}")
    return found[0]


def local_add(root: Path, folder: str, mark: str, flags: str = "", body: str = "") -> None:
    """
    A new message in a local folder, as a mail reader writes it (LF line
    ends).  The folder and each of its parents are Maildirs (offlineimap
    takes a parent that is a plain directory for a missing folder).
    """
    parts = folder.split("/")
    for depth in range(1, len(parts) + 1):
        for sub in ("cur", "new", "tmp"):
            (root.joinpath(*parts[:depth]) / sub).mkdir(parents=True, exist_ok=True)
    data = message(mark, to="someone@elsewhere.test", body=body).replace(b"\r\n", b"\n")
    name = f"{time.time_ns()}.{mark}.client"
    if flags:
        (root / folder / "cur" / f"{name}:2,{flags}").write_bytes(data)
    else:
        (root / folder / "new" / name).write_bytes(data)


def local_set_flags(root: Path, folder: str, mark: str, letters: str) -> None:
    """Give a local message exactly these Maildir flags (a rename into cur/)."""
    path = local_file(root, folder, mark)
    base = path.name.partition(":2,")[0]
    path.rename(root / folder / "cur" / f"{base}:2,{''.join(sorted(letters))}")


# -- the gateway's side, through imaplib --------------------------------------


def connect(box: Box, listener: str = "imaps", login: bool = True) -> imaplib.IMAP4:
    """imaplib to the gateway, certificate checked; STARTTLS first on C{imap}."""
    if listener == "imaps":
        client: imaplib.IMAP4 = imaplib.IMAP4_SSL("localhost", box.gw.port("imaps"),
                                                  ssl_context=box.gw.context(), timeout=20)
    else:
        client = imaplib.IMAP4("localhost", box.gw.port(listener), timeout=20)
        client.starttls(ssl_context=box.gw.context())
    if login:
        client.login(box.account, box.password)
    return client


def close(client: imaplib.IMAP4) -> None:
    try:
        client.logout()
    except (imaplib.IMAP4.error, OSError):
        pass


def ok(result: tuple[str, list]) -> list:
    typ, data = result
    if typ != "OK":
        raise AssertionError(f"{typ} {data}")
    return data


def server_view(box: Box, folders: tuple[str, ...] = FOLDERS) -> View:
    """The messages of the gateway's folders, by token, with their flags (EXAMINE: read-only)."""
    client = connect(box)
    try:
        view: View = {}
        for folder in folders:
            found: dict[str, frozenset[str]] = {}
            typ, data = client.select(f'"{folder}"', readonly=True)
            if typ != "OK":
                view[folder] = found
                continue
            if int(data[0] or 0) > 0:
                items = ok(client.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"))
                for item in items:
                    if not isinstance(item, tuple):
                        continue
                    mark = TOKEN.search(item[1])
                    flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
                    assert mark is not None and flags is not None, item
                    found[mark.group().decode()] = frozenset(
                        f.decode() for f in flags.group(1).split() if f != b"\\Recent")
            view[folder] = found
            client.close()
        return view
    finally:
        close(client)


def gateway_files(box: Box, mark: str) -> list[bytes]:
    """The message files in the account's Maildirs (every folder) that carry C{mark}."""
    return [data for data in (p.read_bytes() for p in box.gw.maildir(box.account).rglob("*")
                              if p.is_file() and p.parent.name in ("new", "cur"))
            if mark.encode() in data]


def server_message_uids(client: imaplib.IMAP4, mark: str) -> list[str]:
    """The UIDs of the selected folder's messages whose Message-ID holds C{mark}."""
    return ok(client.uid("SEARCH", "HEADER", "Message-ID", mark))[0].decode().split()


def tricky_account(gw: MailGateway) -> Box:
    """
    A new account whose password has a double quote, a backslash and a
    space, added to the running gateway's users file (then SIGHUP: reload).
    """
    account = f"{token()}@example.test"
    password = 'se"cr\\et pass 9'
    offset = gw.log_offset()
    add_account(gw.gateway.users, account, password)
    gw.gateway.signal(signal.SIGHUP)
    if "reloaded" not in gw.wait_for_log(offset, "reloaded", 5):
        raise AssertionError(f"the gateway did not reload its users:\n{gw.log_tail()}")
    return Box(gw, account, password)


def remember(runs: list[Run], done: Run) -> Run:
    runs.append(done)
    return done
