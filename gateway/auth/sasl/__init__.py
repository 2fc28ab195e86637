"""
SASL (RFC 4422) server mechanisms, each written once as a protocol-independent
state machine, and used by POP3 AUTH, IMAP AUTHENTICATE and SMTP AUTH through a
thin framing adapter per protocol.
"""
