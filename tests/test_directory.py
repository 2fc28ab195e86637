"""
Tests for L{gateway.auth.directory}: the users file and L{FileDirectory}.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import crypto
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.auth import otp as rfc2289
from gateway.auth.directory import FileDirectory
from gateway.auth.usersfile import (
    Account,
    Legacy,
    UsersFile,
    UsersFileError,
    dump_users,
    parse_users,
)
from gateway.auth.verifiers import OTPState, derive_scram_keys, password_matches
from gateway.interfaces import IAuthBackend

PASSWORD = "correct horse battery"
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=10)
VALUES = JSON | st.sampled_from(["APOP", "md5", "AAAA", "0011223344556677", "a@b.c", "d@b.c"])
NESTED = st.dictionaries(st.sampled_from(
    ["SHA-1", "SHA-256", "salt", "iterations", "stored_key", "server_key", "mechanisms",
     "secret", "algorithm", "seed", "sequence", "key"]),
    VALUES | st.lists(VALUES, max_size=3) | st.dictionaries(st.sampled_from(
        ["salt", "iterations", "stored_key", "server_key"]), VALUES), max_size=4)
NEAR_ACCOUNT = st.dictionaries(st.sampled_from(
    ["enabled", "addresses", "scram", "legacy", "otp", "may_act_for", "certificate_names"]),
    VALUES | NESTED | st.lists(VALUES, max_size=3), max_size=4)


def synchronously(f: Any, *a: Any, **kw: Any) -> Deferred[Any]:
    return maybeDeferred(f, *a, **kw)


def scram(name: str, password: str = PASSWORD) -> tuple[Any, ...]:
    return tuple(derive_scram_keys(name, password, alg, 16) for alg in ("SHA-1", "SHA-256"))


def alice(**kw: Any) -> Account:
    fields: dict[str, Any] = dict(addresses=("a.smith@example.edu",),
                                  scram=scram("alice@example.edu"))
    fields.update(kw)
    return Account("alice@example.edu", **fields)


class FileCase(SynchronousTestCase):
    def users(self, *accounts: Account, **kw: Any) -> UsersFile:
        fp = FilePath(self.mktemp())
        fp.parent().makedirs(ignoreExistingDirectory=True)
        users = UsersFile(fp.path, **kw)
        users.save({a.name: a for a in accounts})
        return users

    def directory(self, *accounts: Account, **kw: Any) -> tuple[FileDirectory, UsersFile]:
        users = self.users(*accounts)
        kw.setdefault("run_in_thread", synchronously)
        return FileDirectory(users, **kw), users

    def write_raw(self, doc: Any, mode: int = 0o600) -> UsersFile:
        fp = FilePath(self.mktemp())
        fp.parent().makedirs(ignoreExistingDirectory=True)
        fp.setContent(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
        os.chmod(fp.path, mode)
        return UsersFile(fp.path)

    def problems(self, doc: Any) -> dict[str, str]:
        e = self.assertRaises(UsersFileError, self.write_raw(doc).load)
        return dict(e.problems)


class FormatTests(FileCase):
    def test_round_trip(self) -> None:
        bob = Account("bob@example.edu", False, (), scram("bob@example.edu"),
                      Legacy(("APOP", "CRAM-MD5"), "tanstaaf"),
                      OTPState("bob@example.edu", "md5", "ke1234", 99, bytes(range(8))),
                      ("alice@example.edu",), ("Bob B",))
        a = alice()
        users = self.users(a, bob)
        table = users.load()
        self.assertEqual(table.accounts, {"alice@example.edu": a, "bob@example.edu": bob})
        self.assertEqual(os.stat(users.path).st_mode & 0o777, 0o600)
        self.assertEqual(dump_users(table.accounts.values()), FilePath(users.path).getContent())

    def test_every_error_at_once(self) -> None:
        problems = self.problems({"version": 2, "extra": 1, "accounts": {
            "alice@example.edu": {
                "enabled": "yes", "colour": "blue",
                "scram": {"SHA-256": {"salt": "!!", "iterations": 0, "stored_key": "AAAA",
                                      "server_key": "AAAA"}, "MD5": {}},
                "legacy": {"mechanisms": ["NTLM"], "secret": ""},
                "otp": {"algorithm": "md4", "seed": "no spaces", "sequence": -1, "key": "zz"},
                "addresses": ["bad address"], "may_act_for": ["ghost@example.edu"]},
            "not-an-address": {},
            "Bob@example.edu": {"addresses": ["x@example.edu"]},
            "bob@example.edu": {},
            "carol@example.edu": {"addresses": ["x@example.edu"], "certificate_names": [3]}}})
        expected = {
            "/version", "/extra", "/accounts/alice@example.edu/enabled",
            "/accounts/alice@example.edu/colour", "/accounts/alice@example.edu/scram/MD5",
            "/accounts/alice@example.edu/scram/SHA-256/salt",
            "/accounts/alice@example.edu/scram/SHA-256/iterations",
            "/accounts/alice@example.edu/scram/SHA-256/stored_key",
            "/accounts/alice@example.edu/scram/SHA-256/server_key",
            "/accounts/alice@example.edu/legacy/mechanisms",
            "/accounts/alice@example.edu/legacy/secret",
            "/accounts/alice@example.edu/otp/algorithm", "/accounts/alice@example.edu/otp/seed",
            "/accounts/alice@example.edu/otp/sequence", "/accounts/alice@example.edu/otp/key",
            "/accounts/alice@example.edu/addresses/0",
            "/accounts/not-an-address", "/accounts/bob@example.edu",
            "/accounts/carol@example.edu/certificate_names"}
        self.assertEqual(set(problems), expected)
        self.assertIn("must be 1", problems["/version"])
        self.assertIn("differs only in case", problems["/accounts/bob@example.edu"])

    def test_cross_account_conflicts(self) -> None:
        problems = self.problems({"version": 1, "accounts": {
            "alice@example.edu": {"addresses": ["x@example.edu"], "certificate_names": ["A"]},
            "bob@example.edu": {"addresses": ["x@example.edu", "alice@example.edu"],
                                "certificate_names": ["a"], "may_act_for": ["ghost@example.edu"]}}})
        self.assertIn("already the address of alice@example.edu",
                      problems["/accounts/bob@example.edu/addresses/0"])
        self.assertIn("/accounts/bob@example.edu/addresses/1", problems)
        self.assertIn("already maps to alice",
                      problems["/accounts/bob@example.edu/certificate_names/0"])
        self.assertIn("not another account", problems["/accounts/bob@example.edu/may_act_for/0"])

    def test_not_json_and_duplicate_keys(self) -> None:
        self.assertIn("not valid JSON", self.problems(b"{")[""])
        problems = self.problems(b'{"version": 1, "version": 1, "accounts": {}}')
        self.assertEqual(problems, {"/version": "appears more than once"})

    def test_missing_field(self) -> None:
        users = self.users(alice())
        doc = json.loads(FilePath(users.path).getContent())
        del doc["accounts"]["alice@example.edu"]["scram"]["SHA-1"]["server_key"]
        self.assertEqual(self.problems(doc),
                         {"/accounts/alice@example.edu/scram/SHA-1/server_key": "is missing"})

    @settings(max_examples=300, deadline=None)
    @given(st.fixed_dictionaries({"version": st.just(1) | JSON, "accounts": st.dictionaries(
        st.sampled_from(["a@b.c", "A@b.c", "d@b.c"]) | st.text(max_size=5), NEAR_ACCOUNT)}))
    def test_any_json_gives_a_table_or_users_file_error(self, doc: Any) -> None:
        try:
            parse_users(json.dumps(doc).encode())
        except UsersFileError as e:
            self.assertTrue(e.problems)

    def test_secret_without_mechanism_beside_scram_keys(self) -> None:
        users = self.users(alice())
        doc = json.loads(FilePath(users.path).getContent())
        doc["accounts"]["alice@example.edu"]["legacy"] = {"mechanisms": [], "secret": "x"}
        self.assertIn("remove it", self.problems(doc)["/accounts/alice@example.edu/legacy"])

    def test_open_mode_refused(self) -> None:
        users = self.write_raw({"version": 1, "accounts": {}}, mode=0o640)
        e = self.assertRaises(UsersFileError, users.load)
        self.assertIn("mode 0640", e.one_line())
        os.chmod(users.path, 0o400)
        self.assertEqual(users.load().accounts, {})

    def test_missing_file(self) -> None:
        e = self.assertRaises(UsersFileError, UsersFile(self.mktemp()).load)
        self.assertIn("No such file", str(e))

    def test_failed_write_keeps_old_file(self) -> None:
        for step in ("fsync", "replace"):
            def broken(*args: Any, step: str = step) -> None:
                raise OSError(f"{step} failed")

            users = UsersFile(self.users(alice()).path, **{step: broken})
            before = FilePath(users.path).getContent()
            self.assertRaises(OSError, users.save, {})
            self.assertEqual(FilePath(users.path).getContent(), before)
            self.assertEqual(sorted(os.listdir(os.path.dirname(users.path))),
                             [os.path.basename(users.path)])

    def test_rewrite_keeps_owner(self) -> None:
        users = self.users(alice())
        if os.geteuid() != 0:
            raise SkipTest("only root can give a file to another user")
        os.chown(users.path, 4321, 4322)
        users.save({})
        st = os.stat(users.path)
        self.assertEqual((st.st_uid, st.st_gid, st.st_mode & 0o777), (4321, 4322, 0o600))

    def test_save_refuses_conflicts(self) -> None:
        users = self.users(alice())
        bob = Account("bob@example.edu", addresses=("a.smith@example.edu",))
        self.assertRaises(UsersFileError, users.save, {"alice@example.edu": alice(),
                                                       "bob@example.edu": bob})

    def test_no_password_in_file_for_scram_only_account(self) -> None:
        users = self.users(alice())
        text = FilePath(users.path).getContent()
        self.assertNotIn(PASSWORD.encode(), text)
        self.assertNotIn(b"secret", text)


class DirectoryTests(FileCase):
    def test_provides_interface(self) -> None:
        directory, _ = self.directory(alice())
        self.assertTrue(verifyObject(IAuthBackend, directory))

    def test_check_password_case_insensitive(self) -> None:
        directory, _ = self.directory(alice(), default_domain="Example.EDU")
        for name in ("alice@example.edu", "ALICE@Example.Edu", "Alice"):
            self.assertEqual(self.successResultOf(
                directory.check_password(name, PASSWORD.encode())), "alice@example.edu")
        self.assertIsNone(self.successResultOf(directory.check_password("alice", b"wrong")))
        self.assertIsNone(self.successResultOf(directory.check_password("nobody", b"x")))

    def test_unknown_account_costs_a_real_check(self) -> None:
        """No timing oracle: an unknown name runs PBKDF2 like a known one."""
        calls: list[tuple[Any, ...]] = []

        def recording(f: Any, *a: Any) -> Deferred[Any]:
            calls.append((f, *a))
            return synchronously(f, *a)

        directory, _ = self.directory(alice(), run_in_thread=recording)
        self.assertIsNone(self.successResultOf(directory.check_password("nobody@x.y", b"pw")))
        self.successResultOf(directory.check_password("alice@example.edu", b"pw"))
        (f1, keys1, _), (f2, keys2, _) = calls
        self.assertEqual((f1, keys1.iterations, keys1.algorithm),
                         (f2, keys2.iterations, keys2.algorithm))
        self.assertIs(f1, password_matches)

    def test_bare_name_without_default_domain(self) -> None:
        directory, _ = self.directory(alice())
        d = directory.check_password("alice", PASSWORD.encode())
        self.assertIsNone(self.successResultOf(d))

    def test_disabled_account_looks_unknown(self) -> None:
        directory, _ = self.directory(alice(enabled=False, legacy=Legacy(("APOP",), "s")))
        name = "alice@example.edu"
        self.assertIsNone(self.successResultOf(directory.check_password(name, PASSWORD.encode())))
        self.assertIsNone(self.successResultOf(directory.scram_credentials(name, "SHA-256")))
        self.assertIsNone(self.successResultOf(directory.legacy_secret(name, "APOP")))
        self.assertFalse(self.successResultOf(directory.may_act_as(name, name)))

    def test_scram_credentials(self) -> None:
        directory, _ = self.directory(alice())
        keys = self.successResultOf(directory.scram_credentials("ALICE@example.edu", "SHA-1"))
        self.assertEqual((keys.account, keys.algorithm), ("alice@example.edu", "SHA-1"))
        self.assertTrue(password_matches(keys, PASSWORD))

    def test_legacy_secret_only_for_enabled_mechanisms(self) -> None:
        directory, _ = self.directory(alice(legacy=Legacy(("APOP",), "tanstaaf")),
                                      Account("bob@example.edu", scram=scram("bob@example.edu")))
        self.assertEqual(self.successResultOf(directory.legacy_secret("alice@example.edu", "APOP")),
                         ("alice@example.edu", b"tanstaaf"))
        self.assertIsNone(self.successResultOf(
            directory.legacy_secret("alice@example.edu", "CRAM-MD5")))
        self.assertIsNone(self.successResultOf(directory.legacy_secret("bob@example.edu", "APOP")))

    def test_upgrade_on_plain_login(self) -> None:
        imported = Account("carol@example.edu", legacy=Legacy((), "carols-old-pw"))
        apop = Account("dave@example.edu", legacy=Legacy(("APOP",), "daves-pw"))
        directory, users = self.directory(imported, apop)
        d = directory.check_password("carol@example.edu", b"no")
        self.assertIsNone(self.successResultOf(d))
        self.assertIsNone(users.load().accounts["carol@example.edu"].scram_keys("SHA-256"))
        self.assertEqual(self.successResultOf(
            directory.check_password("carol@example.edu", b"carols-old-pw")), "carol@example.edu")
        self.assertEqual(self.successResultOf(
            directory.check_password("dave@example.edu", b"daves-pw")), "dave@example.edu")
        stored = users.load().accounts
        carol, dave = stored["carol@example.edu"], stored["dave@example.edu"]
        self.assertEqual([k.algorithm for k in carol.scram], ["SHA-1", "SHA-256"])
        self.assertTrue(password_matches(carol.scram_keys("SHA-256"), b"carols-old-pw"))
        self.assertIsNone(carol.legacy)  # an import's secret goes once the keys exist
        self.assertNotIn(b"carols-old-pw", FilePath(users.path).getContent())
        self.assertEqual(dave.legacy, Legacy(("APOP",), "daves-pw"))  # still needed for APOP
        self.assertEqual(len(dave.scram), 2)
        self.assertEqual(len(directory.account("carol@example.edu").scram), 2)

    def test_write_keeps_concurrent_admin_changes(self) -> None:
        """The gateway re-reads under the lock: it never undoes an admin's edit."""
        directory, users = self.directory(Account("carol@example.edu", legacy=Legacy((), "pw")))
        users.update(lambda accounts: accounts.update({"bob@example.edu": Account(
            "bob@example.edu")}))
        self.successResultOf(directory.check_password("carol@example.edu", b"pw"))
        self.assertEqual(sorted(users.load().accounts), ["bob@example.edu", "carol@example.edu"])

    def test_otp_advance_is_compare_and_set_on_disk(self) -> None:
        # The stored OTP is the one b"\x02" * 8 hashes to (the CAS checks the chain).
        state = OTPState("alice@example.edu", "md5", "ke1234", 100,
                         rfc2289.step("md5", b"\x02" * 8))
        pending: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

        def later(f: Any, *a: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append((f, a, d))
            return d

        users = self.users(alice(otp=state))
        directory = FileDirectory(users, run_in_thread=later)
        d = directory.otp_advance("alice@example.edu", 99, b"\x02" * 8)
        self.assertNoResult(d)
        self.assertEqual(users.load().accounts["alice@example.edu"].otp.sequence, 100)
        f, a, inner = pending.pop()
        inner.callback(f(*a))
        self.assertTrue(self.successResultOf(d))
        on_disk = users.load().accounts["alice@example.edu"].otp
        self.assertEqual((on_disk.sequence, on_disk.key), (99, b"\x02" * 8))
        replay = directory.otp_advance("alice@example.edu", 99, b"\x02" * 8)
        f, a, inner = pending.pop()
        inner.callback(f(*a))
        self.assertFalse(self.successResultOf(replay))
        state = self.successResultOf(directory.otp_state("Alice@example.edu"))
        self.assertEqual(state.sequence, 99)

    def test_otp_reinitialise(self) -> None:
        """RFC 2243: a new seed and sequence, only with the current OTP's CAS."""
        state = OTPState("alice@example.edu", "md5", "ke1234", 100,
                         rfc2289.step("md5", b"\x02" * 8))
        directory, users = self.directory(alice(otp=state))
        new = OTPState("alice@example.edu", "sha1", "ne0001", 500, b"\x03" * 8)
        self.assertFalse(self.successResultOf(
            directory.otp_reinitialise("alice@example.edu", 98, b"\x02" * 8, new)))
        self.assertTrue(self.successResultOf(
            directory.otp_reinitialise("alice@example.edu", 99, b"\x02" * 8, new)))
        on_disk = users.load().accounts["alice@example.edu"].otp
        self.assertEqual((on_disk.algorithm, on_disk.seed, on_disk.sequence, on_disk.key),
                         ("sha1", "ne0001", 500, b"\x03" * 8))

    def test_addresses(self) -> None:
        directory, _ = self.directory(alice())
        self.assertEqual(self.successResultOf(directory.addresses_of("alice@example.edu")),
                         ("alice@example.edu", "a.smith@example.edu"))
        self.assertEqual(self.successResultOf(
            directory.account_for_address("A.Smith@EXAMPLE.edu")), "alice@example.edu")
        self.assertIsNone(self.successResultOf(directory.account_for_address("x@example.edu")))
        self.assertEqual([a.name for a in directory.accounts()], ["alice@example.edu"])

    def test_may_act_as(self) -> None:
        shared = Account("shared@example.edu")
        directory, _ = self.directory(alice(may_act_for=("shared@example.edu",)), shared)
        self.assertTrue(self.successResultOf(directory.may_act_as("alice@example.edu",
                                                                  "Shared@example.edu")))
        self.assertFalse(self.successResultOf(directory.may_act_as("shared@example.edu",
                                                                   "alice@example.edu")))


def certificate(cn: str, emails: list[str], email_attribute: str | None = None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if email_attribute:
        attributes.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email_attribute))
    name = x509.Name(attributes)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(1).not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(days=1)))
    if emails:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(e) for e in emails]), critical=False)
    return builder.sign(key, hashes.SHA256())


