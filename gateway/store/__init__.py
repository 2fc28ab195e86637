"""
The mail store shared by POP3, IMAP and SMTP delivery: Maildir++ folders with
a per-account index (UIDs, flags, sizes, dates), durable delivery, quotas.
The contract is L{gateway.interfaces.IMailStore}; value types and errors are
in L{gateway.store.model}.
"""
