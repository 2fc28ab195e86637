"""The aliases file and routing through it."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway.smtp.aliases import AliasError, Aliases

LOCAL = ("example.edu", "lists.example.edu")

TEXT = """
# the institution's aliases
postmaster: alice@example.edu
staff:      alice@example.edu, bob@example.edu,
            helpdesk@partner.org
info@lists.example.edu: staff
webmaster: postmaster          # chains
loop1: loop2
loop2: loop1
Mixed@Example.edu: bob
"""


class ParseTests(SynchronousTestCase):
    def test_parse(self) -> None:
        a = Aliases.parse(TEXT)
        self.assertEqual(a.table["staff"], ("alice@example.edu", "bob@example.edu",
                                            "helpdesk@partner.org"))
        self.assertEqual(a.table["mixed@example.edu"], ("bob",))

    def test_every_problem_with_its_line(self) -> None:
        with self.assertRaises(AliasError) as cm:
            Aliases.parse("ok: a@b.c\nno colon here\nempty:\nok: again@x.y\nbad: <x>\n", "f")
        self.assertEqual(cm.exception.problems, [
            "f:2: expected 'name: target, ...'", "f:3: empty has no target",
            "f:4: ok defined twice", "f:5: bad target '<x>'"])

    def test_load_missing(self) -> None:
        with self.assertRaises(AliasError):
            Aliases.load(Path(self.mktemp()))
        self.assertEqual(Aliases.load(None).table, {})


class ExpandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.a = Aliases.parse(TEXT)

    def expand(self, address: str) -> list[str]:
        return self.a.expand(address, LOCAL, "example.edu")

    def test_not_an_alias(self) -> None:
        self.assertEqual(self.expand("carol@example.edu"), ["carol@example.edu"])
        self.assertEqual(self.expand("staff@elsewhere.org"), ["staff@elsewhere.org"])

    def test_list_with_external_member(self) -> None:
        self.assertEqual(self.expand("Staff@Example.EDU"),
                         ["alice@example.edu", "bob@example.edu", "helpdesk@partner.org"])

    def test_domain_specific_and_bare_target(self) -> None:
        self.assertEqual(self.expand("info@lists.example.edu"),
                         ["alice@example.edu", "bob@example.edu", "helpdesk@partner.org"])
        self.assertEqual(self.expand("info@example.edu"), ["info@example.edu"])
        self.assertEqual(self.expand("mixed@example.edu"), ["bob@example.edu"])

    def test_chain_and_postmaster(self) -> None:
        self.assertEqual(self.expand("webmaster@lists.example.edu"), ["alice@example.edu"])
        self.assertEqual(self.a.lookup("postmaster", LOCAL), ("alice@example.edu",))

    def test_loop_leads_nowhere(self) -> None:
        self.assertEqual(self.expand("loop1@example.edu"), [])

    def test_depth_limit(self) -> None:
        chain = "\n".join(f"a{i}: a{i + 1}" for i in range(20))
        out = Aliases.parse(chain).expand("a0@example.edu", LOCAL, "example.edu")
        self.assertEqual(len(out), 1)
        self.assertNotEqual(out, ["a20@example.edu"])
