"""
Interoperability tests: the real gateway under twistd against SASL clients
written by others (GNU SASL's gsasl, the Cyrus SASL test clients, Python's
imaplib, smtplib and poplib).
"""
