"""Tests for the C{mailgateway} admin command: check, certs, policy explain."""

from __future__ import annotations

import io
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import main
from tests.gatewayprocess import add_account
from tests.support import config_text, make_certs

SMTP = """
[[listener]]
name = "mx"
role = "mx"
endpoint = "tcp:2525:interface=127.0.0.1"
tls = "starttls"
tls_profile = "main"

[[listener]]
name = "submission"
role = "submission"
endpoint = "tcp:2587:interface=127.0.0.1"
tls = "starttls"
tls_profile = "main"
"""


class CLITestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        make_certs(self.dir / "certs")
        self.users = self.dir / "users.json"
        add_account(self.users, "alice@example.test", "alice-pw-123")
        self.config = self.dir / "gateway.toml"
        self.config.write_text(config_text(
            self.dir / "certs", self.dir / "state", SMTP,
            extra=f'[auth]\nusers = "{self.users}"\n\n[policy]\nmax_recipients = 2\n'))

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = main(list(argv), out, err)
        return status, out.getvalue(), err.getvalue()


class CheckTests(CLITestCase):
    def test_valid(self) -> None:
        status, out, err = self.run_cli("check", str(self.config))
        self.assertEqual((status, err), (0, ""))
        self.assertIn("is valid", out)
        self.assertIn("submission", out)
        self.assertIn("users file holds 1 account(s)", out)

    def test_invalid_lists_every_problem(self) -> None:
        self.config.write_text(self.config.read_text() + "\n[limits]\nbogus = 1\nmax_connections = 0\n")
        status, out, err = self.run_cli("check", str(self.config))
        self.assertEqual(status, 1)
        self.assertIn("limits.bogus: unknown key", err)
        self.assertIn("limits.max_connections: must be greater than 0", err)
        self.assertNotIn("Traceback", err)

    def test_open_users_file_refused(self) -> None:
        self.users.chmod(0o644)
        status, out, err = self.run_cli("check", str(self.config))
        self.assertEqual(status, 1)
        self.assertIn("644", err)

    def test_missing_config(self) -> None:
        status, out, err = self.run_cli("check", str(self.dir / "nope.toml"))
        self.assertEqual(status, 1)
        self.assertIn("cannot read", err)


class CertsTests(CLITestCase):
    def test_init_and_client(self) -> None:
        out_dir = self.dir / "made"
        status, out, err = self.run_cli("certs", "init", "--hostname", "mail.example.test",
                                        "--out", str(out_dir))
        self.assertEqual(status, 0, err)
        self.assertIn("mail.example.test", out)
        self.assertEqual((out_dir / "server.key").stat().st_mode & 0o777, 0o600)
        status, out, err = self.run_cli("certs", "client", "alice@example.test",
                                        "--ca-dir", str(out_dir))
        self.assertEqual(status, 0, err)
        self.assertTrue(list((out_dir / "clients").glob("*.p12")))

    def test_init_refuses_bad_hostname(self) -> None:
        status, out, err = self.run_cli("certs", "init", "--hostname", "bad name",
                                        "--out", str(self.dir / "x"))
        self.assertEqual(status, 1)
        self.assertIn("bad name", err)


class PolicyExplainTests(CLITestCase):
    def explain(self, *extra: str) -> tuple[int, str, str]:
        return self.run_cli("policy", "explain", "--config", str(self.config), *extra)

    def test_relay_refused_for_stranger(self) -> None:
        status, out, err = self.explain("--listener", "mx", "--client", "192.0.2.7",
                                        "--from", "x@else.org", "--to", "alice@example.test",
                                        "--to", "y@else.org")
        self.assertEqual(status, 2, err)
        lines = out.splitlines()
        self.assertIn("rule: local-recipient", lines[2])
        self.assertIn("554 5.7.1 relay access denied", lines[3])
        self.assertIn("rule: relay-denied", lines[3])

    def test_authenticated_relay(self) -> None:
        status, out, err = self.explain("--listener", "submission", "--client", "192.0.2.7",
                                        "--auth", "alice@example.test",
                                        "--from", "alice@example.test", "--to", "y@else.org")
        self.assertEqual(status, 0, err)
        self.assertIn("rule: relay-authenticated", out)

    def test_submission_needs_auth_and_limit(self) -> None:
        status, out, _ = self.explain("--listener", "submission", "--client", "192.0.2.7",
                                      "--from", "alice@example.test", "--to", "y@else.org")
        self.assertEqual(status, 2)
        self.assertIn("530 5.7.0", out)
        status, out, _ = self.explain("--listener", "mx", "--client", "192.0.2.7",
                                      "--from", "", "--to", "alice@example.test",
                                      "--to", "alice@example.test", "--to", "alice@example.test")
        self.assertIn("452 4.5.3 too many recipients", out)

    def test_alias_routes_locally(self) -> None:
        aliases = self.dir / "aliases"
        aliases.write_text("postmaster: alice@example.test\nteam: alice, outside@else.org\n")
        self.config.write_text(self.config.read_text().replace(
            'local_domains = ["example.test"]',
            f'local_domains = ["example.test"]\naliases = "{aliases}"'))
        status, out, err = self.explain("--listener", "mx", "--client", "192.0.2.7",
                                        "--from", "x@else.org", "--to", "team@example.test",
                                        "--to", "postmaster@example.test")
        self.assertEqual(status, 0, err)
        self.assertIn("rule: local-recipient", out)
        self.assertIn("rule: postmaster", out)
        status, out, err = self.run_cli("check", str(self.config))
        self.assertEqual(status, 0, err)
        self.assertIn("aliases:        2 in", out)
        self.assertNotIn("warning", out)

    def test_check_warns_about_unrouted_postmaster(self) -> None:
        status, out, err = self.run_cli("check", str(self.config))
        self.assertEqual(status, 0, err)
        self.assertIn("warning: postmaster@example.test leads nowhere", out)

    def test_unknown_listener_and_account(self) -> None:
        status, _, err = self.explain("--listener", "imaps", "--client", "1.2.3.4",
                                      "--from", "a@b.c", "--to", "d@e.f")
        self.assertEqual(status, 1)
        self.assertIn("no SMTP listener", err)
        status, _, err = self.explain("--listener", "mx", "--client", "1.2.3.4", "--auth", "zed",
                                      "--from", "a@b.c", "--to", "d@e.f")
        self.assertEqual(status, 1)
        self.assertIn("no account", err)
