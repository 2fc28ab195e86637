"""
The design's import rules (../shared/DESIGN.md, "Module map"), checked so
they stay true:

- only the composition root (service.py, tap.py) imports the global reactor;
- protocol packages never import each other;
- protocol code imports no storage or policy implementation, only
  interfaces, the auth core and the shared protocol base;
- the plugin drop-in imports nothing of the gateway at import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support import ROOT

GATEWAY = ROOT / "gateway"
PROTOCOLS = ("gateway.pop3", "gateway.imap", "gateway.smtp")


def modules() -> dict[str, Path]:
    found = {}
    for path in GATEWAY.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """Every import in a module, including those inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names], node.lineno))
    return out


class ImportRuleTests(SynchronousTestCase):
    def test_global_reactor_only_in_root(self) -> None:
        offenders = []
        for name, path in modules().items():
            if name in ("gateway.service", "gateway.tap"):
                continue
            for module, names, line in imports(path):
                if module == "twisted.internet.reactor" or (
                        module == "twisted.internet" and "reactor" in names):
                    offenders.append(f"{name}:{line}")
        self.assertEqual(offenders, [])

    def test_protocols_do_not_import_each_other(self) -> None:
        offenders = []
        for name, path in modules().items():
            mine = next((p for p in PROTOCOLS if name == p or name.startswith(p + ".")), None)
            if mine is None:
                continue
            for module, _, line in imports(path):
                for other in PROTOCOLS:
                    if other != mine and (module == other or module.startswith(other + ".")):
                        offenders.append(f"{name}:{line} imports {module}")
        self.assertEqual(offenders, [])

    def test_lower_layers_do_not_import_upward(self) -> None:
        """auth, config, tls, errors, interfaces never import protocols or the root."""
        upper = PROTOCOLS + ("gateway.service", "gateway.tap", "gateway.cli", "gateway.protocol")
        offenders = []
        for name, path in modules().items():
            if not name.startswith(("gateway.auth", "gateway.config", "gateway.tls",
                                    "gateway.errors", "gateway.interfaces", "gateway.certs")):
                continue
            for module, _, line in imports(path):
                if any(module == u or module.startswith(u + ".") for u in upper):
                    offenders.append(f"{name}:{line} imports {module}")
        self.assertEqual(offenders, [])

    def test_plugin_is_thin(self) -> None:
        plugin = ROOT / "twisted" / "plugins" / "mailgateway_plugin.py"
        names = [module for module, _, _ in imports(plugin)]
        self.assertEqual(names, ["twisted.application.service"])
        self.assertFalse((ROOT / "twisted" / "plugins" / "__init__.py").exists())
        self.assertFalse((ROOT / "twisted" / "__init__.py").exists())

    def test_rules_see_the_code(self) -> None:
        """The checks above would notice: the walker finds real imports."""
        found = imports(GATEWAY / "service.py")
        self.assertIn("twisted.internet", [m for m, _, _ in found])
        self.assertIn("gateway.pop3.protocol", [m for m, _, _ in found])