class CertificateTests(FileCase):
    def test_email_rule(self) -> None:
        directory, _ = self.directory(alice(), Account("bob@example.edu", enabled=False))
        mapped = lambda cert: self.successResultOf(directory.account_for_certificate(cert))  # noqa
        self.assertEqual(mapped(certificate("x", ["Alice@Example.edu"])), "alice@example.edu")
        self.assertEqual(mapped(certificate("x", [], "alice@example.edu")), "alice@example.edu")
        pyopenssl = crypto.X509.from_cryptography(certificate("x", ["alice@example.edu"]))
        self.assertEqual(mapped(pyopenssl), "alice@example.edu")
        self.assertIsNone(mapped(certificate("alice@example.edu", [])))  # CN ignored
        self.assertIsNone(mapped(certificate("x", ["bob@example.edu"])))  # disabled
        self.assertIsNone(mapped(certificate("x", ["nobody@example.edu"])))
        self.assertIsNone(mapped(object()))

    def test_cn_rule_and_certificate_names(self) -> None:
        directory, _ = self.directory(alice(certificate_names=("Alice Smith",)),
                                      Account("bob@example.edu"), certificate_rule="cn",
                                      default_domain="example.edu")
        mapped = lambda cert: self.successResultOf(directory.account_for_certificate(cert))  # noqa
        self.assertEqual(mapped(certificate("alice smith", [])), "alice@example.edu")
        self.assertEqual(mapped(certificate("bob", [])), "bob@example.edu")
        self.assertIsNone(mapped(certificate("x", ["alice@example.edu"])))  # SAN ignored

    def test_ambiguous_names_map_to_no_one(self) -> None:
        directory, _ = self.directory(alice(), Account("bob@example.edu"))
        cert = certificate("x", ["alice@example.edu", "bob@example.edu"])
        self.assertIsNone(self.successResultOf(directory.account_for_certificate(cert)))

    def test_unknown_rule_refused(self) -> None:
        users = self.users(alice())
        self.assertRaises(ValueError, FileDirectory, users, certificate_rule="serial")


