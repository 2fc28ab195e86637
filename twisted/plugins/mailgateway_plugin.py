"""
The twistd drop-in: C{twistd mailgateway --config FILE}.  Nothing else lives
here; the module named below is imported only when the plugin is used.
"""

from twisted.application.service import ServiceMaker

mailgateway = ServiceMaker(
    "mailgateway",
    "gateway.tap",
    "POP3, IMAP4 and ESMTP with TLS on every listener, SASL and a relay policy.",
    "mailgateway",
)
