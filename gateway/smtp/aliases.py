# -*- test-case-name: tests.test_aliases -*-
"""
The aliases file: local addresses that stand for other addresses.

Format (like C{/etc/aliases})::

    # comment
    postmaster: alice@example.edu
    staff:      alice@example.edu, bob@example.edu,
                helpdesk@partner.org          # a continuation line
    info@lists.example.edu: staff

A name without a domain applies to every local domain; a name with a domain
only to that one (and wins over the bare name).  Targets are addresses
(local accounts or anywhere else) or other aliases; expansion follows them
to a fixed depth and refuses loops; an alias that names itself among its
targets (C{bob: bob, bob@backup.org}) means its own mailbox as well.  An
alias wins over an account of the same name.  Names and local domains compare
case-insensitively.  Every problem of a file is reported at once, with its
line number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

MAX_DEPTH = 8
# A dot-atom-ish local part and, optionally, a domain of non-empty labels.
_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+(@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*)?$")
_COMMENT = re.compile(r"(^|\s)#.*")


class AliasError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class Aliases:
    """@ivar table: alias name (lower case, with or without domain) -> targets."""

    table: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, where: str = "aliases") -> Aliases:
        """@raise AliasError: with every problem, each naming its line."""
        # Each entry: its lines, as (line number, text without the comment).
        entries: list[list[tuple[int, str]]] = []
        # A byte order mark (an editor's) is not part of the first name.
        for number, raw in enumerate(text.removeprefix("\ufeff").splitlines(), 1):
            # A comment starts at a '#' that begins the line or follows white
            # space: '#' is an atext character (RFC 5322 section 3.2.3), so
            # 'a#b@example.edu' is an address, not 'a' and a comment.
            line = _COMMENT.sub("", raw).strip()
            if not line:
                continue
            if raw[:1].isspace() and entries:
                entries[-1].append((number, line))  # a continuation line
            else:
                entries.append([(number, line)])
        table: dict[str, tuple[str, ...]] = {}
        defined: set[str] = set()
        problems = []
        for lines in entries:
            number = lines[0][0]
            name, sep, rest = lines[0][1].partition(":")
            name = name.strip().lower()
            # Each target with its own line, so that a bad one on a
            # continuation line is reported where it is.
            targets = [(n, t) for n, part in [(number, rest), *lines[1:]]
                       for t in part.replace(",", " ").split()]
            if not sep or not _NAME.match(name):
                problems.append(f"{where}:{number}: expected 'name: target, ...'")
            elif not targets:
                problems.append(f"{where}:{number}: {name} has no target")
            elif name in defined:
                problems.append(f"{where}:{number}: {name} defined twice")
            elif bad := [(n, t) for n, t in targets if not _NAME.match(t)]:
                problems.append(f"{where}:{bad[0][0]}: bad target {bad[0][1]!r}")
            else:
                table[name] = tuple(t for _, t in targets)
            if sep and _NAME.match(name):
                defined.add(name)  # a broken definition is still a definition
        if problems:
            raise AliasError(problems)
        return cls(table)

    @classmethod
    def load(cls, path: Path | None) -> Aliases:
        if path is None:
            return cls()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise AliasError([f"{path}: cannot read: {e}"]) from None
        return cls.parse(text, str(path))

    def lookup(self, address: str, local_domains: tuple[str, ...]) -> tuple[str, ...] | None:
        """The targets of C{address} if it is an alias in a local domain."""
        local, _, domain = address.lower().rpartition("@")
        if not local:  # bare "postmaster"
            return self.table.get(domain)
        if domain.rstrip(".") not in local_domains:
            return None
        return self.table.get(f"{local}@{domain}") or self.table.get(local)

    def expand(self, address: str, local_domains: tuple[str, ...],
               default_domain: str) -> list[str]:
        """
        The final addresses C{address} stands for (itself if not an alias);
        a bare target takes the domain of the alias it came from.  A chain
        deeper than L{MAX_DEPTH} ends at the address where it was cut; a loop
        adds nothing, so an alias that only loops expands to nothing (the
        caller refuses it); an alias among its own targets is itself a final
        address.  A final address may still be an alias (a chain cut, an
        alias naming itself): what it leads to is the caller's to decide
        (L{gateway.smtp.addressbook.DirectoryAddressBook.expand}).
        """
        out: list[str] = []
        seen: set[str] = set()
        # The final addresses already in C{out}, lower case: a set, so that a
        # list of thousands of members expands in linear time (this runs on
        # the reactor, for every RCPT TO).
        kept: set[str] = set()

        def keep(addr: str) -> None:
            if addr.lower() not in kept:
                kept.add(addr.lower())
                out.append(addr)

        def walk(addr: str, depth: int) -> None:
            key = addr.lower()
            if key in seen:  # a loop: this branch adds nothing
                return
            seen.add(key)
            targets = self.lookup(addr, local_domains) if depth < MAX_DEPTH else None
            if targets is None:
                keep(addr)
                return
            domain = addr.rpartition("@")[2] if "@" in addr else default_domain
            for target in targets:
                qualified = target if "@" in target else f"{target}@{domain}"
                if qualified.lower() == key:
                    # 'bob: bob, bob@backup.org': the alias names its own
                    # mailbox (the /etc/aliases idiom), a final address.
                    keep(addr)
                    continue
                walk(qualified, depth + 1)

        walk(address, 0)
        return out
