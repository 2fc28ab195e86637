"""
Tests for L{gateway.store.names}: names on disk, flags, line ends.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.store.model import InvalidFolderName, NoSuchAccount
from gateway.store.names import (
    account_parts,
    canonical_flags,
    file_name,
    flags_of,
    folder_dir,
    folder_name,
    letters_for,
    make_key,
    mutf7_decode,
    mutf7_encode,
    normalise,
    size_fields,
    sizes,
    split_name,
    to_crlf,
)

# Folder name parts as an IMAP client may send them (decoded), without the
# characters normalise refuses.
parts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/*%",
                              min_codepoint=32).filter(lambda c: c != "\x7f"),
                min_size=1, max_size=12)


class FolderNameTests(SynchronousTestCase):
    def test_examples(self) -> None:
        self.assertEqual(folder_dir("INBOX"), "")
        self.assertEqual(folder_dir("Lists/Twisted"), ".Lists.Twisted")
        self.assertEqual(folder_dir("v1.2"), ".v1&AC4-2")
        self.assertEqual(folder_dir("a&b"), ".a&-b")
        self.assertEqual(folder_dir("Entwürfe"), ".Entw&APw-rfe")
        self.assertEqual(folder_name(".Entw&APw-rfe"), "Entwürfe")
        self.assertEqual(normalise("inbox/Sub"), "INBOX/Sub")

    def test_not_folders(self) -> None:
        """Directories that are not canonical folder names are invisible, so
        C{.inbox} cannot shadow the INBOX and staging names never show."""
        for name in ["cur", ".", "..", ".INBOX", ".inbox", "..creating-x", "..deleted-y",
                     ".a..b", ".a.", ".&Jjo", ".&AGE-", ".\xe9t\xe9"]:
            self.assertIsNone(folder_name(name), name)

    def test_refused_names(self) -> None:
        for name in ["", "/", "a/", "/a", "a//b", "a*", "%", "x\ty", "x\x7f"]:
            self.assertRaises(InvalidFolderName, normalise, name)

    @given(st.lists(parts, min_size=1, max_size=4))
    def test_round_trip(self, name_parts: list[str]) -> None:
        name = normalise("/".join(name_parts))
        if name == "INBOX":
            return
        directory = folder_dir(name)
        self.assertTrue(directory.startswith(".") and "/" not in directory)
        self.assertTrue(directory.isascii())
        self.assertEqual(directory[1:].count("."), len(name_parts) - 1)
        self.assertEqual(folder_name(directory), name)

    @given(st.text(st.characters(blacklist_categories=("Cs",))))
    def test_mutf7_round_trip(self, text: str) -> None:
        encoded = mutf7_encode(text)
        self.assertNotIn(".", encoded)
        self.assertEqual(mutf7_decode(encoded), text)


class AccountTests(SynchronousTestCase):
    def test_accounts(self) -> None:
        self.assertEqual(account_parts("alice@example.org"), ("example.org", "alice"))
        self.assertEqual(account_parts("a@b@example.org"), ("example.org", "a@b"))
        for bad in ["alice", "@x", "x@", "../a@x", "a@..", "a@.x", ".a@x", "a/b@x", "a@x/y",
                    "a\\b@x", "a\n@x", "a" * 256 + "@x"]:
            self.assertRaises(NoSuchAccount, account_parts, bad)


class FileNameTests(SynchronousTestCase):
    def test_keys(self) -> None:
        key = make_key(1700000000.25, 42, 7, "beef", "mx:1/a,b", 123)
        self.assertEqual(key, "1700000000.M250000P42Q7Rbeef.mx\\0721\\057a\\054b,S=123,W=123")
        self.assertEqual(sizes(key), (123, 123))
        self.assertEqual(split_name(key + ":2,FS"), (key, "FS"))
        self.assertEqual(split_name(key), (key, None))
        self.assertEqual(file_name(key, ""), key + ":2,")
        self.assertEqual(file_name(key, None), key)
        self.assertEqual(sizes("1.2.host"), (None, None))
        self.assertEqual(size_fields("1.2.host,S=10", 12), ",S=10,W=12")
        self.assertEqual(size_fields("1.2.host", 12), ",W=12")

    def test_flags(self) -> None:
        system, keywords = canonical_flags(["\\seen", "\\RECENT", "\\Bogus", "$Label",
                                            "\\DELETED"])
        self.assertEqual((system, keywords), ({"\\Seen", "\\Deleted"}, {"$Label"}))
        self.assertEqual(letters_for(system | {"$Forwarded"}), "PST")
        self.assertEqual(letters_for(frozenset({"\\Flagged"}), "Sab"), "Fab")
        self.assertEqual(flags_of("DRTab", "$x $y"),
                         {"\\Draft", "\\Answered", "\\Deleted", "$x", "$y"})
        self.assertIs(flags_of("S", ""), flags_of("S", ""))  # shared, not one per message


class LineEndTests(SynchronousTestCase):
    def test_examples(self) -> None:
        self.assertEqual(to_crlf(b"a\nb\r\nc\rd\n"), b"a\r\nb\r\nc\rd\r\n")

    @given(st.binary(), st.integers(min_value=0, max_value=64))
    def test_chunks_give_the_same_result(self, data: bytes, cut: int) -> None:
        cut = min(cut, len(data))
        head, tail = data[:cut], data[cut:]
        joined = to_crlf(head) + to_crlf(tail, after_cr=head.endswith(b"\r"))
        self.assertEqual(joined, to_crlf(data))
        self.assertNotIn(b"\n", to_crlf(data).replace(b"\r\n", b""))
