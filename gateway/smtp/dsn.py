# -*- test-case-name: tests.test_smtp_dsn -*-
"""
Delivery status notifications: the DSN parameters of MAIL and RCPT (RFC
3461) and the "delivered" report (RFC 3464), as pure functions.

- L{parse_mail} and L{parse_rcpt} validate C{RET}, C{ENVID}, C{NOTIFY} and
  C{ORCPT} (501 5.5.4 when malformed); the server keeps them in a
  L{Transaction} on the envelope.
- L{settle} says, once a message is stored and spooled, what the
  parameters ask for: the C{"dsn"} record the spool keeps for the outbound
  queue (which will send or honour them further, RFC 3461 section 6.2),
  and which recipients get a success notice.
- L{success_report} writes that notice: a C{multipart/report} with the
  original message's header only (RFC 3461 section 4.3: a report without
  failures returns only the headers, whatever RET says), sent with the
  null reverse-path so that it never causes a notice itself.

An alias with one target is forwarding: its recipient's parameters go to
the target (RFC 3461 section 6.2.7.1).  An alias with several targets is
a list: with NOTIFY=SUCCESS the recipient is reported "expanded", and the
targets keep the other conditions without SUCCESS, so the sender does not
hear once per member (section 6.2.7.2 and 6.2.7.3; Postfix does the same).
"""

from __future__ import annotations

import email.utils
import re
import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.smtp.address import AddressError

#: RFC 3461 section 4.1.
CONDITIONS = ("SUCCESS", "FAILURE", "DELAY")
#: RFC 3461 section 4.4: an ENVID of up to 100 characters.
MAX_ENVID = 100
#: RFC 3461 section 4.2: "the entire ORCPT parameter MAY be up to 500
#: characters", of which C{ORCPT=} is six.
MAX_ORCPT = 500 - len("ORCPT=")

_HEX = re.compile(r"[0-9A-F]{2}")
#: RFC 5322 atext, for the addr-type of ORCPT.
_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+$")


def _malformed(what: str) -> AddressError:
    return AddressError(501, "5.5.4", f"malformed {what} parameter")


def decode_xtext(value: str) -> str:
    """
    RFC 3461 section 4: C{"+"} and two upper-case hex digits stand for one
    octet; every other character from C{!} to C{~} except C{+} and C{=}
    stands for itself.

    @raise ValueError: C{value} is not xtext.
    """
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "+":
            pair = value[i + 1:i + 3]
            if not _HEX.fullmatch(pair):
                raise ValueError(f"bad xtext escape at {i}")
            out.append(chr(int(pair, 16)))
            i += 3
            continue
        if not "!" <= c <= "~" or c == "=":
            raise ValueError(f"bad xtext character at {i}")
        out.append(c)
        i += 1
    return "".join(out)


def encode_xtext(text: str) -> str:
    """The xtext of C{text}; a non-ASCII character is its UTF-8 octets."""
    out = []
    for c in text:
        if "!" <= c <= "~" and c not in "+=":
            out.append(c)
        else:
            out.extend(f"+{b:02X}" for b in c.encode("utf-8"))
    return "".join(out)


def _printable(text: str) -> bool:
    return all(" " <= c <= "~" for c in text)


@dataclass(frozen=True)
class RecipientParameters:
    """
    What RCPT asked for.

    @ivar notify: C{None} when NOTIFY was not given (the next hop decides:
        usually FAILURE and DELAY), else C{("NEVER",)} or a subset of
        L{CONDITIONS} in the order given.
    @ivar orcpt: the ORCPT value exactly as received (C{addr-type;xtext}),
        for the next hop, or C{None}.
    """

    notify: tuple[str, ...] | None = None
    orcpt: str | None = None

    def wants(self, condition: str) -> bool:
        return self.notify is not None and condition in self.notify

    @property
    def original_recipient(self) -> str | None:
        """The C{Original-Recipient} field's value (RFC 3464 section
        2.3.1): the address type and the decoded address."""
        if self.orcpt is None:
            return None
        kind, _, xtext = self.orcpt.partition(";")
        return f"{kind};{decode_xtext(xtext)}"

    def record(self) -> dict[str, Any]:
        return {"notify": list(self.notify) if self.notify is not None else None,
                "orcpt": self.orcpt}


@dataclass
class Transaction:
    """
    The DSN parameters of one mail transaction.

    @ivar ret: C{"FULL"}, C{"HDRS"} or C{None} (not given).
    @ivar envid: the decoded ENVID, or C{None}.
    @ivar recipients: RCPT address (as accepted) -> its parameters; a
        recipient given twice keeps its first parameters.
    """

    ret: str | None = None
    envid: str | None = None
    recipients: dict[str, RecipientParameters] = field(default_factory=dict)

    def add(self, recipient: str, parameters: RecipientParameters) -> None:
        self.recipients.setdefault(recipient, parameters)

    def of(self, recipient: str) -> RecipientParameters:
        return self.recipients.get(recipient, RecipientParameters())


