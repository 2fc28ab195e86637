"""Tests for L{gateway.config}: every refusal, all errors at once, the samples."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import check_domain, load, parse
from gateway.errors import ConfigError
from tests.support import ROOT, config_text, make_certs, parse_text

IMAPS = """
[[listener]]
name = "imaps"
role = "imap"
endpoint = "tcp:1993:interface=127.0.0.1"
tls = "implicit"
tls_profile = "main"
"""


class ConfigTestMixin:
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.certs = make_certs(self.dir / "certs")

    def text(self, listeners: str = IMAPS, extra: str = "") -> str:
        return config_text(self.dir / "certs", self.dir / "state", listeners, extra)

    def problems(self, text: str) -> list[tuple[str, str]]:
        with self.assertRaises(ConfigError) as cm:
            parse_text(text, self.dir)
        return cm.exception.problems

    def assertProblem(self, text: str, path: str, fragment: str) -> None:
        problems = self.problems(text)
        matching = [m for p, m in problems if p == path and fragment in m]
        self.assertTrue(matching, f"no problem at {path} with {fragment!r} in {problems}")


class ValidConfigTests(ConfigTestMixin, SynchronousTestCase):
    def test_minimal(self) -> None:
        config = parse_text(self.text(), self.dir)
        self.assertEqual(config.server.hostname, "localhost")
        self.assertEqual([lst.name for lst in config.listeners], ["imaps"])
        self.assertEqual(config.listeners[0].protocol, "imap")
        self.assertEqual(config.profile_for(config.listeners[0]).min_version, "TLSv1.2")

    def test_safe_defaults(self) -> None:
        config = parse_text(self.text(), self.dir)
        self.assertFalse(config.auth.plaintext_without_tls)
        self.assertEqual(config.tls["main"].min_version, "TLSv1.2")
        self.assertEqual(config.limits.idle_timeout_pop3, 600.0)
        self.assertIn(ipaddress.ip_network("127.0.0.0/8"), config.server.trusted_networks)

    def test_search_and_close_limits(self) -> None:
        config = parse_text(self.text(), self.dir)
        self.assertEqual((config.limits.max_search_keys, config.limits.max_search_text_keys,
                          config.limits.close_grace), (1000, 50, 5.0))
        config = parse_text(self.text(extra="[limits]\nmax_search_keys = 20\n"
                                            "max_search_text_keys = 2\nclose_grace = 1.5\n"),
                            self.dir)
        self.assertEqual((config.limits.max_search_keys, config.limits.max_search_text_keys,
                          config.limits.close_grace), (20, 2, 1.5))
        self.assertProblem(self.text(extra="[limits]\nclose_grace = 0\n"),
                           "limits.close_grace", "")

    def test_dev_sample(self) -> None:
        """etc/dev.toml is accepted once make run's certificates exist."""
        etc = self.dir / "etc"
        etc.mkdir()
        (etc / "dev-aliases").write_text((ROOT / "etc" / "dev-aliases").read_text())
        make_certs(self.dir / "dev-state" / "certs")
        users = self.dir / "dev-state" / "users.json"
        users.write_text('{"version": 1, "accounts": {}}')
        users.chmod(0o600)
        data = tomllib.loads((ROOT / "etc" / "dev.toml").read_text())
        config = parse(data, etc / "dev.toml")
        ports = sorted(lst.endpoint.split(":")[1] for lst in config.listeners)
        self.assertEqual(ports, ["1110", "1143", "1993", "1995", "2465", "2525", "2587"])
        modes = {lst.name: lst.tls for lst in config.listeners}
        self.assertEqual(modes, {
            "smtp": "starttls", "submission": "starttls", "smtps": "implicit",
            "pop3": "starttls", "pop3s": "implicit", "imap": "starttls", "imaps": "implicit",
        })

    def test_production_sample(self) -> None:
        """etc/gateway.toml is accepted with its files in place."""
        text = (ROOT / "etc" / "gateway.toml").read_text()
        text = text.replace("/etc/mailgateway/", f"{self.dir}/")
        (self.dir / "tls").mkdir()
        for name in ("server.pem", "server.key", "ca.pem"):
            (self.dir / "tls" / name).write_bytes((self.dir / "certs" / name).read_bytes())
        users = self.dir / "users.json"
        users.write_text('{"version": 1, "accounts": {}}')
        users.chmod(0o600)
        (self.dir / "aliases").write_text((ROOT / "etc" / "aliases").read_text())
        config = parse(tomllib.loads(text), self.dir / "gateway.toml")
        self.assertEqual(len(config.listeners), 7)
        self.assertFalse(config.auth.plaintext_without_tls)

    def test_relative_paths(self) -> None:
        """Relative paths are relative to the file's directory."""
        text = self.text().replace(str(self.dir / "certs"), "certs")
        config = parse_text(text, self.dir)
        self.assertEqual(config.tls["main"].certificate, (self.dir / "certs" / "server.pem").resolve())

    def test_load_file(self) -> None:
        path = self.dir / "g.toml"
        path.write_text(self.text())
        self.assertEqual(load(path).path, path.resolve())


