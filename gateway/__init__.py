"""mailgateway: one secure front door (POP3, IMAP4, ESMTP) for an institution's mail."""

__version__ = "0.1.0"
