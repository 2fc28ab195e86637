"""
Tests for L{gateway.store.index}: the per-account SQLite index.
"""

from __future__ import annotations

import sqlite3

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from gateway.store.index import AccountIndex, Row, stamp


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


    def test_begin_that_fails_leaves_no_transaction(self) -> None:
        """A failure after BEGIN (reading data_version) rolls back: the next
        transaction starts, instead of failing for ever with "cannot start
        a transaction within a transaction"."""
        index = self.index
        real = index._data_version

        def broken() -> int:
            index._data_version = real  # type: ignore[method-assign]
            raise sqlite3.OperationalError("disk I/O error")

        index._data_version = broken  # type: ignore[method-assign]
        self.assertRaises(sqlite3.OperationalError, index.begin)
        with index.transaction():
            index.add_folder("INBOX")
        self.assertIsNotNone(self.open().folder("INBOX"))


class SuspendTests(SynchronousTestCase):
    """
    An idle account's index connection is closed (suspended) and opened
    again by its next transaction, which must still tell whether another
    connection wrote meanwhile: C{data_version} cannot, across two
    connections; the generation counter can.
    """

    def setUp(self) -> None:
        self.path = FilePath(self.mktemp()).path
        self.index = self.open()
        with self.index.transaction():
            self.folder = self.index.add_folder("INBOX").id

    def open(self) -> AccountIndex:
        index = AccountIndex(self.path, uidvalidity_base=lambda: 1000)
        self.addCleanup(index.close)
        return index

    def write(self, index: AccountIndex, uid: int) -> None:
        with index.transaction():
            index.insert(self.folder, [row(uid)])

    def test_suspend_closes_the_connection_and_its_files(self) -> None:
        """The last connection to close removes the WAL and its index
        (the C{-shm} mapping is what an open connection costs besides
        SQLite's buffers)."""
        self.write(self.index, 1)
        self.assertTrue(FilePath(self.path + "-shm").exists())
        self.index.suspend()
        self.assertTrue(self.index.suspended)
        self.assertFalse(FilePath(self.path + "-wal").exists())
        self.assertFalse(FilePath(self.path + "-shm").exists())
        self.assertFalse(self.index.begin())  # opened again: nobody wrote
        self.assertFalse(self.index.suspended)
        self.assertEqual([r.uid for r in self.index.rows(self.folder)], [1])
        self.index.commit()

    def test_own_writes_are_not_news(self) -> None:
        self.write(self.index, 1)
        self.index.suspend()
        self.write(self.index, 2)  # reopens, writes, commits
        self.index.suspend()
        self.assertFalse(self.index.begin())
        self.index.commit()

    def test_another_connection_writes_while_suspended(self) -> None:
        other = self.open()
        self.index.suspend()
        self.write(other, 1)
        self.assertTrue(self.index.begin())
        self.index.commit()
        self.index.suspend()
        other.begin()
        other.commit()  # a transaction that changes nothing is no news
        self.assertFalse(self.index.begin())
        self.index.commit()

    def test_another_connection_wrote_before_the_suspend(self) -> None:
        """A change we had not yet taken when we closed is news at reopen,
        even though the generation did not move while we were closed."""
        other = self.open()
        self.write(other, 1)
        self.index.suspend()
        self.assertTrue(self.index.begin())
        self.index.commit()

    def test_failed_reopen_stays_suspended(self) -> None:
        impatient = AccountIndex(self.path, uidvalidity_base=lambda: 1000, timeout=0)
        self.addCleanup(impatient.close)
        impatient.suspend()
        self.write(self.index, 1)
        self.index.begin()  # holds the write lock
        self.assertRaises(sqlite3.OperationalError, impatient.begin)
        self.assertTrue(impatient.suspended)
        self.index.commit()
        self.assertTrue(impatient.begin())  # the change is still news
        impatient.commit()

    def test_stamp_moves_with_any_commit(self) -> None:
        """What the store's poll compares: any connection's commit changes
        it, and an index that knows another connection wrote since its last
        transaction gives none."""
        other = self.open()
        before = stamp(self.path)
        self.assertEqual(self.index.stamp(), before)
        self.write(other, 1)
        self.assertNotEqual(stamp(self.path), before)
        self.assertIsNone(self.index.stamp())
        self.index.begin()
        self.index.commit()
        self.assertEqual(self.index.stamp(), stamp(self.path))
        other.close()
        self.index.suspend()  # the last connection: the WAL goes
        closed = stamp(self.path)
        self.assertIsNone(closed[0])
        self.write(self.open(), 2)
        self.assertNotEqual(stamp(self.path), closed)
