# -*- test-case-name: tests.test_policy -*-
"""
The relay policy's L{gateway.smtp.policy.AddressBook} over the user
directory (accounts and their addresses).  Aliases join here when the alias
file arrives.
"""

from __future__ import annotations

from gateway.auth.directory import FileDirectory


class DirectoryAddressBook:
    def __init__(self, directory: FileDirectory) -> None:
        self.directory = directory

    def is_local_recipient(self, address: str) -> bool:
        return self.directory.receiver_of(address) is not None

    def owns(self, account: str, address: str) -> bool:
        owner = self.directory.receiver_of(address)
        return owner is not None and owner == self.directory.canonical_name(account)