class ReloadTests(FileCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.dir, self.file = self.directory(alice(), log=Logger(observer=self.events.append))

    def break_file(self) -> None:
        fp = FilePath(self.file.path)
        fp.setContent(b'{"version": 1, "accounts": {"x": 1}}')
        os.chmod(fp.path, 0o600)

    def test_reload(self) -> None:
        self.file.update(lambda a: a.update({"bob@example.edu": Account("bob@example.edu")}))
        self.assertIsNone(self.dir.account("bob@example.edu"))
        self.assertTrue(self.successResultOf(self.dir.reload()))
        self.assertIsNotNone(self.dir.account("bob@example.edu"))

    def test_reload_broken_file_keeps_old_data(self) -> None:
        self.break_file()
        self.assertFalse(self.successResultOf(self.dir.reload()))
        self.assertIsNotNone(self.dir.account("alice@example.edu"))
        self.assertIn("/accounts/x", self.events[-1]["error"])

    def test_watch(self) -> None:
        clock = Clock()
        loop = self.dir.watch(clock, interval=2.0)
        self.addCleanup(loop.stop)
        self.file.update(lambda a: a.update({"bob@example.edu": Account("bob@example.edu")}))
        clock.advance(1.9)
        self.assertIsNone(self.dir.account("bob@example.edu"))
        clock.advance(0.1)
        self.assertIsNotNone(self.dir.account("bob@example.edu"))
        self.break_file()
        clock.advance(2)
        self.assertIsNotNone(self.dir.account("bob@example.edu"))
        clock.advance(2)  # the same broken file is reported once, not once per poll
        self.assertEqual(len([e for e in self.events if "error" in e]), 1)
        self.file.save({"carol@example.edu": Account("carol@example.edu")})
        clock.advance(2)
        self.assertIsNone(self.dir.account("alice@example.edu"))
        self.assertIsNotNone(self.dir.account("carol@example.edu"))

    def test_own_writes_do_not_trigger_reload(self) -> None:
        events: list[dict[str, Any]] = []
        directory, _ = self.directory(Account("carol@example.edu", legacy=Legacy((), "pw")),
                                      log=Logger(observer=events.append))
        clock = Clock()
        loop = directory.watch(clock, interval=2.0)
        self.addCleanup(loop.stop)
        self.successResultOf(directory.check_password("carol@example.edu", b"pw"))
        self.assertIn("stored SCRAM keys", events[-1]["log_format"])
        clock.advance(2)
        self.assertEqual([e for e in events if "reloaded" in e["log_format"]], [])
