# -*- test-case-name: tests.test_smtp_transaction,tests.test_smtp_dsn,tests.test_smtp_server_review -*-
"""
The ESMTP server protocol: EHLO, STARTTLS, AUTH and the mail transaction
(MAIL, RCPT, DATA) under the relay policy, with durable delivery before 250.

Timeouts follow RFC 5321 section 4.5.3.2: one while waiting for a command,
one while waiting for each block of a message, none while a delivery is
being written (L{LineProtocol.hold_timeout}), and a bound on the whole
connection.  The DSN parameters (RFC 3461) are checked by
L{gateway.smtp.dsn} and travel on the envelope.

Commands are processed one at a time: while a decision or a delivery is
pending, nothing more is read (L{LineProtocol.serialize}), so pipelined
commands are answered in order (PIPELINING is advertised truthfully).  DATA
is read by L{gateway.smtp.data.DataReader}, which never ends a message early.
Text sent after a refused DATA (RFC 2920 section 3.1: the client must wait)
is never read as commands: the connection is closed.  CHUNKING is not
offered; a BDAT chunk sent anyway is thrown away.  Once the connection is
closing, nothing more of a message is taken (a TLS transport still reads).
A server shutdown waits for the reply of a delivery in progress.

Ours, on L{gateway.protocol.LineProtocol}: Twisted's C{ESMTP} processes
commands pipelined after STARTTLS (CVE-2011-0411), does not reset the session
after the upgrade (RFC 3207 section 4.2), and turns the rest of a message
into commands after an over-long DATA line
(../shared/notes/twisted-mail-gaps.md section 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred

from gateway.auth.realm import IAuthenticatedUser
from gateway.auth.sasl.exchange import LoggedIn, Outcome
from gateway.protocol import ConnectionLimitingFactory, LineProtocol
from gateway.smtp import dsn
from gateway.smtp.address import (
    AddressError,
    canonical_recipient,
    parse_params,
    parse_path,
    split_command,
)
from gateway.smtp.data import DataReader
from gateway.smtp.delivery import Delivery, Envelope, Reply
from gateway.smtp.policy import AddressBook, PolicySettings, Session, check_recipient, check_sender

_DATA_REFUSALS = {
    "size": (552, "5.3.4", "message exceeds the size limit"),
    "bare-newline": (550, "5.6.0", "bare CR or LF in message (RFC 5321 section 2.3.8)"),
    "line-length": (500, "5.5.6", "message line too long"),
    "hops": (554, "5.4.6", "too many hops (Received: fields): mail loop?"),
}
#: RFC 5321 section 6.3: a message with more Received: fields than this is
#: taken for a loop (the RFC asks for a threshold of at least 100).
MAX_HOPS = 100


def too_many_hops(message: bytes) -> bool:
    """Does the header of C{message} hold more than L{MAX_HOPS} Received:
    fields?"""
    end = message.find(b"\r\n\r\n")
    header = message if end < 0 else message[:end + 2]
    if len(header) < MAX_HOPS * 12:  # "Received: x" each: cannot be
        return False
    return (b"\n" + header.lower()).count(b"\nreceived:") > MAX_HOPS


@dataclass(frozen=True)
class SMTPServices:
    """What the mail transaction needs, wired by the service."""

    policy: PolicySettings
    book: AddressBook
    delivery: Delivery


class SMTPServer(LineProtocol):
    """One ESMTP connection."""

    service_name = "smtp"
    summary_log = True  # a connection per message is common: one log line each

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.helo: bytes | None = None
        self.esmtp = False
        self.envelope: Envelope | None = None
        self.messages = 0
        self.refused_recipients = 0
        self.reader: DataReader | None = None
        #: octets of a refused BDAT chunk still to be thrown away (L{do_BDAT})
        self.chunk_left = 0
        #: a delivery is being written (between the message's end and its
        #: reply): L{shutdown} waits for it
        self.delivering = False
        self.shutdown_pending = False
        self.services: SMTPServices | None = context.extras.get("smtp")

    def idle_timeout(self) -> float:
        # RFC 5321 section 4.5.3.2: the server waits at least 5 minutes for
        # a command (4.5.3.2.7), and for each block of a message longer
        # than the client's own 3 minutes per block (4.5.3.2.5).
        if self.reader is not None:
            return self.context.limits.data_timeout_smtp
        return self.context.limits.idle_timeout_smtp

    def session_timeout(self) -> float | None:
        return self.context.limits.session_timeout_smtp

    def reply(self, code: int, enhanced: str | None, text: str, *more: str) -> None:
        """Send a (possibly multi-line) reply with its RFC 3463 code, in one
        write (one TLS record, one C{send})."""
        lead = f"{code} {enhanced} " if enhanced else f"{code} "
        if not more:
            self.transport.write((lead + text + "\r\n").encode("utf-8"))
            return
        cont = f"{code}-{enhanced} " if enhanced else f"{code}-"
        lines = [text, *more]
        last = lines.pop()
        self.transport.write(("".join(cont + item + "\r\n" for item in lines)
                              + lead + last + "\r\n").encode("utf-8"))

    def summary_details(self) -> str:
        return "1 message" if self.messages == 1 else f"{self.messages} messages"

    def reply_shutdown(self) -> None:
        self.reply(421, "4.3.2", f"{self.context.hostname} shutting down")

    def reply_busy(self) -> None:
        self.reply(421, "4.7.0", f"{self.context.hostname} too many connections, try again later")

    def reply_line_too_long(self) -> None:
        self.reply(500, "5.5.6", "line too long, closing connection")

    def reply_timeout(self) -> None:
        what = "timeout waiting for data" if self.reader is not None else "idle timeout"
        self.reply(421, "4.4.2", f"{self.context.hostname} {what}, closing connection")

    def reply_session_timeout(self) -> None:
        self.reply(421, "4.4.2", f"{self.context.hostname} connection time limit reached, "
                   "closing connection")

    def greet(self) -> None:
        self.reply(220, None, f"{self.context.hostname} ESMTP mailgateway")

    def tls_started(self) -> None:
        # RFC 3207 section 4.2: forget everything learnt before TLS.
        self.helo = None
        self.esmtp = False
        self.envelope = None

    def extensions(self) -> list[str]:
        exts = [f"SIZE {self.context.limits.max_message_size}", "8BITMIME", "PIPELINING",
                "ENHANCEDSTATUSCODES", "SMTPUTF8", "DSN"]
        if self.can_start_tls:
            exts.append("STARTTLS")
        mechanisms = self.offered_mechanisms()
        if mechanisms:
            exts.append("AUTH " + " ".join(mechanisms))
        return exts

    def line_received(self, line: bytes) -> Any:
        verb, _, rest = line.partition(b" ")
        handler = self.handler_for(verb)
        if handler is None:
            self.bad_command(500, "5.5.2", "command not recognized")
            return None
        return handler(rest.strip())

    def bad_command(self, code: int, enhanced: str, text: str) -> None:
        """
        Refuse a command that counts toward C{max_bad_commands}; the one
        that reaches the limit is answered with the 421 of the close (RFC
        5321 section 3.8), written before the close begins (nothing may
        be written into a TLS connection once its close has begun).
        """
        if self.bad_commands + 1 >= self.context.limits.max_bad_commands:
            self.reply(421, "4.7.0", f"{self.context.hostname} too many errors, "
                       "closing connection")
        else:
            self.reply(code, enhanced, text)
        self.count_bad_command()

    def do_EHLO(self, arg: bytes) -> None:
        if not arg:
            self.reply(501, "5.5.4", "EHLO needs a domain or address literal")
            return
        self.helo = arg
        self.esmtp = True
        self.envelope = None
        peer = self.peer
        self.reply(250, None, f"{self.context.hostname} greets {peer}", *self.extensions())

    def do_HELO(self, arg: bytes) -> None:
        if not arg:
            self.reply(501, "5.5.4", "HELO needs a domain")
            return
        self.helo = arg
        self.esmtp = False
        self.envelope = None
        self.reply(250, None, f"{self.context.hostname}")

    def do_STARTTLS(self, arg: bytes) -> None:
        if arg:
            self.reply(501, "5.5.4", "STARTTLS takes no parameters")
        elif self.encrypted:
            self.reply(503, "5.5.1", "already under TLS")
        elif self.account is not None:
            # As POP3's STLS and IMAP's STARTTLS: not after a login.  RFC
            # 3207 section 4.2 would have the login forgotten; refusing
            # keeps the account's session from spanning the upgrade.
            self.reply(503, "5.5.1", "STARTTLS not allowed after AUTH")
        elif not self.can_start_tls:
            self.reply(502, "5.5.1", "STARTTLS not available on this listener")
        else:
            self.reply(220, "2.0.0", "Ready to start TLS")
            self.start_tls()

    def do_AUTH(self, arg: bytes) -> None:
        # RFC 4954 section 4.
        if self.envelope is not None:
            self.reply(503, "5.5.1", "AUTH not allowed during a mail transaction")
            return
        if not self.esmtp:
            self.reply(503, "5.5.1", "EHLO first")
            return
        if self.account is not None:
            self.reply(503, "5.5.1", "already authenticated")
            return
        if not arg:
            self.reply(501, "5.5.4", "AUTH needs a mechanism name")
            return
        name, _, initial = arg.partition(b" ")
        refused = self.start_sasl(
            name, initial.strip() or None,
            lambda data: self.sendLine(b"334 " + data),
            self._auth_finished, IAuthenticatedUser,
        )
        if refused == "encryption-required":
            self.reply(538, "5.7.11", "encryption required for requested authentication mechanism")
        elif refused:
            self.reply(504, "5.5.4", "unrecognized authentication type")

    def _auth_finished(self, outcome: Outcome) -> None:
        if isinstance(outcome, LoggedIn):
            self.reply(235, "2.7.0", "authentication successful")
            return
        if outcome.temporary:
            self.reply(454, "4.7.0", "temporary authentication failure")
        elif outcome.cancelled:
            self.reply(501, "5.7.0", "authentication cancelled")
        elif outcome.malformed:
            self.reply(501, "5.5.2", "cannot decode response")
        else:
            self.reply(535, "5.7.8", "authentication credentials invalid")
        if self.too_many_auth_failures:
            self.reply(421, "4.7.0", f"{self.context.hostname} too many authentication failures")
            self.disconnect()

    def do_NOOP(self, arg: bytes) -> None:
        self.reply(250, "2.0.0", "OK")

    def do_RSET(self, arg: bytes) -> None:
        self.envelope = None
        self.reply(250, "2.0.0", "OK")

    def do_VRFY(self, arg: bytes) -> None:
        # RFC 5321 section 3.5.3: no address harvesting.
        self.reply(252, "2.5.0", "cannot VRFY user, but will accept message and attempt delivery")

    def do_EXPN(self, arg: bytes) -> None:
        # RFC 5321 sections 3.5.3 and 7.3: disabled (it would list an
        # alias's members), so 502 "not implemented", not a bad command.
        self.reply(502, "5.5.1", "EXPN not available")

    def do_HELP(self, arg: bytes) -> None:
        self.reply(214, "2.0.0", "see RFC 5321")

    def do_BDAT(self, arg: bytes) -> None:
        """
        CHUNKING (RFC 3030) is not offered, but a client sending BDAT
        anyway sends that many octets of message after it: they are thrown
        away, never read as commands.  A chunk size that cannot be read (or
        is beyond the size limit) leaves no way to find the chunk's end:
        the connection is closed.
        """
        size = arg.split(b" ")[0]
        if not size.isdigit() or int(size) > self.context.limits.max_message_size:
            self.reply(421, "4.7.0", f"{self.context.hostname} BDAT not available, "
                       "closing connection")
            self.disconnect()
            return
        self.envelope = None  # RFC 3030 section 2: a failed BDAT ends the transaction
        self.bad_command(502, "5.5.1", "BDAT not available (no CHUNKING)")
        if int(size) and not self.transport.disconnecting:
            self.chunk_left = int(size)
            self.setRawMode()

    # The mail transaction (RFC 5321 section 3.3)

    def session(self) -> Session:
        return Session(self.context.listener.role, self.peer, self.encrypted, self.account,
                       self.messages)

    def _refuse(self, error: AddressError) -> None:
        self.reply(error.code, error.enhanced, error.text)

    def do_MAIL(self, arg: bytes) -> None:
        if self.helo is None:
            self.reply(503, "5.5.1", "EHLO or HELO first")
            return
        if self.envelope is not None:
            self.reply(503, "5.5.1", "nested MAIL command")
            return
        if self.services is None:
            self.reply(451, "4.3.0", "mail service not configured")
            return
        try:
            path, raw_params = split_command(arg.decode("utf-8"), "FROM")
            params = parse_params(raw_params) if self.esmtp else {}
            if raw_params and not self.esmtp:
                raise AddressError(555, "5.5.4", "parameters need EHLO")
            utf8 = "SMTPUTF8" in params
            sender = parse_path(path, utf8=utf8, null_ok=True)
            self._check_mail_params(params)
            notices = dsn.parse_mail(params)  # RFC 3461 RET, ENVID
        except UnicodeDecodeError:
            self.reply(553, "5.6.7", "non-ASCII address needs SMTPUTF8")
            return
        except AddressError as e:
            self._refuse(e)
            return
        decision = check_sender(self.services.policy, self.services.book, self.session(), sender)
        self.reply(decision.code, decision.enhanced, decision.text)
        if decision.close:
            self.disconnect()
        if decision.accept:
            self.envelope = Envelope(
                sender=sender, helo=self.helo.decode("utf-8", "replace"), client=self.peer,
                encrypted=self.encrypted,
                tls=dict(self.tls_info) if self.encrypted else None,
                account=self.account, esmtp=self.esmtp, utf8=utf8, dsn=notices,
            )

    def _check_mail_params(self, params: dict[str, str | None]) -> None:
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit():
                    raise AddressError(501, "5.5.4", "SIZE needs a number")
                if int(value) > self.context.limits.max_message_size:
                    raise AddressError(552, "5.3.4", "message size exceeds the limit")
            elif key == "BODY":
                if (value or "").upper() not in ("7BIT", "8BITMIME"):
                    raise AddressError(501, "5.5.4", "BODY must be 7BIT or 8BITMIME")
            elif key == "SMTPUTF8":
                if value is not None:
                    raise AddressError(501, "5.5.4", "SMTPUTF8 takes no value")
            elif key == "AUTH":
                # RFC 4954 section 5: the original submitter, as xtext.  We
                # accept it and trust only our own AUTH, so it is not used.
                if not value:
                    raise AddressError(501, "5.5.4", "AUTH= needs a value")
                try:
                    dsn.decode_xtext(value)  # "<>" or an xtext mailbox
                except ValueError:
                    raise AddressError(501, "5.5.4", "malformed AUTH parameter") from None
            elif key not in ("RET", "ENVID"):  # dsn.parse_mail's
                raise AddressError(555, "5.5.4", f"unsupported parameter {key}")

    def do_RCPT(self, arg: bytes) -> None:
        if self.envelope is None or self.services is None:
            self.reply(503, "5.5.1", "MAIL first")
            return
        try:
            path, raw_params = split_command(arg.decode("utf-8"), "TO")
            if raw_params and not self.esmtp:
                raise AddressError(555, "5.5.4", "parameters need EHLO")
            params = parse_params(raw_params)
            for key in params:
                if key not in ("NOTIFY", "ORCPT"):
                    raise AddressError(555, "5.5.4", f"unsupported parameter {key}")
            notices = dsn.parse_rcpt(params)  # RFC 3461 NOTIFY, ORCPT
            recipient = parse_path(path, utf8=self.envelope.utf8, postmaster_ok=True)
        except UnicodeDecodeError:
            self.reply(553, "5.6.7", "non-ASCII address needs SMTPUTF8")
            return
        except AddressError as e:
            self._refuse(e)
            return
        # The form the policy decides on is the form delivered (bare
        # postmaster qualified, a local domain spelt as configured).
        recipient = canonical_recipient(recipient, self.services.policy.local_domains)
        decision = check_recipient(self.services.policy, self.services.book, self.session(),
                                   recipient, len(self.envelope.recipients))
        if decision.accept:
            self.envelope.recipients.append(recipient)
            if notices is not None:
                if self.envelope.dsn is None:
                    self.envelope.dsn = dsn.Transaction()
                self.envelope.dsn.add(recipient, notices)
        elif decision.code >= 500:
            self.refused_recipients += 1
            if self.refused_recipients >= self.context.limits.max_refused_recipients:
                self.reply(decision.code, decision.enhanced, decision.text)
                self.reply(421, "4.7.0", "too many refused recipients, closing connection")
                self.disconnect()
                return
        self.reply(decision.code, decision.enhanced, decision.text)

    def do_DATA(self, arg: bytes) -> None:
        if self.envelope is None:
            self._refuse_data(503, "5.5.1", "MAIL first")
            return
        if not self.envelope.recipients:
            self._refuse_data(554, "5.5.1", "no valid recipients")
            return
        self.reply(354, None, "end data with <CR><LF>.<CR><LF>")
        limits = self.context.limits
        self.reader = DataReader(limits.max_message_size, limits.max_line_length)
        self.setRawMode()
        self.refresh_timeout()  # now the data timeout, reset by every block

    def _refuse_data(self, code: int, enhanced: str, text: str) -> None:
        """
        Refuse DATA.  RFC 2920 section 3.1: DATA ends a group, the client
        waits for its reply; one that sent more already sent its message,
        which must not be read as commands (it may hold a transaction of
        its own).  As Postfix's C{smtpd_forbid_unauth_pipelining}: refused,
        and the connection closed.
        """
        self.reply(code, enhanced, text)
        if self._buffer:
            self.log.info("{listener}: {peer} sent text after a refused DATA; closing",
                          listener=self.context.listener.name, peer=self.peer)
            self.reply(554, "5.5.0", "protocol synchronization error: text after a "
                       "refused DATA, closing connection")
            self.disconnect()

    def _skip_chunk(self, data: bytes) -> None:
        """Throw away the rest of a refused BDAT chunk (L{do_BDAT})."""
        taken = min(self.chunk_left, len(data))
        self.chunk_left -= taken
        if not self.chunk_left:
            self.setLineMode(data[taken:])

    def rawDataReceived(self, data: bytes) -> None:
        if self.transport is None or self.transport.disconnecting:
            # Closing (a 421 was sent: timeout, shutdown): nothing more of
            # a message is taken.  A TLS transport still reads, for the
            # client's close_notify, and would complete it.
            self.reader = None
            return
        self.resetTimeout()
        if self.chunk_left:
            self._skip_chunk(data)
            return
        assert self.reader is not None and self.envelope is not None
        result = self.reader.feed(data)
        if result is None:
            return
        envelope, self.envelope, self.reader = self.envelope, None, None
        # Commands pipelined after the message wait for its reply, and the
        # client waits for it (up to 10 minutes, RFC 5321 section
        # 4.5.3.2.6): no timeout of ours runs until it is written, and then
        # the command timeout does.
        self._hold()
        self.hold_timeout()
        self.setLineMode(result.rest)
        problem = result.problem or ("hops" if too_many_hops(result.data) else None)
        if problem is not None:
            self.reply(*_DATA_REFUSALS[problem])
            self._resume(None)
            return
        assert self.services is not None
        self.delivering = True
        d: Deferred[Reply] = maybeDeferred(self.services.delivery.deliver, envelope, result.data)

        def answered(reply: Reply) -> None:
            if reply.code == 250:
                self.messages += 1
            self.reply(reply.code, reply.enhanced, reply.text)

        def failed(failure: Any) -> None:
            self.log.failure("{listener}: delivery of {id} failed", failure,
                             listener=self.context.listener.name, id=envelope.queue_id)
            self.reply(451, "4.3.0", "local error in processing, try again later")

        def done(result: Any) -> Any:
            self.delivering = False
            if self.shutdown_pending and not self.connection_lost:
                self.shutdown_pending = False
                super(SMTPServer, self).shutdown()
            return result

        d.addCallbacks(answered, failed)
        d.addBoth(done)
        d.addBoth(self._resume)

    def shutdown(self) -> None:
        """The server stops: a message being delivered is answered first
        (a client hearing 421 instead would send it again), then 421."""
        if self.delivering:
            self.shutdown_pending = True
            return
        super().shutdown()

    def _hold(self) -> None:
        """
        Process no command until the message's reply (L{_resume}), as
        L{_pause} does, but leave the transport reading until a byte
        actually arrives (L{dataReceived}): most clients wait for the reply,
        and pausing the transport costs two C{epoll_ctl} calls per message.
        """
        self.paused = True

    def dataReceived(self, data: bytes) -> None:
        if self.paused and data and self.transport is not None \
                and not self.transport.disconnecting:
            self.transport.pauseProducing()  # held (see _hold): read no more
        super().dataReceived(data)

    def connectionLost(self, reason: Any = None) -> None:
        # A message cut off by the connection is never stored: nothing to do.
        self.reader = None
        self.envelope = None
        super().connectionLost(reason)

    def do_QUIT(self, arg: bytes) -> None:
        self.reply(221, "2.0.0", f"{self.context.hostname} closing connection")
        self.disconnect()


class SMTPFactory(ConnectionLimitingFactory):
    protocol_class = SMTPServer
