"""
Tests for L{gateway.auth.usercli}: the C{user} and C{auth} admin commands.
"""

from __future__ import annotations

import base64
import io
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth import otp
from gateway.auth.throttle import BANS_FILENAME, Throttle, read_bans
from gateway.auth.usercli import Terminal, main, user_add, user_passwd
from gateway.auth.usersfile import Account, Legacy, UsersFile
from gateway.auth.verifiers import password_matches

PASSWORD = "correct horse battery"


class CLICase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = FilePath(self.mktemp())
        self.dir.makedirs()
        self.path = self.dir.child("users.json").path

    def run_cli(self, *argv: str, stdin: str = "", prompts: list[str] | None = None,
                ) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        answers = list(prompts or [])
        status = main(list(argv), out, err, stdin=io.StringIO(stdin),
                      getpass=lambda prompt: answers.pop(0))
        return status, out.getvalue(), err.getvalue()

    def user(self, *argv: str, stdin: str = "", **kw: Any) -> tuple[int, str, str]:
        return self.run_cli("user", *argv, "--users", self.path, stdin=stdin, **kw)

    def add(self, account: str, *extra: str, password: str = PASSWORD) -> None:
        status, _, err = self.user("add", account, "--password-stdin", *extra,
                                   stdin=password + "\nignored\n")
        self.assertEqual((status, err), (0, ""))

    def accounts(self) -> dict[str, Account]:
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        return UsersFile(self.path).load().accounts

    def assertFails(self, result: tuple[int, str, str], text: str) -> None:
        status, out, err = result
        self.assertEqual(status, 1)
        self.assertIn(text, err)
        self.assertEqual(err.count("\n"), 1, "one line, no traceback")


