"""
Tests for L{gateway.store.index}: the per-account SQLite index.
"""

from __future__ import annotations

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from gateway.store.index import AccountIndex, Row


def row(uid: int, size: int = 10, key: str | None = None) -> Row:
    return Row(uid, key or f"key{uid}", "new", None, "", size, 1.0, False)


class IndexTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = FilePath(self.mktemp()).path
        self.now = 1000
        self.index = self.open()

    def open(self) -> AccountIndex:
        index = AccountIndex(self.path, uidvalidity_base=lambda: self.now)
        self.addCleanup(index.close)
        return index

    def test_uidvalidity_strictly_increasing(self) -> None:
        """Even within one second, and after a folder is dropped."""
        with self.index.transaction():
            first = self.index.add_folder("a").uidvalidity
            second = self.index.add_folder("b").uidvalidity
            self.index.drop_folder("a")
            third = self.index.add_folder("a").uidvalidity
        self.assertEqual((first, second, third), (1000, 1001, 1002))
        self.assertEqual(self.open().folder("a").uidvalidity, 1002)  # type: ignore[union-attr]

    def test_rows_and_usage(self) -> None:
        with self.index.transaction():
            folder = self.index.add_folder("INBOX").id
            other = self.index.add_folder("Sent").id
            self.index.insert(folder, [row(1, 10), row(2, 20)])
            self.assertEqual(self.index.usage(), (2, 30))
            self.index.insert(other, [row(1, 5)])
            self.index.delete(folder, [row(1, 10)])
            self.index.update(folder, [Row(2, "key2", "cur", "S", "$a", 20, 1.0, False)])
        self.assertEqual(self.index.usage(), (2, 25))
        self.assertEqual(self.open().usage(), (2, 25))  # counted afresh: the same
        self.assertEqual(self.index.rows(folder), [Row(2, "key2", "cur", "S", "$a", 20, 1.0,
                                                       False)])
        self.assertEqual(self.index.row_for_key(folder, "key2").uid, 2)  # type: ignore[union-attr]
        self.assertIsNone(self.index.row_for_key(folder, "key1"))

    def test_rollback(self) -> None:
        with self.index.transaction():
            folder = self.index.add_folder("INBOX").id
        try:
            with self.index.transaction():
                self.index.insert(folder, [row(1)])
                raise ValueError("boom")
        except ValueError:
            pass
        self.assertEqual((self.index.rows(folder), self.index.usage()), ([], (0, 0)))

    def test_other_connection_detected(self) -> None:
        with self.index.transaction():
            folder = self.index.add_folder("INBOX").id
        self.assertFalse(self.index.begin())
        self.index.commit()
        other = self.open()
        self.assertFalse(other.begin())
        other.insert(folder, [row(1)])
        other.commit()
        self.assertTrue(self.index.begin())
        self.assertEqual(self.index.usage(), (1, 10))
        self.index.commit()
        self.assertFalse(self.index.begin())
        self.index.commit()

    def test_rename_and_subscriptions(self) -> None:
        with self.index.transaction():
            a = self.index.add_folder("a")
            self.index.add_folder("x")  # a stale row in the way
            self.index.subscribe("a", True)
            self.index.rename_folders([("a", "x")])
        moved = self.index.folder("x")
        self.assertEqual((moved.id, moved.uidvalidity), (a.id, a.uidvalidity))  # type: ignore
        self.assertIsNone(self.index.folder("a"))
        self.assertEqual(self.index.subscriptions(), {"x"})
        with self.index.transaction():
            self.index.subscribe("x", False)
        self.assertEqual(self.index.subscriptions(), set())
