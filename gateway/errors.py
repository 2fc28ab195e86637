# -*- test-case-name: tests.test_errors -*-
"""
One error type that carries protocol meaning.

A L{GatewayError} says what went wrong in words that are safe to show a client,
with the SMTP reply code and RFC 3463 enhanced status code it maps to, and
whether the condition is temporary.  The underlying cause, if any, belongs in the
log, never in the reply.
"""

from __future__ import annotations


class GatewayError(Exception):
    """
    A failure with a client-safe message and protocol meaning.

    @ivar code: the SMTP reply code (e.g. 451, 550).
    @ivar enhanced: the RFC 3463 enhanced status code, e.g. C{"5.7.1"}.
    @ivar text: the text that may be shown to the client.
    @ivar temporary: C{True} when the client may retry later (4xx, C{[SYS/TEMP]}).
    """

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def smtp_reply(self) -> bytes:
        """
        @return: the reply line without CRLF, e.g. C{b"554 5.7.1 Relay access denied"}.
        """
        return f"{self.code} {self.enhanced} {self.text}".encode("ascii", "replace")


class ConfigError(Exception):
    """
    The configuration cannot be used.

    @ivar problems: every problem found, each a C{(key_path, message)} pair.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{len(self.problems)} configuration error(s):"]
        lines += [f"  {path}: {message}" for path, message in self.problems]
        return "\n".join(lines)
