# -*- test-case-name: tests.test_realm -*-
"""
The one realm behind the one portal.

Every protocol logs in through the same L{Portal}; what the login yields
depends on the interface asked for (an IMAP account, a POP3 mailbox, an SMTP
sender identity).  Later components register an avatar factory per interface
with L{GatewayRealm.register}, so adding storage never touches the service
wiring or the protocols.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.cred.portal import IRealm
from zope.interface import Attribute, Interface, implementer


class IAuthenticatedUser(Interface):
    """The minimal avatar: who logged in."""

    account = Attribute("The canonical account id, e.g. 'alice@example.edu'.")


@implementer(IAuthenticatedUser)
class AuthenticatedUser:
    def __init__(self, account: str) -> None:
        self.account = account

    def __repr__(self) -> str:
        return f"<AuthenticatedUser {self.account}>"


AvatarFactory = Callable[[str, Any], Any]


@implementer(IRealm)
class GatewayRealm:
    """
    Maps an authenticated account id to avatars by interface.
    """

    def __init__(self) -> None:
        self._factories: dict[Any, AvatarFactory] = {
            IAuthenticatedUser: lambda account, mind: AuthenticatedUser(account)
        }

    def register(self, interface: Any, factory: AvatarFactory) -> None:
        """
        @param factory: called with C{(account, mind)}; returns the avatar.
            If the avatar has a C{logout} method it is called at logout.
        """
        self._factories[interface] = factory

    def requestAvatar(
        self, avatarId: Any, mind: Any, *interfaces: Any
    ) -> tuple[Any, Any, Callable[[], None]]:
        account = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else avatarId
        for interface in interfaces:
            factory = self._factories.get(interface)
            if factory is not None:
                avatar = factory(account, mind)
                return interface, avatar, getattr(avatar, "logout", lambda: None)
        raise NotImplementedError(f"no avatar for {interfaces!r}")
