"""
The static checks as tests, so that CI holds what C{make lint} holds: ruff
on the whole tree and mypy (with the zope plugin, C{mypy.ini}) on
C{gateway/}.  C{make test} installs both (the C{lint} extra).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LintTests(TestCase):
    def check(self, module: str, *args: str) -> None:
        if importlib.util.find_spec(module) is None:
            self.fail(f"{module} is not installed: pip install -e '.[lint]' (make test does)")
        run = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)

    def test_ruff(self) -> None:
        self.check("ruff", "check", "--no-cache", "gateway", "tests", "twisted", "tools", "bench")

    def test_mypy(self) -> None:
        self.check("mypy", "--cache-dir", os.devnull)