def parse_mail(params: dict[str, str | None]) -> Transaction | None:
    """
    RET and ENVID of MAIL FROM (RFC 3461 sections 4.3 and 4.4); other
    parameters are the caller's.

    @return: C{None} when neither is given.
    @raise AddressError: 501 5.5.4 when one is malformed.
    """
    if "RET" not in params and "ENVID" not in params:
        return None
    ret = params.get("RET")
    if "RET" in params:
        if ret is None or ret.upper() not in ("FULL", "HDRS"):
            raise _malformed("RET")
        ret = ret.upper()
    envid = None
    if "ENVID" in params:
        raw = params["ENVID"]
        if not raw or len(raw) > MAX_ENVID:
            raise _malformed("ENVID")
        try:
            envid = decode_xtext(raw)
        except ValueError:
            raise _malformed("ENVID") from None
        if not _printable(envid):
            raise _malformed("ENVID")
    return Transaction(ret, envid)


def parse_rcpt(params: dict[str, str | None]) -> RecipientParameters | None:
    """
    NOTIFY and ORCPT of RCPT TO (RFC 3461 sections 4.1 and 4.2); other
    parameters are the caller's.

    @return: C{None} when neither is given.
    @raise AddressError: 501 5.5.4 when one is malformed, or NEVER is
        combined with a condition.
    """
    if "NOTIFY" not in params and "ORCPT" not in params:
        return None
    notify = None
    if "NOTIFY" in params:
        raw = params["NOTIFY"]
        items = [item.upper() for item in (raw or "").split(",")]
        if not raw or any(item not in ("NEVER", *CONDITIONS) for item in items):
            raise _malformed("NOTIFY")
        if len(set(items)) != len(items):
            raise _malformed("NOTIFY")
        if "NEVER" in items and len(items) > 1:
            raise AddressError(501, "5.5.4", "NOTIFY=NEVER cannot be combined with other values")
        notify = tuple(items)
    orcpt = None
    if "ORCPT" in params:
        raw = params["ORCPT"] or ""
        kind, semicolon, xtext = raw.partition(";")
        if not semicolon or not xtext or len(raw) > MAX_ORCPT or not _ATOM.match(kind):
            raise _malformed("ORCPT")
        try:
            address = decode_xtext(xtext)
        except ValueError:
            raise _malformed("ORCPT") from None
        if kind.lower() == "rfc822" and not _printable(address):
            # RFC 3461 section 4.2: US-ASCII before encoding.  Other types
            # (RFC 6533 utf-8) have rules of their own, which the next hop
            # applies: they are kept as received.
            raise _malformed("ORCPT")
        orcpt = raw
    return RecipientParameters(notify, orcpt)


# What a stored message leaves to do


class Resolver(Protocol):
    def expand(self, address: str) -> list[str]: ...

    def receiver_of(self, address: str) -> str | None: ...


@dataclass(frozen=True)
class Status:
    """One recipient's part of a report (RFC 3464 section 2.3)."""

    final: str
    action: str  # "delivered" or "expanded"
    original: str | None = None  # the Original-Recipient value
    status: str = "2.0.0"


@dataclass(frozen=True)
class Settlement:
    """
    @ivar spool: the spool envelope's C{"dsn"} member, or C{None} when no
        spooled recipient has parameters: C{{"ret", "envid", "recipients":
        {final address: {"notify", "orcpt", "rcpt"}}}}, C{rcpt} being the
        address the client gave (the ORCPT a relaying MTA may add, RFC 3461
        section 4.2).
    @ivar successes: the recipients to report as delivered or expanded.
    """

    spool: dict[str, Any] | None
    successes: tuple[Status, ...]


def settle(transaction: Transaction, recipients: Iterable[str], resolver: Resolver,
           stored: Collection[str], spooled: Collection[str]) -> Settlement:
    """
    @param recipients: the accepted RCPT addresses, in order.
    @param stored: the accounts whose copy is on disk.
    @param spooled: the final addresses put in the outbound spool.
    """
    records: dict[str, dict[str, Any]] = {}
    successes: list[Status] = []
    reported: set[str] = set()
    spooled_keys = {address.lower() for address in spooled}
    for rcpt in recipients:
        params = transaction.of(rcpt)
        finals = resolver.expand(rcpt)
        # One report per recipient: the same address given twice (in any
        # case: the directory does not tell them apart) got one copy.
        first_time = rcpt.lower() not in reported
        reported.add(rcpt.lower())
        if len(finals) > 1:
            inherited = params.notify
            if inherited is not None and "SUCCESS" in inherited:
                rest = tuple(c for c in inherited if c != "SUCCESS")
                inherited = rest or ("NEVER",)
                if first_time:
                    successes.append(Status(rcpt, "expanded", params.original_recipient))
            params = RecipientParameters(inherited, params.orcpt)
        for final in finals:
            key = final.lower()
            if key in spooled_keys:
                if key not in records:
                    records[key] = {"address": final, **params.record(), "rcpt": rcpt}
                continue
            account = resolver.receiver_of(final)
            if (len(finals) == 1 and account is not None and account in stored
                    and params.wants("SUCCESS") and first_time):
                successes.append(Status(final, "delivered", params.original_recipient))
    spool = None
    if any(r["notify"] is not None or r["orcpt"] is not None for r in records.values()) \
            or transaction.ret is not None or transaction.envid is not None:
        spool = {"ret": transaction.ret, "envid": transaction.envid,
                 "recipients": {r.pop("address"): r for r in records.values()}}
    return Settlement(spool, tuple(successes))