class UserTests(CLICase):
    def test_add_stores_verifiers_only(self) -> None:
        self.add("Alice@Example.EDU", "--address", "a.smith@example.edu")
        alice = self.accounts()["alice@example.edu"]
        self.assertTrue(alice.enabled)
        self.assertEqual(alice.addresses, ("a.smith@example.edu",))
        self.assertTrue(password_matches(alice.scram_keys("SHA-256"), PASSWORD))
        self.assertTrue(password_matches(alice.scram_keys("SHA-1"), PASSWORD))
        self.assertIsNone(alice.legacy)
        self.assertNotIn(PASSWORD.encode(), FilePath(self.path).getContent())

    def test_add_with_legacy_stores_secret(self) -> None:
        self.add("bob@example.edu", "--legacy", "apop,CRAM-MD5", "--disabled")
        bob = self.accounts()["bob@example.edu"]
        self.assertEqual(bob.legacy, Legacy(("APOP", "CRAM-MD5"), PASSWORD))
        self.assertFalse(bob.enabled)

    def test_add_from_prompt(self) -> None:
        status, _, _ = self.user("add", "carol@example.edu", prompts=["s3cret pw", "s3cret pw"])
        self.assertEqual(status, 0)
        self.assertTrue(password_matches(
            self.accounts()["carol@example.edu"].scram_keys("SHA-256"), "s3cret pw"))
        self.assertFails(self.user("add", "dave@example.edu", prompts=["one", "two"]), "differ")
        self.assertNotIn("dave@example.edu", self.accounts())

    def test_add_errors(self) -> None:
        self.add("alice@example.edu")
        self.assertFails(self.user("add", "alice@example.edu", "--password-stdin", stdin="x\n"),
                         "already exists")
        self.assertFails(self.user("add", "x@example.edu", "--password-stdin", stdin="\n"),
                         "empty password")
        self.assertFails(self.user("add", "x@example.edu", "--legacy", "NTLM",
                                   "--password-stdin", stdin="pw\n"), "unknown legacy")
        self.assertFails(self.user("add", "bare", "--password-stdin", stdin="pw\n"),
                         "local@domain")
        self.assertFails(self.user("add", "y@example.edu", "--address", "alice@example.edu",
                                   "--password-stdin", stdin="pw\n"), "already the address")

    def test_passwd(self) -> None:
        self.add("alice@example.edu")
        self.add("bob@example.edu", "--legacy", "APOP")
        for name in ("alice@example.edu", "bob@example.edu"):
            self.assertEqual(self.user("passwd", name, "--password-stdin",
                                       stdin="new password\n")[0], 0)
        accounts = self.accounts()
        self.assertTrue(password_matches(accounts["alice@example.edu"].scram_keys("SHA-256"),
                                         "new password"))
        self.assertFalse(password_matches(accounts["alice@example.edu"].scram_keys("SHA-1"),
                                          PASSWORD))
        self.assertEqual(accounts["bob@example.edu"].legacy, Legacy(("APOP",), "new password"))
        self.assertFails(self.user("passwd", "nobody@example.edu", "--password-stdin",
                                   stdin="x\n"), "no account nobody@example.edu")

    def test_passwd_drops_imported_secret(self) -> None:
        UsersFile(self.path).save({"carol@example.edu": Account(
            "carol@example.edu", legacy=Legacy((), "old"))})
        user_passwd(self.path, "carol@example.edu", Terminal(io.StringIO("new pw\n"),
                                                             io.StringIO()), password_stdin=True)
        carol = self.accounts()["carol@example.edu"]
        self.assertIsNone(carol.legacy)
        self.assertEqual(len(carol.scram), 2)

    def test_del(self) -> None:
        self.add("alice@example.edu")
        self.add("shared@example.edu")
        UsersFile(self.path).update(lambda a: a.update({"alice@example.edu": Account(
            "alice@example.edu", may_act_for=("shared@example.edu",))}))
        self.assertEqual(self.user("del", "Shared@example.edu")[0], 0)
        self.assertEqual(list(self.accounts()), ["alice@example.edu"])
        self.assertEqual(self.accounts()["alice@example.edu"].may_act_for, ())
        self.assertFails(self.user("del", "shared@example.edu"), "no account")

    def test_list_flags_legacy_secrets(self) -> None:
        self.add("alice@example.edu", "--address", "al@example.edu")
        self.add("bob@example.edu", "--legacy", "APOP")
        UsersFile(self.path).update(lambda a: a.update({"carol@example.edu": Account(
            "carol@example.edu", legacy=Legacy((), "imported"))}))
        status, out, _ = self.user("list")
        self.assertEqual(status, 0)
        lines = {line.split()[0]: line for line in out.splitlines()}
        self.assertIn("SHA-1,SHA-256", lines["alice@example.edu"])
        self.assertIn("al@example.edu", lines["alice@example.edu"])
        self.assertNotIn("HELD", lines["alice@example.edu"])
        self.assertIn("HELD (APOP)", lines["bob@example.edu"])
        self.assertIn("HELD (imported)", lines["carol@example.edu"])
        self.assertIn("2 of 3 accounts hold a password-equivalent", out)
        self.assertNotIn(PASSWORD, out)

    def test_show_prints_no_keys_or_secrets(self) -> None:
        self.add("bob@example.edu", "--legacy", "APOP", "--address", "b@example.edu")
        status, out, _ = self.user("show", "bob@example.edu")
        self.assertEqual(status, 0)
        self.assertIn("b@example.edu", out)
        self.assertIn("HELD (APOP)", out)
        bob = self.accounts()["bob@example.edu"]
        self.assertNotIn(PASSWORD, out)
        for keys in bob.scram:
            for raw in (keys.salt, keys.stored_key, keys.server_key):
                self.assertNotIn(raw.hex(), out)
                self.assertNotIn(base64.b64encode(raw).decode(), out)

    def test_functions_directly(self) -> None:
        out = io.StringIO()
        user_add(self.path, "erin@example.edu", Terminal(io.StringIO("pw\r\n"), out),
                 password_stdin=True, iterations=16)
        self.assertIn("added erin@example.edu", out.getvalue())
        keys = self.accounts()["erin@example.edu"].scram_keys("SHA-256")
        self.assertEqual(keys.iterations, 16)
        self.assertTrue(password_matches(keys, "pw"))  # CR LF stripped

    def test_open_file_refused(self) -> None:
        self.add("alice@example.edu")
        os.chmod(self.path, 0o644)
        self.assertFails(self.user("list"), "mode 0644")

    def test_no_users_file_configured(self) -> None:
        self.assertFails(self.run_cli("user", "list"), "no users file")

    def test_wired_into_mailgateway_command(self) -> None:
        from gateway.cli import main as mailgateway

        self.add("alice@example.edu")
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(mailgateway(["user", "list", "--users", self.path], out, err), 0)
        self.assertIn("alice@example.edu", out.getvalue())


