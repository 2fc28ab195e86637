# -*- test-case-name: tests.test_auth_protocols -*-
"""
The one portal: the realm plus the three checkers every protocol logs in
through (SASL outcomes, APOP, plain passwords), sharing one throttle.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.cred.portal import Portal

from gateway.auth.checkers import APOPChecker, PlainPasswordChecker, SASLOutcomeChecker
from gateway.auth.realm import GatewayRealm
from gateway.auth.throttle import Throttle
from gateway.interfaces import IAuthBackend


def build_portal(realm: GatewayRealm, backend: IAuthBackend | None, throttle: Throttle,
                 canonical: Callable[[str], str] | None = None) -> Portal:
    """
    @param canonical: the directory's name canonicaliser, so the throttle
        counts C{Alice} and C{alice@example.edu} as one account.
    """
    portal = Portal(realm)
    if backend is not None:
        for checker in (SASLOutcomeChecker, APOPChecker, PlainPasswordChecker):
            portal.registerChecker(checker(backend, throttle, canonical=canonical))
    return portal