class RefusalTests(ConfigTestMixin, SynchronousTestCase):
    def test_unknown_key(self) -> None:
        self.assertProblem(self.text(extra="[limits]\nmax_lines = 3\n"),
                           "limits.max_lines", "unknown key")

    def test_unknown_top_level(self) -> None:
        self.assertProblem("[serverr]\n" + self.text(), "serverr", "unknown key")

    def test_wrong_type(self) -> None:
        self.assertProblem(self.text(extra="[limits]\nmax_connections = \"many\"\n"),
                           "limits.max_connections", "must be an integer, not a string")

    def test_boolean_is_not_a_number(self) -> None:
        self.assertProblem(self.text(extra="[limits]\nmax_connections = true\n"),
                           "limits.max_connections", "not a boolean")

    def test_missing_file(self) -> None:
        text = self.text().replace("server.key", "missing.key")
        self.assertProblem(text, "tls.main.private_key", "file not found")

    def test_duplicate_ports(self) -> None:
        self.assertProblem(self.text(IMAPS + IMAPS.replace('"imaps"', '"other"')),
                           "listener[1].endpoint", "same address as listener[0]")

    def test_wildcard_interface_clashes(self) -> None:
        other = IMAPS.replace('"imaps"', '"other"').replace(":interface=127.0.0.1", "")
        self.assertProblem(self.text(IMAPS + other), "listener[1].endpoint", "same address")

    def test_duplicate_names(self) -> None:
        other = IMAPS.replace("1993", "1994")
        self.assertProblem(self.text(IMAPS + other), "listener[1].name", "duplicate listener name")

    def test_implicit_without_certificate(self) -> None:
        text = self.text(IMAPS.replace('tls_profile = "main"\n', ""))
        self.assertProblem(text, "listener[0].tls_profile", "needs a tls_profile")

    def test_unknown_profile(self) -> None:
        self.assertProblem(self.text(IMAPS.replace('"main"', '"nope"')),
                           "listener[0].tls_profile", "no TLS profile named 'nope'")

    def test_malformed_network(self) -> None:
        text = self.text().replace('local_domains = ["example.test"]',
                                   'local_domains = ["example.test"]\ntrusted_networks = ["10.0.0.1/8"]')
        self.assertProblem(text, "server.trusted_networks[0]", "is not a network")

    def test_malformed_domain(self) -> None:
        text = self.text().replace('["example.test"]', '["exa mple.test"]')
        self.assertProblem(text, "server.local_domains[0]", "not a valid domain name")

    def test_ssl_endpoint_refused(self) -> None:
        text = self.text(IMAPS.replace("tcp:1993", "ssl:1993"))
        self.assertProblem(text, "listener[0].endpoint", "tls = \"implicit\"")

    def test_bad_endpoint(self) -> None:
        self.assertProblem(self.text(IMAPS.replace("tcp:1993", "tcp:99999")),
                           "listener[0].endpoint", "out of range")
        self.assertProblem(self.text(IMAPS.replace("tcp:1993", "bogus:1993")),
                           "listener[0].endpoint", "unknown endpoint type")

    def test_old_tls_refused(self) -> None:
        text = self.text().replace('client_ca =', 'min_version = "TLSv1.0"\nclient_ca =')
        self.assertProblem(text, "tls.main.min_version", "older versions are refused")

    def test_unknown_mechanism(self) -> None:
        self.assertProblem(self.text(extra='[auth]\nmechanisms = ["PLAIN", "X-FOO"]\n'),
                           "auth.mechanisms[1]", "unknown SASL mechanism")

    def test_bad_role_and_mode(self) -> None:
        text = self.text(IMAPS.replace('"imap"', '"ftp"').replace('"implicit"', '"maybe"'))
        problems = dict(self.problems(text))
        self.assertIn("must be one of", problems["listener[0].role"])
        self.assertIn("must be one of", problems["listener[0].tls"])

    def test_submissions_is_implicit(self) -> None:
        text = self.text(IMAPS.replace('"imap"', '"submissions"').replace('"implicit"', '"starttls"'))
        self.assertProblem(text, "listener[0].tls", "RFC 8314")

    def test_no_listener(self) -> None:
        self.assertProblem(self.text(""), "listener", "no listeners")

    def test_short_line_limit(self) -> None:
        self.assertProblem(self.text(extra="[limits]\nmax_line_length = 80\n"),
                           "limits.max_line_length", "at least 1000")

    def test_all_errors_at_once(self) -> None:
        text = self.text(
            IMAPS + IMAPS.replace('"imaps"', '"b"').replace('"main"', '"nope"'),
            extra="[limits]\nmax_lines = 3\nmax_connections = -1\n",
        ).replace("server.key", "missing.key")
        paths = {p for p, _ in self.problems(text)}
        self.assertTrue({"limits.max_lines", "limits.max_connections", "tls.main.private_key",
                         "listener[1].tls_profile", "listener[1].endpoint"} <= paths, paths)

    def test_not_toml(self) -> None:
        path = self.dir / "bad.toml"
        path.write_text("[server\n")
        with self.assertRaises(ConfigError) as cm:
            load(path)
        self.assertIn("not valid TOML", cm.exception.render())

    def test_unreadable(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            load(self.dir / "absent.toml")
        self.assertIn("cannot read", cm.exception.render())


class DomainTests(SynchronousTestCase):
    def test_valid(self) -> None:
        for name in ("example.edu", "mail.example.edu.", "xn--bcher-kva.example", "bücher.example"):
            self.assertIsNone(check_domain(name), name)

    def test_invalid(self) -> None:
        for name in ("", "a..b", "-a.example", "a_b.example", "a b", "x" * 64 + ".example"):
            self.assertIsNotNone(check_domain(name), name)

    @given(st.text(max_size=80))
    def test_never_raises(self, name: str) -> None:
        result = check_domain(name)
        self.assertTrue(result is None or isinstance(result, str))


class PropertyTests(SynchronousTestCase):
    @given(st.dictionaries(st.text(max_size=10), st.one_of(st.integers(), st.text(max_size=5),
                                                         st.booleans(), st.lists(st.integers(), max_size=3)),
                           max_size=5))
    def test_garbage_is_refused_cleanly(self, data: dict) -> None:
        """Any document either parses or raises ConfigError; nothing else."""
        try:
            parse({"server": data, "listener": [data]}, Path("/nonexistent/g.toml"))
        except ConfigError as e:
            self.assertTrue(e.problems)