class OTPInitTests(CLICase):
    def test_otp_init(self) -> None:
        self.add("alice@example.edu")
        status, out, _ = self.user("otp-init", "alice@example.edu", "--seed", "KE1234",
                                   "--count", "99", "--algorithm", "sha1", "--password-stdin",
                                   stdin="This is a test.\n")
        self.assertEqual(status, 0)
        self.assertIn("otp-sha1 98 ke1234", out)
        state = self.accounts()["alice@example.edu"].otp
        self.assertEqual((state.algorithm, state.seed, state.sequence), ("sha1", "ke1234", 99))
        self.assertEqual(state.key, otp.otp("sha1", "This is a test.", "ke1234", 99))
        self.assertNotIn(b"This is a test.", FilePath(self.path).getContent())

    def test_default_seed_is_random(self) -> None:
        self.add("alice@example.edu")
        self.user("otp-init", "alice@example.edu", "--password-stdin", stdin="a long phrase\n")
        first = self.accounts()["alice@example.edu"].otp
        self.user("otp-init", "alice@example.edu", "--password-stdin", stdin="a long phrase\n")
        second = self.accounts()["alice@example.edu"].otp
        self.assertEqual((first.algorithm, first.sequence), ("md5", 500))
        self.assertNotEqual(first.seed, second.seed)

    def test_otp_init_errors(self) -> None:
        self.add("alice@example.edu")
        otp_init = lambda *a, stdin="a long phrase\n": self.user(  # noqa: E731
            "otp-init", "alice@example.edu", "--password-stdin", *a, stdin=stdin)
        self.assertFails(otp_init(stdin="too short\n"), "at least 10 characters")
        self.assertFails(otp_init(stdin=PASSWORD + "\n"), "differ from the account's password")
        self.assertFails(otp_init("--seed", "no-dash"), "seed")
        self.assertFails(otp_init("--count", "0"), "count must be")
        self.assertFails(self.user("otp-init", "nobody@example.edu", "--password-stdin",
                                   stdin="a long phrase\n"), "no account")
        self.assertIsNone(self.accounts()["alice@example.edu"].otp)


class UnbanTests(CLICase):
    def banned(self) -> str:
        t = Throttle(Clock())
        for i in range(10):
            t.failed("192.0.2.7", "alice@example.edu", bytes([i]))
            t.failed("198.51.100.1", "bob@example.edu", bytes([i]))
        path = self.dir.child(BANS_FILENAME).path
        t.save(path)
        return path

    def unban(self, target: str) -> tuple[int, str, str]:
        return self.run_cli("auth", "unban", target, "--state-dir", self.dir.path)

    def test_unban_address(self) -> None:
        path = self.banned()
        status, out, _ = self.unban("192.0.2.7")
        self.assertEqual(status, 0)
        self.assertIn("lifted 1 ban", out)
        self.assertEqual(list(read_bans(path)), [("198.51.100.1", "bob@example.edu")])
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertFails(self.unban("192.0.2.7"), "no ban matches 192.0.2.7")

    def test_unban_account(self) -> None:
        path = self.banned()
        self.assertEqual(self.unban("BOB@example.edu")[0], 0)
        self.assertEqual(list(read_bans(path)), [("192.0.2.7", "alice@example.edu")])

    def test_no_ban_file(self) -> None:
        self.assertFails(self.unban("192.0.2.7"), "no bans recorded")
