# -*- test-case-name: tests.test_smtp_transaction,tests.test_smtp_server_review -*-
"""
What happens to an accepted message: trace headers, then the store for
local accounts and the outbound spool for everyone else, both durable before
the client hears 250.

L{Delivery.deliver} answers with one reply for the whole message (SMTP has
one reply after DATA):

- every copy stored or spooled: 250;
- nothing stored, and the store refused every local recipient: that refusal
  (452 4.2.2 over quota, ...), a temporary one if any was temporary, so the
  client keeps the message;
- some copies stored, some refused: 250, and the refused local recipients are
  put in the spool with the rest, so the outbound queue retries or bounces
  them (nothing is lost, and a retrying client does not duplicate the stored
  copies).
"""

from __future__ import annotations

import email.utils
import functools
import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from gateway.interfaces import IMailStore
from gateway.smtp import dsn as dsn_
from gateway.store.model import DeliveryReport

log = Logger()

_random_pool = bytearray()


def new_queue_id() -> str:
    """
    Twelve random hexadecimal digits (they name the spool files, so they
    must not repeat across restarts).  The random bytes are drawn from the
    kernel 3 KB at a time: one C{getrandom} call per message was a
    measurable share of the reactor's time per message.
    """
    if not _random_pool:
        _random_pool.extend(secrets.token_bytes(6 * 512))
    chunk = _random_pool[-6:]
    del _random_pool[-6:]
    return chunk.hex().upper()


@functools.lru_cache(maxsize=4)
def rfc5322_date(second: int) -> str:
    """C{email.utils.formatdate}, once per second (it costs more than the
    rest of the trace line)."""
    return email.utils.formatdate(second)


class Resolver(Protocol):
    def expand(self, address: str) -> list[str]:
        """The final addresses C{address} stands for (aliases followed)."""

    def receiver_of(self, address: str) -> str | None:
        """The local account receiving C{address}, if any."""


class ISpool(Protocol):
    def enqueue(self, sender: str, recipients: list[str], data: bytes,
                queue_id: str, dsn: dict[str, Any] | None = None) -> Deferred[str]:
        """Store a message for later delivery; durable before firing."""


@dataclass
class Envelope:
    """One mail transaction."""

    sender: str
    recipients: list[str] = field(default_factory=list)
    helo: str = ""
    client: str = ""
    encrypted: bool = False
    tls: dict[str, str] | None = None  # version and cipher, when known
    account: str | None = None
    esmtp: bool = True
    utf8: bool = False
    queue_id: str = field(default_factory=lambda: new_queue_id())
    dsn: dsn_.Transaction | None = None  # RFC 3461 parameters, if the client gave any


@dataclass(frozen=True)
class Reply:
    code: int
    enhanced: str
    text: str


def protocol_name(envelope: Envelope) -> str:
    """RFC 3848: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA (UTF8SMTP* with SMTPUTF8)."""
    if not envelope.esmtp:
        return "SMTP"
    name = ("UTF8SMTP" if envelope.utf8 else "ESMTP")
    name += "S" if envelope.encrypted else ""
    name += "A" if envelope.account else ""
    return name


def received_header(envelope: Envelope, hostname: str, when: float, for_: str | None) -> bytes:
    """
    RFC 5321 section 4.4 trace line.  The client's HELO is recorded as a
    claim next to the address we saw; it is never trusted.
    """
    # Printable ASCII only (no CR or LF: no field of the client's making),
    # no "(" or ")" (a comment), no ";" (what follows the field's last ";"
    # is its date, RFC 5322 section 3.6.7: a HELO holding one made a date
    # of the client's choosing the first one).
    helo = "".join(c for c in envelope.helo if 0x21 <= ord(c) < 0x7F and c not in "();")[:255]
    # RFC 5321 section 4.1.3: an IPv6 address literal is tagged.
    client = f"IPv6:{envelope.client}" if ":" in envelope.client else envelope.client
    lines = [f"Received: from {helo or 'unknown'} ([{client}])"]
    tls = ""
    if envelope.tls and envelope.tls.get("version"):
        tls = f" ({envelope.tls['version']} {envelope.tls.get('cipher', '')})".replace(" )", ")")
    lines.append(f"\tby {hostname} (mailgateway) with {protocol_name(envelope)}{tls}")
    lines.append(f"\tid {envelope.queue_id}")
    if for_:
        lines.append(f"\tfor <{for_}>")
    lines[-1] += f"; {rfc5322_date(int(when))}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


