"""
Review of the admin command (C{mailgateway user/auth/check/policy}), the
users file's safe rewrite (L{gateway.auth.files}) and the aliases parser:
real invocations on temporary files, and the functions directly.
"""

from __future__ import annotations

import errno
import functools
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from gateway.auth import otp
from gateway.auth.files import atomic_write, locked
from gateway.auth.usercli import Terminal, user_add, user_passwd
from gateway.auth.usersfile import Account, Legacy, UsersFile, UsersFileError
from gateway.auth.verifiers import OTPState, password_matches
from gateway.smtp.aliases import AliasError, Aliases
from tests.test_cli import CLITestCase
from tests.test_usercli import PASSWORD, CLICase

MAILGATEWAY = str(Path(sys.executable).parent / "mailgateway")
LOCAL = ("example.edu",)


def _add_account(name: str, accounts: dict[str, Account]) -> None:
    accounts[name] = Account(name)


def _root_only() -> None:
    if os.getuid() != 0:
        raise SkipTest("changing a file's owner needs root")


class UsersCommandProcessTests(SynchronousTestCase):
    """The real C{mailgateway} executable: every error is one line on stderr
    and exit status 1, never a traceback, never the password."""

    def setUp(self) -> None:
        self.dir = FilePath(self.mktemp())
        self.dir.makedirs()
        self.path = self.dir.child("users.json").path

    def mailgateway(self, *argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
        env = dict(os.environ)
        env.pop("MAILGATEWAY_CONFIG", None)
        p = subprocess.run([MAILGATEWAY, *argv], input=stdin, capture_output=True, env=env,
                           timeout=60)
        return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode(
            "utf-8", "replace")

    def user(self, *argv: str, stdin: bytes = b"", users: str | None = None
             ) -> tuple[int, str, str]:
        return self.mailgateway("user", *argv, "--users", users or self.path, stdin=stdin)

    def assertOneLineError(self, result: tuple[int, str, str], text: str) -> None:
        status, out, err = result
        self.assertEqual(status, 1, err)
        self.assertIn(text, err)
        self.assertEqual(err.count("\n"), 1, f"one line, no traceback: {err!r}")
        self.assertNotIn("Traceback", err)
        self.assertNotIn(PASSWORD, out + err)

    def test_errors_are_one_line(self) -> None:
        pw = (PASSWORD + "\n").encode()
        self.assertEqual(self.user("add", "alice@example.edu", "--password-stdin",
                                   stdin=pw)[0], 0)
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        cases: list[tuple[tuple[str, ...], bytes, str | None, str]] = [
            (("list",), b"", self.dir.child("missing.json").path, "No such file"),
            (("list",), b"", self.dir.path, "Is a directory"),
            (("add", "alice@example.edu", "--password-stdin"), pw, None, "already exists"),
            (("add", "a b@example.edu", "--password-stdin"), pw, None, "white space"),
            (("add", "nodomain", "--password-stdin"), pw, None, "local@domain"),
            (("add", "x@example.edu", "--password-stdin"), b"\n", None, "empty password"),
            (("add", "x@example.edu", "--password-stdin"), b"\r\n", None, "empty password"),
            (("add", "x@example.edu", "--password-stdin"), b"", None, "empty password"),
            (("add", "x@example.edu", "--password-stdin"), b"\xffpw\n", None,
             "not valid UTF-8"),
            (("passwd", "nobody@example.edu", "--password-stdin"), pw, None, "no account"),
            (("del", "nobody@example.edu"), b"", None, "no account"),
            (("show", "nobody@example.edu"), b"", None, "no account"),
            (("disable", "nobody@example.edu"), b"", None, "no account"),
        ]
        for argv, stdin, users, text in cases:
            self.assertOneLineError(self.user(*argv, stdin=stdin, users=users), text)
        bad = self.dir.child("bad.json")
        bad.setContent(b"{")
        bad.chmod(0o600)
        self.assertOneLineError(self.user("list", users=bad.path), "not valid JSON")
        bad.setContent(b"\xff\xfe")
        bad.chmod(0o600)
        self.assertOneLineError(self.user("list", users=bad.path), "not valid JSON")
        bad.chmod(0o644)
        self.assertOneLineError(self.user("list", users=bad.path), "mode 0644")
        self.assertEqual(list(UsersFile(self.path).load().accounts), ["alice@example.edu"])
        self.assertNotIn(PASSWORD.encode(), FilePath(self.path).getContent())

    def test_missing_directory_names_the_users_file(self) -> None:
        # It named the lock file, with Python's "[Errno 2]".
        missing = self.dir.child("nodir").child("users.json").path
        self.assertOneLineError(
            self.user("add", "a@example.edu", "--password-stdin", stdin=b"pw\n", users=missing),
            f"{missing}: No such file or directory")
        self.assertNotIn(".lock", self.user("list", users=missing)[2])

    def test_config_error_names_the_file_once(self) -> None:
        missing = self.dir.child("nope.toml").path
        status, _, err = self.mailgateway("user", "list", "--config", missing)
        self.assertEqual(status, 1)
        self.assertEqual(err.count(missing), 1, err)

    def test_concurrent_admins_lose_no_change(self) -> None:
        procs = [subprocess.Popen(
            [MAILGATEWAY, "user", "add", f"u{i}@example.edu", "--users", self.path,
             "--password-stdin"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE) for i in range(6)]
        for p in procs:
            _, err = p.communicate(b"pw\n", timeout=120)
            self.assertEqual(p.returncode, 0, err)
        self.assertEqual(sorted(UsersFile(self.path).load().accounts),
                         [f"u{i}@example.edu" for i in range(6)])
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        self.assertEqual([n for n in os.listdir(self.dir.path) if n.startswith(".")], [])


class PasswordInputTests(CLICase):
    def test_line_endings_stripped_once(self) -> None:
        for i, (stdin, password) in enumerate([("pw one\n", "pw one"), ("pw two\r\n", "pw two"),
                                               ("pw three", "pw three"),
                                               (" spaced \nsecond\n", " spaced ")]):
            name = f"u{i}@example.edu"
            user_add(self.path, name, Terminal(io.StringIO(stdin), io.StringIO()),
                     password_stdin=True, iterations=16)
            keys = self.accounts()[name].scram_keys("SHA-256")
            assert keys is not None
            self.assertTrue(password_matches(keys, password), stdin)

    def test_non_utf8_stdin_refused_without_quoting_it(self) -> None:
        # A surrogateescape stdin (C locale) and a strict one.
        surrogates = io.StringIO(b"\xffsecret\n".decode("utf-8", "surrogateescape"))
        strict = io.TextIOWrapper(io.BytesIO(b"\xffsecret\n"), encoding="utf-8")
        for stdin in (surrogates, strict):
            out, err = io.StringIO(), io.StringIO()
            from gateway.auth.usercli import main
            status = main(["user", "add", "x@example.edu", "--users", self.path,
                           "--password-stdin"], out, err, stdin=stdin)
            self.assertEqual(status, 1)
            self.assertEqual(err.getvalue(), "mailgateway: the password is not valid UTF-8\n")
        self.assertFalse(os.path.exists(self.path))

    def test_control_characters_refused(self) -> None:
        # NUL ends a SASL PLAIN field: such a password could never be used.
        self.assertFails(self.user("add", "x@example.edu", "--password-stdin",
                                   stdin="pass\x00word\n"), "control character")
        self.assertFails(self.user("add", "x@example.edu", "--password-stdin",
                                   stdin="pass\x1bword\n"), "control character")
        self.assertFalse(os.path.exists(self.path))

    def test_prompt_eof_and_mismatch(self) -> None:
        def eof(prompt: str) -> str:
            raise EOFError

        out, err = io.StringIO(), io.StringIO()
        from gateway.auth.usercli import main
        self.assertEqual(main(["user", "add", "x@example.edu", "--users", self.path], out, err,
                              getpass=eof), 1)
        self.assertEqual(err.getvalue(), "mailgateway: no password given\n")
        result = self.user("add", "x@example.edu", prompts=["secret one", "secret two"])
        self.assertFails(result, "differ")
        self.assertNotIn("secret", result[2].replace("differ", ""))


class EnableDisableTests(CLICase):
    def test_disable_and_enable(self) -> None:
        self.add("alice@example.edu")
        before = self.accounts()["alice@example.edu"]
        status, out, err = self.user("disable", "Alice@Example.EDU")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("disabled alice@example.edu", out)
        self.assertFalse(self.accounts()["alice@example.edu"].enabled)
        self.assertEqual(self.user("disable", "alice@example.edu")[1],
                         "alice@example.edu is already disabled\n")
        self.assertEqual(self.user("enable", "alice@example.edu")[0], 0)
        self.assertEqual(self.accounts()["alice@example.edu"], before)
        self.assertFails(self.user("enable", "bob@example.edu"), "no account bob@example.edu")


class PasswdTests(CLICase):
    PHRASE = "a long pass phrase"

    def with_otp(self) -> None:
        self.add("alice@example.edu", "--legacy", "APOP")
        self.assertEqual(self.user("otp-init", "alice@example.edu", "--seed", "ke1234",
                                   "--count", "50", "--password-stdin",
                                   stdin=self.PHRASE + "\n")[0], 0)

    def test_passwd_keeps_otp_and_renews_legacy(self) -> None:
        self.with_otp()
        state = self.accounts()["alice@example.edu"].otp
        self.assertEqual(self.user("passwd", "alice@example.edu", "--password-stdin",
                                   stdin="brand new pw\n")[0], 0)
        alice = self.accounts()["alice@example.edu"]
        self.assertEqual(alice.otp, state)
        self.assertEqual(alice.legacy, Legacy(("APOP",), "brand new pw"))
        keys = alice.scram_keys("SHA-256")
        assert keys is not None
        self.assertTrue(password_matches(keys, "brand new pw"))

    def test_passwd_refuses_the_otp_pass_phrase(self) -> None:
        # otp-init refuses a pass phrase equal to the password; passwd made
        # them equal silently, even after the sequence advanced.
        self.with_otp()
        UsersFile(self.path).update(lambda a: a.update({"alice@example.edu": Account(
            **{**a["alice@example.edu"].__dict__, "otp": OTPState(
                "alice@example.edu", "md5", "ke1234", 47,
                otp.otp("md5", self.PHRASE, "ke1234", 47))})}))
        before = FilePath(self.path).getContent()
        self.assertFails(self.user("passwd", "alice@example.edu", "--password-stdin",
                                   stdin=self.PHRASE + "\n"), "OTP pass phrase")
        self.assertEqual(FilePath(self.path).getContent(), before)

    def test_bare_address_takes_the_default_domain(self) -> None:
        user_add(self.path, "alice", Terminal(io.StringIO("pw\n"), io.StringIO()),
                 addresses=["a.smith"], password_stdin=True, default_domain="Example.EDU",
                 iterations=16)
        self.assertEqual(self.accounts()["alice@example.edu"].addresses,
                         ("a.smith@example.edu",))

    def test_passwd_of_imported_account(self) -> None:
        UsersFile(self.path).save({"carol@example.edu": Account(
            "carol@example.edu", legacy=Legacy((), "old secret"))})
        user_passwd(self.path, "carol@example.edu",
                    Terminal(io.StringIO("new pw\n"), io.StringIO()), password_stdin=True,
                    iterations=16)
        content = FilePath(self.path).getContent()
        self.assertNotIn(b"old secret", content)
        self.assertNotIn(b"new pw", content)


class AtomicWriteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = FilePath(self.mktemp())
        self.dir.makedirs()
        self.path = self.dir.child("users.json").path
        self.users = UsersFile(self.path)
        self.users.save({"a@example.edu": Account("a@example.edu")})
        self.before = FilePath(self.path).getContent()

    def leftovers(self) -> list[str]:
        return sorted(n for n in os.listdir(self.dir.path) if n.startswith("."))

    def test_full_disk_keeps_the_old_file(self) -> None:
        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        for users in (UsersFile(self.path, fsync=full),
                      UsersFile(self.path, replace=lambda a, b: full(0))):
            with self.assertRaises(OSError):
                users.update(lambda a: a.update({"b@example.edu": Account("b@example.edu")}))
            self.assertEqual(FilePath(self.path).getContent(), self.before)
            self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
            self.assertEqual(self.leftovers(), [])

    def test_mode_0600_whatever_the_umask(self) -> None:
        old = os.umask(0)
        try:
            self.users.update(lambda a: a.update({"b@example.edu": Account("b@example.edu")}))
        finally:
            os.umask(old)
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(self.path + ".lock").st_mode & 0o777, 0o600)

    def test_symbolic_link_is_kept(self) -> None:
        real = self.dir.child("real")
        real.makedirs()
        target = real.child("users.json").path
        os.rename(self.path, target)
        os.symlink(target, self.path)
        self.users.update(lambda a: a.update({"b@example.edu": Account("b@example.edu")}))
        self.assertTrue(os.path.islink(self.path))
        self.assertEqual(sorted(UsersFile(target).load().accounts),
                         ["a@example.edu", "b@example.edu"])

    def test_owner_kept(self) -> None:
        _root_only()
        os.chown(self.path, 4242, 4243)
        self.users.update(lambda a: a.update({"b@example.edu": Account("b@example.edu")}))
        st = os.stat(self.path)
        self.assertEqual((st.st_uid, st.st_gid), (4242, 4243))

    def test_lock_file_created_by_root_is_the_gateways(self) -> None:
        # Root (an admin) creating the lock file must not lock the gateway
        # (owner of the users file) out of its own writes.
        _root_only()
        os.chown(self.path, 4242, 4243)
        with locked(self.path):
            pass
        st = os.stat(self.path + ".lock")
        self.assertEqual((st.st_uid, st.st_gid, st.st_mode & 0o777), (4242, 4243, 0o600))

    def test_reader_sees_old_or_new(self) -> None:
        stop = threading.Event()
        seen: list[Any] = []

        def read() -> None:
            while not stop.is_set():
                try:
                    seen.append(len(UsersFile(self.path).load().accounts))
                except UsersFileError as e:  # pragma: no cover - the failure
                    seen.append(e)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for i in range(60):
                self.users.update(functools.partial(_add_account, f"u{i}@example.edu"))
        finally:
            stop.set()
            reader.join()
        self.assertTrue(seen)
        self.assertEqual([s for s in seen if not isinstance(s, int)], [])

    def test_atomic_write_new_file(self) -> None:
        path = self.dir.child("bans.json").path
        atomic_write(path, b"{}")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(self.leftovers(), [])


class AliasesReviewTests(SynchronousTestCase):
    def problems(self, text: str) -> list[str]:
        with self.assertRaises(AliasError) as cm:
            Aliases.parse(text, "f")
        return cm.exception.problems

    def test_hash_inside_an_address_is_not_a_comment(self) -> None:
        # 'a#b@example.edu' was cut to 'a': mail went to someone else.
        a = Aliases.parse("list: a#b@example.edu, c@example.edu   # members\n")
        self.assertEqual(a.table["list"], ("a#b@example.edu", "c@example.edu"))

    def test_comments_and_continuations(self) -> None:
        a = Aliases.parse("# head\n\nstaff: a@example.edu,\n# between\n   b@example.edu\n"
                          "  # indented comment\n\tc@example.edu # trailing\nx: y@z.org\n")
        self.assertEqual(a.table, {"staff": ("a@example.edu", "b@example.edu",
                                             "c@example.edu"), "x": ("y@z.org",)})

    def test_empty_and_comment_only(self) -> None:
        self.assertEqual(Aliases.parse("").table, {})
        self.assertEqual(Aliases.parse("# nothing\n\n   \n").table, {})

    def test_bad_target_on_a_continuation_line_names_its_line(self) -> None:
        self.assertEqual(self.problems("staff: a@example.edu,\n  b@example.edu,\n  <c>\n"),
                         ["f:3: bad target '<c>'"])

    def test_quotes_commas_and_bad_domains_refused(self) -> None:
        self.assertEqual(self.problems('q: "john smith"@example.edu\n'),
                         ["f:1: bad target '\"john'"])
        self.assertEqual(self.problems("d: a@example..edu\ne: b@.example.edu\n"),
                         ["f:1: bad target 'a@example..edu'", "f:2: bad target 'b@.example.edu'"])

    def test_duplicates_in_any_case(self) -> None:
        self.assertEqual(self.problems("Staff: a@b.c\nstaff: d@e.f\n"),
                         ["f:2: staff defined twice"])

    def test_byte_order_mark(self) -> None:
        path = Path(self.mktemp())
        path.write_bytes("\ufeffpostmaster: a@example.edu\n".encode())
        self.assertEqual(Aliases.load(path).table, {"postmaster": ("a@example.edu",)})

    def test_non_utf8_file(self) -> None:
        path = Path(self.mktemp())
        path.write_bytes(b"postmaster: \xff@example.edu\n")
        with self.assertRaises(AliasError) as cm:
            Aliases.load(path)
        self.assertIn("cannot read", str(cm.exception))

    def test_huge_list_in_linear_time(self) -> None:
        # Quadratic before: 20,000 members took 15 s per RCPT, on the reactor.
        n = 20000
        text = "big: " + ",\n ".join(f"u{i}@example.edu" for i in range(n)) + "\n"
        start = time.monotonic()
        a = Aliases.parse(text)
        out = a.expand("big@example.edu", LOCAL, "example.edu")
        self.assertEqual(len(out), n)
        self.assertLess(time.monotonic() - start, 3.0)


class PolicyExplainReviewTests(CLITestCase):
    def setUp(self) -> None:
        super().setUp()
        from tests.gatewayprocess import add_account
        add_account(self.users, "bob@example.test", "bob-pw-1234")
        UsersFile(str(self.users)).update(lambda a: a.update({"bob@example.test": Account(
            **{**a["bob@example.test"].__dict__, "enabled": False,
               "addresses": ("robert@example.test",)})}))

    def explain(self, *extra: str) -> tuple[int, str, str]:
        return self.run_cli("policy", "explain", "--config", str(self.config), *extra)

    def running_policy(self) -> tuple[Any, Any]:
        from gateway.auth.directory import FileDirectory
        from gateway.config import load
        from gateway.smtp.addressbook import DirectoryAddressBook
        from gateway.smtp.policy import PolicySettings

        config = load(self.config)
        directory = FileDirectory(UsersFile(str(config.auth.users)),
                                  default_domain=config.auth.default_domain)
        return PolicySettings.from_config(config), DirectoryAddressBook(
            directory, config.server.local_domains, config.server.aliases)

    def test_agrees_with_check_recipient(self) -> None:
        from gateway.smtp.policy import Session, check_recipient, check_sender

        settings, book = self.running_policy()
        rcpts = ["alice@example.test", "ALICE@Example.Test", "robert@example.test",
                 "nobody@example.test", "postmaster", "someone@else.org"]
        for listener, role, client, auth in [("mx", "mx", "192.0.2.7", None),
                                             ("mx", "mx", "127.0.0.1", None),
                                             ("submission", "submission", "192.0.2.7",
                                              "alice@example.test")]:
            for rcpt in rcpts:
                argv = ["--listener", listener, "--client", client, "--from", "",
                        "--to", rcpt] + (["--auth", auth] if auth else [])
                status, out, err = self.explain(*argv)
                self.assertIn(status, (0, 2), err)
                session = Session(role, client, False, auth)
                self.assertTrue(check_sender(settings, book, session, "").accept)
                expected = check_recipient(settings, book, session, rcpt, 0)
                line = out.splitlines()[2]
                self.assertIn(f"rule: {expected.rule}", line, (listener, client, rcpt))
                self.assertIn(expected.reply(), line)
                self.assertEqual(status, 0 if expected.accept else 2)

    def test_disabled_account_cannot_be_the_authenticated_one(self) -> None:
        status, out, err = self.explain("--listener", "submission", "--client", "192.0.2.7",
                                        "--auth", "bob@example.test", "--from", "",
                                        "--to", "x@else.org")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, "mailgateway: account bob@example.test is disabled: "
                              "it cannot authenticate\n")

    def test_client_must_be_an_address(self) -> None:
        status, _, err = self.explain("--listener", "mx", "--client", "mail.example.org",
                                      "--from", "", "--to", "alice@example.test")
        self.assertEqual(status, 1)
        self.assertEqual(err, "mailgateway: --client 'mail.example.org' is not an IP address\n")

    def test_addresses_parsed_as_the_server_does(self) -> None:
        # '<>' is the null sender, not an address alice does not own.
        status, out, err = self.explain("--listener", "submission", "--client", "192.0.2.7",
                                        "--auth", "alice@example.test", "--from", "<>",
                                        "--to", "<x@else.org>")
        self.assertEqual(status, 0, out + err)
        self.assertIn("MAIL FROM:<>", out)
        self.assertIn("RCPT TO:<x@else.org>", out)
        # A bare sender or a malformed recipient never reaches the policy:
        # the server answers 501; explain said 'accept'.
        for extra, text in [(("--from", "alice", "--to", "x@else.org"),
                             "--from 'alice': bad address syntax (the server answers 501 5.1.7)"),
                            (("--from", "", "--to", "a b@example.test"),
                             "--to 'a b@example.test': bad address syntax")]:
            status, out, err = self.explain("--listener", "submission", "--client", "192.0.2.7",
                                            "--auth", "alice@example.test", *extra)
            self.assertEqual((status, out), (1, ""), err)
            self.assertIn(text, err)
            self.assertEqual(err.count("\n"), 1)


class CheckReviewTests(CLITestCase):
    def test_users_file_problems_are_reported(self) -> None:
        doc = json.loads(self.users.read_text())
        doc["accounts"]["alice@example.test"]["addresses"] = ["not an address"]
        self.users.write_text(json.dumps(doc))
        status, out, err = self.run_cli("check", str(self.config))
        self.assertEqual(status, 1)
        self.assertIn("/accounts/alice@example.test/addresses/0", err)
        self.assertNotIn("Traceback", err)
