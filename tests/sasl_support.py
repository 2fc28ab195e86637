"""
What the SASL mechanism tests share: driving a mechanism through an
exchange and checking how it failed.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.sasl.base import Failed, Mechanism, Step


class MechanismTestCase(SynchronousTestCase):
    """
    @cvar mechanism_name: the name failures must carry.
    """

    mechanism_name = ""

    def exchange(self, mech: Mechanism, *messages: bytes | None) -> list[Step]:
        """Start C{mech} with the first message, step with the rest."""
        first, *rest = messages
        steps = [self.successResultOf(mech.start(first))]
        for message in rest:
            assert message is not None
            steps.append(self.successResultOf(mech.step(message)))
        return steps

    def assertFailed(self, step: Step, malformed: bool = False) -> Failed:
        self.assertIsInstance(step, Failed)
        assert isinstance(step, Failed)
        self.assertEqual((step.malformed, step.mechanism), (malformed, self.mechanism_name), step)
        return step