class Delivery:
    def __init__(self, store: IMailStore, spool: ISpool, resolver: Resolver,
                 hostname: str, clock: Any) -> None:
        self.store = store
        self.spool = spool
        self.resolver = resolver
        self.hostname = hostname
        self.clock = clock

    def deliver(self, envelope: Envelope, data: bytes) -> Deferred[Reply]:
        now = self.clock.seconds()
        single = envelope.recipients[0] if len(envelope.recipients) == 1 else None
        # A message of our own (a DSN) has no client: no trace line.
        trace = received_header(envelope, self.hostname, now, single) if envelope.client else b""
        local: dict[str, str] = {}
        remote: list[str] = []
        for rcpt in envelope.recipients:
            for final in self.resolver.expand(rcpt):
                account = self.resolver.receiver_of(final)
                if account is not None:
                    local.setdefault(account, final)
                elif final.lower() not in (r.lower() for r in remote):
                    remote.append(final)
        message = trace + data
        stored: Deferred[DeliveryReport]
        if local:
            return_path = f"Return-Path: <{envelope.sender}>\r\n".encode()
            stored = self.store.deliver(list(local), return_path + message, now)
        else:
            stored = succeed(DeliveryReport())

        def after_store(report: DeliveryReport) -> Deferred[Reply] | Reply:
            retry = [local[account] for account in report.refused]
            for account, error in report.refused.items():
                log.info("{id}: {account} refused by the store: {why}", id=envelope.queue_id,
                         account=account, why=error.text)
            if local and not report.stored and not remote:
                # Nothing taken: hand the store's verdict to the client.  A
                # temporary refusal wins over a permanent one: a 5xx would
                # make the client bounce the message for every recipient,
                # also for those who may take it later (a full mailbox).
                refusals = list(report.refused.values())
                first = next((e for e in refusals if e.temporary), refusals[0])
                return Reply(first.code, first.enhanced, first.text)
            spooled = remote + retry
            settled = (dsn_.settle(envelope.dsn, envelope.recipients, self.resolver,
                                   report.stored, spooled) if envelope.dsn is not None else None)
            ok = Reply(250, "2.0.0", f"OK queued as {envelope.queue_id}")
            if not spooled:
                return self._notify(envelope, settled, message, now, ok)
            d = self.spool.enqueue(envelope.sender, spooled, message, envelope.queue_id,
                                   dsn=settled.spool if settled is not None else None)
            return d.addCallback(lambda _: self._notify(envelope, settled, message, now, ok))

        return stored.addCallback(after_store)

    def _notify(self, envelope: Envelope, settled: dsn_.Settlement | None, message: bytes,
                now: float, reply: Reply) -> Deferred[Reply] | Reply:
        """
        The success notices the client asked for (RFC 3461 NOTIFY=SUCCESS),
        from the null reverse-path (so never one about a notice) through
        this same path: stored or spooled before C{reply}.  The message is
        already safe: a notice that fails is logged, never the message's
        failure (a retrying client would duplicate it).
        """
        if settled is None or not settled.successes or not envelope.sender:
            return reply
        assert envelope.dsn is not None
        notice = dsn_.success_report(
            hostname=self.hostname, sender=envelope.sender, queue_id=envelope.queue_id,
            envid=envelope.dsn.envid, arrival=now, now=self.clock.seconds(),
            statuses=settled.successes, message=message)
        report = Envelope(sender="", recipients=[envelope.sender], helo=self.hostname,
                          utf8=envelope.utf8)

        def sent(answer: Reply) -> Deferred[Reply] | Reply:
            log.info("{id}: success notice {notice} to {sender}: {code} {text}",
                     id=envelope.queue_id, notice=report.queue_id, sender=envelope.sender,
                     code=answer.code, text=answer.text)
            if answer.code == 250:
                return reply
            # The sender's mailbox refused it (over quota): the queue
            # retries it, as any refused local copy.
            d = self.spool.enqueue("", [envelope.sender], notice, report.queue_id)
            return d.addCallback(lambda _: reply)

        def failed(failure: Any) -> Reply:
            log.failure("{id}: success notice to {sender} failed", failure,
                        id=envelope.queue_id, sender=envelope.sender)
            return reply

        d: Deferred[Reply] = maybeDeferred(self.deliver, report, notice)
        d.addCallback(sent)
        d.addErrback(failed)  # also a failure of the spool in sent
        return d
