# -*- test-case-name: tests.test_aliases -*-
"""
Where an address leads: the user directory (accounts and their addresses)
and the aliases file, as the relay policy's L{gateway.smtp.policy.AddressBook}
and the delivery's router.
"""

from __future__ import annotations

from pathlib import Path

from twisted.logger import Logger

from gateway.auth.directory import FileDirectory
from gateway.smtp.aliases import AliasError, Aliases

log = Logger()


class DirectoryAddressBook:
    def __init__(self, directory: FileDirectory, local_domains: tuple[str, ...] = (),
                 aliases_path: Path | None = None) -> None:
        self.directory = directory
        self.local_domains = local_domains
        self.aliases_path = aliases_path
        self.aliases = Aliases.load(aliases_path)

    def reload(self) -> None:
        """Re-read the aliases file (SIGHUP); a broken file keeps the old table."""
        try:
            self.aliases = Aliases.load(self.aliases_path)
        except AliasError as e:
            log.error("aliases not reloaded, keeping the old ones: {why}", why=str(e))

    def expand(self, address: str) -> list[str]:
        """
        The final addresses of C{address}, without those that are still
        aliases and no account's: the end of a chain cut at
        L{gateway.smtp.aliases.MAX_DEPTH}, or an alias naming itself with no
        mailbox of that name.  Handed to the outbound spool, such an address
        in a local domain would come back here, and round again for ever.
        """
        default = self.local_domains[0] if self.local_domains else ""
        finals = self.aliases.expand(address, self.local_domains, default)
        kept = [final for final in finals
                if self.aliases.lookup(final, self.local_domains) is None
                or self.directory.receiver_of(final) is not None]
        if len(kept) != len(finals):
            log.warn("aliases: {address} leads to {dropped}, still aliases without a mailbox "
                     "(a chain too deep or an alias naming itself): left out",
                     address=address, dropped=[f for f in finals if f not in kept])
        return kept

    def receiver_of(self, address: str) -> str | None:
        return self.directory.receiver_of(address)

    def is_local_recipient(self, address: str) -> bool:
        if self.directory.receiver_of(address) is not None:
            return True
        if self.aliases.lookup(address, self.local_domains) is None:
            return False
        return bool(self.expand(address))  # an alias that only loops leads nowhere

    def owns(self, account: str, address: str) -> bool:
        owner = self.directory.receiver_of(address)
        return owner is not None and owner == self.directory.canonical_name(account)
