# -*- test-case-name: tests.test_pop3_transaction,tests.test_pop3_readahead_review -*-
"""
The POP3 server protocol.

Written on L{gateway.protocol.LineProtocol} rather than as a subclass of
C{twisted.mail.pop3.POP3}: Twisted's class has no STLS, handles only
one-step AUTH, compares APOP digests as str against bytes, leaks exception
text to clients and logs tracebacks for client errors
(../shared/notes/twisted-mail-gaps.md section 1).  Overriding all of that
would leave little of it; the protocol itself is small.

The TRANSACTION state works on a L{gateway.pop3.maildrop.Maildrop} (the
store's interfaces only); messages are read in the store's thread (up to
L{SMALL_MESSAGE} whole, larger ones streamed from their files) and
byte-stuffed (L{gateway.pop3.transfer}).  Commands are answered one at a time, so
pipelining (RFC 2449) keeps its order; the messages named by pipelined RETRs
are read ahead in one call of the store's thread
(L{gateway.pop3.readahead}), and no command is answered while the transport
holds more than its threshold of earlier replies
(L{gateway.pop3.transfer.FlowGate}): what a client that does not read makes
a session hold is bounded by that threshold, one message read whole and one
read-ahead.  A read that fails once part of a message is out closes the
connection: nothing else can follow a partial reply.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone

from gateway.auth.checkers import APOPCredentials
from gateway.auth.realm import IAuthenticatedUser
from gateway.auth.sasl.exchange import LoggedIn, Outcome
from gateway.pop3.logindelay import LoginDelay
from gateway.pop3.maildrop import Maildrop
from gateway.pop3.readahead import LOOK_AHEAD, ReadAhead
from gateway.pop3.transfer import FlowGate, MessageCutShort, MessageProducer, Stuffer
from gateway.protocol import ConnectionLimitingFactory, LineProtocol
from gateway.store.model import MailboxInUse, MessageInfo, NoSuchMessage

OK = b"+OK"
#: Commands not held back by the flow gate in L{POP3Server.line_received}.
_UNGATED = {b"QUIT", b"RETR", b"TOP"}
#: Messages up to this size are sent with one read and one write; larger
#: ones are streamed through a producer, never whole in memory.
SMALL_MESSAGE = 256 * 1024


def uidl(key: str) -> str:
    """
    The message's UIDL: the store's stable key, which survives flag changes
    and moves (unlike Twisted's md5 of the file name).  RFC 1939 section 7
    allows 1 to 70 characters from 0x21 to 0x7E; a longer or odd key (a long
    host name) is replaced by a digest of itself, which is just as stable.
    """
    if 0 < len(key) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in key):
        return key
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:40]
ERR = b"-ERR"


class POP3Server(LineProtocol):
    """One POP3 connection."""

    service_name = "pop"

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.state = "AUTHORIZATION"
        self.apop_timestamp = b""
        self.user: bytes | None = None
        self.maildrop: Maildrop | None = None
        self.read_ahead: ReadAhead | None = None
        self.flow: FlowGate | None = None
        #: The message being streamed, while its multi-line reply is open.
        self.streaming: MessageProducer | None = None
        #: connectionLost has run.  The transport's C{disconnecting} says so
        #: only when we closed: not after a reset or a close by the client.
        self.lost = False

    def idle_timeout(self) -> float:
        return self.context.limits.idle_timeout_pop3

    # Replies

    def send(self, status: bytes, text: str | bytes = b"") -> None:
        if isinstance(text, str):
            text = text.encode("utf-8")
        self.sendLine(status + (b" " + text if text else b""))

    def reply_shutdown(self) -> None:
        if self.streaming is None:  # else it would read as a message line
            self.send(ERR, "[SYS/TEMP] server shutting down")

    def reply_busy(self) -> None:
        self.send(ERR, "[SYS/TEMP] too many connections, try again later")

    def reply_line_too_long(self) -> None:
        self.send(ERR, "line too long")

    def reply_timeout(self) -> None:
        if self.streaming is None:  # else it would read as a message line
            self.send(ERR, "idle timeout, closing connection")

    def greet(self) -> None:
        # RFC 1939 section 7: the APOP timestamp must be unique per greeting;
        # it comes from the CSPRNG and names no process id.  The time is
        # the listener's clock (house style: no global time below the root).
        self.apop_timestamp = b"<%d.%s@%s>" % (
            int(self.context.clock.seconds()),
            secrets.token_hex(8).encode("ascii"),
            self.context.hostname.encode("idna"),
        )
        if self.apop_enabled:
            self.send(OK, b"POP3 server ready " + self.apop_timestamp)
        else:
            self.send(OK, b"POP3 server ready")

    @property
    def apop_enabled(self) -> bool:
        return "APOP" in self.context.mechanisms and self.context.backend is not None

    # Dispatch

    def line_received(self, line: bytes) -> Any:
        flow = self.flow
        if (flow is not None and flow.attached and flow.paused
                and line.partition(b" ")[0].upper() not in _UNGATED):
            # The client has not read our earlier replies: answer this
            # command once it has, so that what a client that does not
            # read makes us hold stays bounded (a pipeline of UIDLs of a
            # large maildrop grew it without bound).  The line goes back to
            # the buffer and is read again then.  RETR and TOP wait in
            # _send_message (after their message is chosen, so that the
            # read-ahead sees the RETRs behind them); QUIT's reply is one
            # line and the client is done.
            self._buffer = line + self.delimiter + self._buffer
            waiting = flow.wait().addErrback(lambda f: f.trap(ConnectionDone))
            return self.serialize(waiting)
        verb, _, rest = line.partition(b" ")
        handler = self.handler_for(verb)
        if handler is None:
            if not self.count_bad_command():
                self.send(ERR, "unknown command")
            return None
        return handler(rest)

    def capabilities(self) -> list[bytes]:
        """RFC 2449 section 6: what is true now."""
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.state == "AUTHORIZATION":
            if self.plaintext_allowed and self.context.backend is not None:
                caps.append(b"USER")
            mechanisms = self.offered_mechanisms()
            if mechanisms:
                caps.append(b"SASL " + " ".join(mechanisms).encode("ascii"))
            if self.can_start_tls:
                caps.append(b"STLS")
        delay = self.context.limits.pop3_login_delay
        if delay > 0:
            # RFC 2449 section 6.5: the same for every account, so the bare
            # number in both states.
            caps.append(b"LOGIN-DELAY %d" % delay)
        caps.append(b"IMPLEMENTATION mailgateway")
        return caps

    def do_CAPA(self, rest: bytes) -> None:
        self.send(OK, "Capability list follows")
        for cap in self.capabilities():
            self.sendLine(cap)
        self.sendLine(b".")

    def do_STLS(self, rest: bytes) -> None:
        # RFC 2595 section 4: only in AUTHORIZATION, never twice.
        if self.state != "AUTHORIZATION":
            self.send(ERR, "STLS only before authentication")
        elif self.encrypted:
            self.send(ERR, "already under TLS")
        elif not self.can_start_tls:
            self.send(ERR, "STLS not available on this listener")
        else:
            self.send(OK, "Begin TLS negotiation")
            self.start_tls()

    def tls_started(self) -> None:
        # RFC 2595 section 4: forget a USER given before the upgrade.
        self.user = None

    # Authentication (RFC 1939 section 7, RFC 5034, RFC 2449 response codes)

    def _in_authorization(self) -> bool:
        if self.state != "AUTHORIZATION":
            self.send(ERR, "already authenticated")
            return False
        return True

    def do_USER(self, rest: bytes) -> None:
        if not self._in_authorization():
            return
        # RFC 1939 section 7: PASS only right after a successful USER, so
        # a refused USER leaves no earlier name waiting (nor do APOP and
        # AUTH, below).
        self.user = None
        if not self.plaintext_allowed:
            self.send(ERR, "[AUTH] plain-text login refused before TLS; use STLS")
            return
        if not rest.strip() or self.context.backend is None:
            self.send(ERR, "USER needs a name")
            return
        self.user = rest.strip()
        self.send(OK, "send PASS")

    def do_PASS(self, rest: bytes) -> Any:
        if not self._in_authorization():
            return None
        if not self.plaintext_allowed:
            self.send(ERR, "[AUTH] plain-text login refused before TLS; use STLS")
            return None
        if self.user is None:
            self.send(ERR, "USER first")
            return None
        user, self.user = self.user, None
        d = self.login_password(user, rest, IAuthenticatedUser)
        d.addCallback(self._login_finished)
        return self.serialize(d)

    def do_APOP(self, rest: bytes) -> Any:
        if not self._in_authorization():
            return None
        self.user = None
        parts = rest.split()
        if not self.apop_enabled or len(parts) != 2:
            self.send(ERR, "APOP needs a name and a digest" if self.apop_enabled
                      else "APOP not available")
            return None
        name, digest = parts
        credentials = APOPCredentials(name, self.apop_timestamp, digest.lower(), self.peer,
                                      self.context.is_trusted(self.peer))
        d = self.login(credentials, IAuthenticatedUser, "APOP")
        return self.serialize(d.addCallback(self._login_finished))

    def do_AUTH(self, rest: bytes) -> None:
        if not self._in_authorization():
            return
        self.user = None
        if not rest.strip():
            # The RFC 1734 listing many clients still ask for.
            self.send(OK, "methods follow")
            for mechanism in self.offered_mechanisms():
                self.sendLine(mechanism.encode("ascii"))
            self.sendLine(b".")
            return
        name, _, initial = rest.strip().partition(b" ")
        refused = self.start_sasl(
            name, initial.strip() or None,
            lambda data: self.sendLine(b"+ " + data),
            self._login_finished, IAuthenticatedUser,
        )
        if refused == "encryption-required":
            self.send(ERR, "[AUTH] plain-text mechanism refused before TLS; use STLS")
        elif refused:
            self.send(ERR, "unsupported authentication mechanism")

    def _login_finished(self, outcome: Outcome) -> Any:
        if self.lost:
            # The client went away while its credentials were checked: the
            # realm's logout (set after connectionLost ran) is ours to call,
            # and no maildrop may be locked for nobody.
            if isinstance(outcome, LoggedIn):
                self._abandon_login()
            return None
        if isinstance(outcome, LoggedIn):
            if not self.factory.login_delay.allowed(outcome.account):
                # RFC 2449 section 8.1.1, once the credentials are proven
                # (a wrong password still gets [AUTH]); nothing is locked.
                self._abandon_login()
                self.send(ERR, "[LOGIN-DELAY] logged in too recently, try again later")
                return None
            return self._open_maildrop(outcome.account)
        if outcome.temporary:
            self.send(ERR, "[SYS/TEMP] temporary authentication failure, try again later")
        elif outcome.cancelled:
            self.send(ERR, "authentication cancelled")
        else:
            self.send(ERR, "[AUTH] authentication failed")
        if self.too_many_auth_failures:
            self.disconnect()

    def _abandon_login(self) -> None:
        """Undo a proven login that does not reach TRANSACTION."""
        self.account = None
        if self.logout is not None:
            logout, self.logout = self.logout, None
            logout()

    def _open_maildrop(self, account: str) -> Any:
        store = self.context.extras.get("store")
        if store is None:
            self._abandon_login()
            self.send(ERR, "[SYS/PERM] no mail store configured")
            return None

        def opened(maildrop: Maildrop) -> None:
            if self.lost or self.transport is None or self.transport.disconnecting:
                # Closed or lost while the lock was taken: connectionLost
                # found no maildrop to close, so the lock is released here.
                maildrop.close()
                self._abandon_login()
                return
            self.maildrop = maildrop
            self.read_ahead = ReadAhead(maildrop, SMALL_MESSAGE)
            # The client taking what we sent is activity: a long
            # transfer to a slow reader must not end in the idle timeout.
            self.flow = FlowGate(self.transport, progress=self.resetTimeout)
            self.flow.attach()
            self.state = "TRANSACTION"
            self.factory.login_delay.record(account)
            live = maildrop.live()
            self.send(OK, f"logged in, {len(live)} messages "
                          f"({sum(m.size for _, m in live)} octets)")

        def failed(failure: Any) -> None:
            # The login succeeded but the maildrop is not ours: no login.
            self._abandon_login()
            if failure.check(MailboxInUse):
                self.send(ERR, "[IN-USE] mailbox in use by another session")
            else:
                self.log.failure("{listener}: opening the maildrop of {account}", failure,
                                 listener=self.context.listener.name, account=account)
                self.send(ERR, "[SYS/TEMP] mailbox unavailable, try again later")

        return Maildrop.open(store, account).addCallbacks(opened, failed)

    # TRANSACTION (RFC 1939 section 5)

    def _maildrop(self) -> Maildrop | None:
        if self.state != "TRANSACTION" or self.maildrop is None:
            self.send(ERR, "not authenticated")
            return None
        return self.maildrop

    def _message_number(self, text: bytes) -> int | None:
        try:
            number = int(text)
        except ValueError:
            return None
        return number if text.strip().isdigit() else None

    def _message(self, maildrop: Maildrop, text: bytes) -> tuple[int, Any] | None:
        number = self._message_number(text)
        info = maildrop.get(number) if number is not None else None
        if number is None or info is None:
            self.send(ERR, "no such message")
            return None
        return number, info

    def do_STAT(self, rest: bytes) -> None:
        maildrop = self._maildrop()
        if maildrop is not None:
            live = maildrop.live()
            self.send(OK, f"{len(live)} {sum(m.size for _, m in live)}")

    def _listing(self, rest: bytes, heading: str, column: Callable[[MessageInfo], str]) -> None:
        """LIST and UIDL: one message, or every live one as a multi-line reply."""
        maildrop = self._maildrop()
        if maildrop is None:
            return
        if rest.strip():
            found = self._message(maildrop, rest.strip())
            if found is not None:
                self.send(OK, f"{found[0]} {column(found[1])}")
            return
        live = maildrop.live()
        self.send(OK, heading.format(count=len(live)))
        self.transport.write(b"".join(f"{i} {column(m)}\r\n".encode("ascii") for i, m in live)
                             + b".\r\n")

    def do_LIST(self, rest: bytes) -> None:
        self._listing(rest, "{count} messages", lambda m: str(m.size))

    def do_UIDL(self, rest: bytes) -> None:
        self._listing(rest, "unique-id listing follows", lambda m: uidl(m.key))

    def _write_whole(self, size_line: str, data: bytes, body_lines: int | None) -> None:
        stuffer = Stuffer(body_lines)
        self.transport.writeSequence((OK, b" ", size_line.encode("ascii"), b"\r\n",
                                      stuffer.feed(data), stuffer.finish()))

    def _closing(self, flow: FlowGate) -> bool:
        """The connection is closing or lost: nothing more is sent."""
        return self.transport is None or self.transport.disconnecting or flow.stopped

    def _send_message(self, number: int, info: MessageInfo, size_line: str,
                      body_lines: int | None) -> Any:
        maildrop, flow, read_ahead = self.maildrop, self.flow, self.read_ahead
        assert maildrop is not None and flow is not None and read_ahead is not None

        def sent() -> None:
            if body_lines is None:
                maildrop.retrieved.add(number)  # marked \\Seen when the session ends

        if info.size <= SMALL_MESSAGE:
            # Read whole in the store's thread (for RETR with the messages
            # of the RETRs pipelined behind it), written at once.
            def read(_: None) -> Deferred[bytes]:
                if body_lines is None:
                    return read_ahead.read(number, self._pipelined_retrs())
                return maildrop.session.read_message(info.uid)

            def write(data: bytes) -> None:
                if self._closing(flow):
                    return  # closed (idle timeout, shutdown) during the read
                self._write_whole(size_line, data, body_lines)
                sent()

            d: Any = flow.wait().addCallback(read).addCallback(write)
        else:
            # Streamed through a pull producer, which takes the gate's place
            # with the transport meanwhile.
            def stream(file: Any) -> Any:
                if self._closing(flow):
                    file.close()
                    return None
                producer = MessageProducer(file, self.transport, Stuffer(body_lines),
                                           progress=self.resetTimeout)
                producer.prime()  # a file that cannot be read: -ERR, not +OK
                flow.detach()
                self.send(OK, size_line)
                self.streaming = producer
                return producer.start().addCallback(lambda _: sent())

            def reattach(result: Any) -> Any:
                self.streaming = None
                if self.flow is flow and not self._closing(flow):
                    flow.attach()
                return result

            d = flow.wait().addCallback(lambda _: maildrop.session.open_message(info.uid))
            d.addCallback(stream).addBoth(reattach)

        def failed(failure: Any) -> None:
            if failure.check(MessageCutShort):
                # Part of the message is out: neither a terminator nor -ERR
                # may follow (the client would read them as message lines),
                # so the client must see the connection close.
                self.log.failure("{listener}: reading message {uid} while sending it",
                                 failure.value.cause, listener=self.context.listener.name,
                                 uid=info.uid)
                self.disconnect()
                return
            if self._closing(flow) or failure.check(ConnectionError, ConnectionDone):
                return  # the connection is gone; nothing to answer
            if failure.check(NoSuchMessage):
                # Expunged by another session (IMAP) or program since the
                # login: an ordinary event, not worth a traceback.
                self.log.info("{listener}: message {uid} removed by another session",
                              listener=self.context.listener.name, uid=info.uid)
                self.send(ERR, "[SYS/TEMP] message removed by another session")
                return
            self.log.failure("{listener}: reading message {uid}", failure,
                             listener=self.context.listener.name, uid=info.uid)
            self.send(ERR, "[SYS/TEMP] cannot read the message")

        return self.serialize(d.addErrback(failed))

    def _pipelined_retrs(self) -> Iterator[int]:
        """
        The message numbers of the RETR commands received after the one
        being answered and not read yet (they wait in C{LineReceiver}'s
        buffer while this one is served), lazily, in order, among the next
        L{LOOK_AHEAD} commands.
        """
        buffer = self._buffer
        start = 0
        for _ in range(LOOK_AHEAD):
            end = buffer.find(b"\r\n", start)
            if end < 0:
                break
            verb, _, arg = buffer[start:end].partition(b" ")
            start = end + 2
            if verb.upper() == b"RETR":
                number = self._message_number(arg.strip())
                if number is not None:
                    yield number

    def do_RETR(self, rest: bytes) -> Any:
        maildrop = self._maildrop()
        found = self._message(maildrop, rest.strip()) if maildrop is not None else None
        if maildrop is None or found is None:
            return None
        number, info = found
        size_line = f"{info.size} octets"
        assert self.read_ahead is not None
        data = self.read_ahead.take(number)
        if data is not None:
            # Read ahead with an earlier RETR: answered now, no thread hop.
            self._write_whole(size_line, data, None)
            maildrop.retrieved.add(number)  # marked \\Seen when the session ends
            return None
        return self._send_message(number, info, size_line, None)

    def do_TOP(self, rest: bytes) -> Any:
        maildrop = self._maildrop()
        if maildrop is None:
            return None
        parts = rest.split()
        count = self._message_number(parts[1]) if len(parts) == 2 else None
        if count is None:
            self.send(ERR, "TOP needs a message number and a line count")
            return None
        found = self._message(maildrop, parts[0])
        if found is None:
            return None
        return self._send_message(found[0], found[1], "top of message follows", count)

    def do_DELE(self, rest: bytes) -> None:
        maildrop = self._maildrop()
        found = self._message(maildrop, rest.strip()) if maildrop is not None else None
        if maildrop is not None and found is not None:
            maildrop.deleted.add(found[0])
            self.send(OK, f"message {found[0]} deleted")

    def do_RSET(self, rest: bytes) -> None:
        maildrop = self._maildrop()
        if maildrop is not None:
            maildrop.deleted.clear()
            live = maildrop.live()
            self.send(OK, f"{len(live)} messages")

    def do_NOOP(self, rest: bytes) -> None:
        if self._maildrop() is not None:
            self.send(OK)

    def do_QUIT(self, rest: bytes) -> Any:
        maildrop, self.maildrop = self.maildrop, None
        if maildrop is None:
            self.send(OK, "bye")
            self.disconnect()
            return None
        # The UPDATE state (RFC 1939 section 6): all deletions at once.
        self.state = "UPDATE"

        def done(_: Any) -> None:
            self.send(OK, "bye")

        def failed(failure: Any) -> None:
            self.log.failure("{listener}: removing deleted messages", failure,
                             listener=self.context.listener.name)
            self.send(ERR, "[SYS/TEMP] some deleted messages not removed")

        def close_then(result: Any) -> Any:
            # The seen flags and the lock too, before the client hears +OK.
            return maildrop.close().addCallback(lambda _: result)

        d = maildrop.commit().addBoth(close_then).addCallbacks(done, failed)
        d.addBoth(lambda _: self.disconnect())
        # The removal is our work, the client waits for its result: an idle
        # timeout meanwhile would answer "-ERR idle timeout" and then, once
        # the store is done, "+OK bye" on the closing connection.
        return self.serialize(d, hold_timeout=True)

    def disconnect(self) -> None:
        # A registered producer would keep a TLS transport from closing; a
        # message being streamed would go on being sent after our last
        # words (the transport pulls its producer until it is done).
        if self.transport is None or self.transport.disconnecting:
            return
        if self.flow is not None:
            self.flow.detach(closing=True)
        super().disconnect()
        if self.streaming is not None:
            # After the transport is closing: the command's end then reads
            # no further pipelined command.
            self.streaming.stop()

    def connectionLost(self, reason: Any = None) -> None:
        # A dropped connection deletes nothing (RFC 1939 section 6).  What
        # is under way (a read in the store's thread, a wait for the
        # client, a message being streamed) ends without a word: the
        # transport may not have stopped our producers itself.
        self.lost = True
        if self.flow is not None:
            self.flow.stopProducing()
        if self.streaming is not None:
            self.streaming.stopProducing()
        if self.read_ahead is not None:
            self.read_ahead.close()
        self._buffer = b""  # no command runs after the end
        maildrop, self.maildrop = self.maildrop, None
        if maildrop is not None:
            maildrop.close()
        super().connectionLost(reason)


class POP3Factory(ConnectionLimitingFactory):
    protocol_class = POP3Server

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        # One record of last logins for every POP3 listener: the contexts
        # of one service share their extras.
        self.login_delay: LoginDelay = context.extras.setdefault(
            "pop3.login_delay", LoginDelay(context.limits.pop3_login_delay, context.clock))