# The report (RFC 3464)


#: At most this much of the original header goes back in a notice (as
#: Postfix's C{bounce_size_limit}): whoever asked for a success notice
#: chose its recipient, and a message without a blank line is all header.
RETURNED_HEADER_LIMIT = 50_000


def _header_block(message: bytes) -> bytes:
    """The header section of C{message}, each field ending in CRLF, cut
    after the last whole line within L{RETURNED_HEADER_LIMIT} octets."""
    if message.startswith(b"\r\n"):
        return b""
    end = message.find(b"\r\n\r\n", 0, RETURNED_HEADER_LIMIT + 2)
    if end >= 0:
        return message[:end + 2]
    last = message.rfind(b"\r\n", 0, RETURNED_HEADER_LIMIT)
    return message[:last + 2] if last >= 0 else b""


def _address_type(address: str) -> str:
    return "rfc822" if address.isascii() else "utf-8"


def success_report(*, hostname: str, sender: str, queue_id: str, envid: str | None,
                   arrival: float, now: float, statuses: Iterable[Status],
                   message: bytes) -> bytes:
    """
    A success DSN for C{sender}: C{multipart/report;
    report-type=delivery-status} with a text part, the
    C{message/delivery-status} part and the original header
    (C{text/rfc822-headers}).  With non-ASCII addresses or header (SMTPUTF8
    mail) the parts are their RFC 6533 counterparts
    (C{message/global-delivery-status}, C{message/global-headers}).

    @param message: the message as stored (trace header included); only
        its header is returned.
    """
    statuses = list(statuses)
    headers = _header_block(message)
    texts = [sender, *(s.final for s in statuses), *(s.original or "" for s in statuses)]
    international = not headers.isascii() or not all(t.isascii() for t in texts)
    boundary = f"{queue_id}.{secrets.token_hex(8)}/{hostname}"
    while boundary.encode("utf-8") in headers:  # pragma: no cover - 64 random bits
        boundary = f"{queue_id}.{secrets.token_hex(8)}/{hostname}"

    fields = [f"Reporting-MTA: dns; {hostname}"]
    if envid is not None:
        fields.append(f"Original-Envelope-Id: {envid}")
    fields.append(f"Arrival-Date: {email.utils.formatdate(arrival)}")
    fields.append("")
    explained = []
    for s in statuses:
        if s.original is not None:
            fields.append(f"Original-Recipient: {s.original}")
        fields += [f"Final-Recipient: {_address_type(s.final)}; {s.final}",
                   f"Action: {s.action}", f"Status: {s.status}", ""]
        what = "delivered to the mailbox" if s.action == "delivered" \
            else "delivered to the members of this list"
        explained.append(f"<{s.final}>: {what}")
    charset = "utf-8" if international else "us-ascii"
    report_type = "message/global-delivery-status" if international else "message/delivery-status"
    headers_type = "message/global-headers" if international else "text/rfc822-headers"
    text = [
        f"This is the mail system at host {hostname}.",
        "",
        "Your message was delivered to the destinations listed below."
        if len(statuses) > 1 else "Your message was delivered to the destination listed below.",
        "",
        *explained,
    ]
    top = [
        f"Date: {email.utils.formatdate(now)}",
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        "Subject: Successful Mail Delivery Report",
        f"Message-ID: <{queue_id}.{int(now)}.dsn@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        # RFC 6522 section 3: report-type names the second part's subtype.
        f"Content-Type: multipart/report; report-type={report_type.partition('/')[2]};"
        f'\r\n\tboundary="{boundary}"',
    ]
    if international:
        top.append("Content-Transfer-Encoding: 8bit")
    parts = [
        "\r\n".join(top),
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        f"Content-Type: text/plain; charset={charset}",
        "Content-Description: Notification",
        "",
        *text,
        "",
        f"--{boundary}",
        f"Content-Type: {report_type}",
        "Content-Description: Delivery report",
        "",
        *fields,
        f"--{boundary}",
        f"Content-Type: {headers_type}",
        "Content-Description: Message headers",
        "",
        "",
    ]
    return ("\r\n".join(parts).encode("utf-8") + headers + b"\r\n"
            + f"--{boundary}--\r\n".encode())
