# -*- test-case-name: tests.test_imap_mailboxes,tests.test_imap_selected_review -*-
"""
The IMAP server protocol: command assembly (literals, LITERAL+), the
state machine (RFC 3501 section 3), the not-authenticated state
(CAPABILITY, STARTTLS, LOGIN, AUTHENTICATE with SASL-IR), ID (RFC 2971),
IDLE (RFC 2177) and the untagged updates after each command (RFC 3501
sections 5.2, 5.5 and 7).

The wire layer is ours, on L{gateway.protocol.LineProtocol}: Twisted's
C{IMAP4Server} processes commands sent after STARTTLS in the same segment
(command injection), decides LOGINDISABLED and the SASL list wrongly on
implicit-TLS listeners, accepts literals of any size, cannot parse escaped
quotes in LOGIN, echoes internal error text, and ends IDLE on any line
(../shared/notes/twisted-mail-gaps.md section 2).

The commands of the authenticated and selected states live in
L{gateway.imap.mailboxes}, L{gateway.imap.selected} and
L{gateway.imap.search}; a failed command is answered here, never with a
traceback.
"""

from __future__ import annotations

import re
from inspect import isawaitable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from gateway.auth.realm import IAuthenticatedUser
from gateway.auth.sasl.exchange import LoggedIn, Outcome
from gateway.imap.fetch import flags_list
from gateway.imap.mailboxes import MailboxCommands
from gateway.imap.mime import nstring
from gateway.imap.parser import Atom, ParseError, Token, literal_at_end, tokenize
from gateway.imap.replies import No, store_refusal
from gateway.imap.search import SearchCommand
from gateway.imap.selected import SelectedCommands
from gateway.protocol import ConnectionLimitingFactory, LineProtocol
from gateway.store.model import StoreError

_TAG = re.compile(rb"^[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c\x7d\x7e]+$")  # RFC 3501 tag
#: Literals before login carry only names and passwords.
PREAUTH_LITERAL_LIMIT = 8192
#: A whole command before login (its lines and literals): a few names and
#: passwords.  Without a bound on the whole, a client could chain any number
#: of small literals into one command held in memory.
PREAUTH_COMMAND_LIMIT = 65536
#: After login APPEND may carry a message and this much more; any other
#: command (a SEARCH string, a mailbox name) this much in all.
COMMAND_OVERHEAD = 65536

#: The commands that write their own tagged reply (C{do_*}).
_OWN_REPLY = {"LOGOUT", "STARTTLS", "LOGIN", "AUTHENTICATE"}
#: C{cmd_*} commands by the states they are valid in (RFC 3501 section 6).
_ANY_STATE = {"CAPABILITY", "NOOP", "ID"}
_AUTHENTICATED = {"SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE",
                  "UNSUBSCRIBE", "LIST", "LSUB", "STATUS", "APPEND", "NAMESPACE",
                  "ENABLE", "IDLE"}
_SELECTED = {"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE",
             "COPY", "MOVE", "UID"}
#: RFC 3501 section 7.4.1: no EXPUNGE response during these (nor their UID
#: forms), so no sync at all after them.
_NO_EXPUNGE = {b"FETCH", b"STORE", b"SEARCH"}
#: What ID (RFC 2971) tells clients.
SERVER_ID = ((b"name", b"mailgateway"),)


class IMAPServer(MailboxCommands, SelectedCommands, SearchCommand, LineProtocol):
    """One IMAP connection."""

    service_name = "imap"

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.state = "NOT-AUTHENTICATED"
        self.store = context.extras.get("store")
        self.session: Any = None
        self.idling: bytes | None = None
        self._idle_work: Deferred[Any] = succeed(None)
        self._pieces: list[bytes | bytearray] = []
        self._command_size = 0  # octets of the command being assembled
        self._tag: bytes | None = None
        self._literal_left = 0
        self._literal: bytearray | None = None
        #: The command being assembled is read and dropped (L{_drop_command}).
        self._dropping = False

    def idle_timeout(self) -> float:
        if self.state == "NOT-AUTHENTICATED":
            return self.context.limits.idle_timeout_imap_preauth
        return self.context.limits.idle_timeout_imap

    # Replies

    def untagged(self, text: str | bytes) -> None:
        if isinstance(text, str):
            text = text.encode("utf-8")
        self.sendLine(b"* " + text)

    def tagged(self, tag: bytes, status: str, text: str) -> None:
        self.sendLine(tag + b" " + status.encode("ascii") + b" " + text.encode("utf-8"))

    def reply_shutdown(self) -> None:
        self.untagged("BYE [UNAVAILABLE] server shutting down")

    def reply_busy(self) -> None:
        self.untagged("BYE [UNAVAILABLE] too many connections, try again later")

    def reply_line_too_long(self) -> None:
        self.untagged("BYE [TOOBIG] line too long")

    def reply_timeout(self) -> None:
        self.untagged("BYE idle timeout")

    def capabilities(self) -> list[str]:
        caps = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE",
                "UIDPLUS", "MOVE", "UNSELECT", "CHILDREN", "SPECIAL-USE"]
        if self.state == "NOT-AUTHENTICATED":
            if self.can_start_tls:
                caps.append("STARTTLS")
            if not self.plaintext_allowed or self.context.backend is None:
                caps.append("LOGINDISABLED")
            caps += [f"AUTH={name}" for name in self.offered_mechanisms()]
        return caps

    def greet(self) -> None:
        self.untagged(
            f"OK [CAPABILITY {' '.join(self.capabilities())}] "
            f"{self.context.hostname} IMAP4rev1 ready"
        )

    # Command assembly

    def line_received(self, line: bytes) -> Any:
        if self.idling is not None:
            result = self._idle_line(line)
            if line.upper() != b"DONE":
                self._drop_command(line)
            return result
        if self._tag is None:
            tag, _, rest = line.partition(b" ")
            if not _TAG.match(tag):
                if not self.count_bad_command():
                    self.untagged("BAD invalid tag")
                self._drop_command(line)
                return None
            self._tag = tag
            line = rest
        announced = literal_at_end(line)
        if announced is None:
            self._pieces.append(line)
            pieces, tag = self._pieces, self._tag
            self._pieces, self._tag, self._command_size = [], None, 0
            if self._dropping:
                self._dropping = False
                return None
            return self.dispatch(tag, pieces)
        text, literal = announced
        if self._dropping and not literal.non_synchronizing:
            # No "+" for a command that is not run: the client, waiting,
            # sends no literal, and its next line is a new command.
            self._pieces, self._tag, self._command_size = [], None, 0
            self._dropping = False
            return None
        first = self._pieces[0] if self._pieces else text
        if self.state == "NOT-AUTHENTICATED":
            limit, total = PREAUTH_LITERAL_LIMIT, PREAUTH_COMMAND_LIMIT
        elif first.partition(b" ")[0].upper() == b"APPEND":
            limit = self.context.limits.max_message_size
            total = limit + COMMAND_OVERHEAD
        else:
            # Only a message is that large: a 35 MB SEARCH string would be
            # held in memory, then decoded against every message.
            limit = total = COMMAND_OVERHEAD
        tag = self._tag
        assert tag is not None
        self._command_size += len(line) + literal.size
        if literal.size > limit or self._command_size > total:
            what = "literal" if literal.size > limit else "command"
            self._pieces, self._tag, self._command_size = [], None, 0
            self._dropping = False
            if literal.non_synchronizing:
                # RFC 7888 section 4: the data is on its way; close instead
                # of reading it.
                self.untagged(f"BYE [TOOBIG] {what} too large")
                self.disconnect()
            else:
                self.tagged(tag, "NO", f"[TOOBIG] {what} too large")
            return None
        self._pieces.append(text)
        if not literal.non_synchronizing and not self._dropping:
            self.sendLine(b"+ Ready for literal data")
        self._literal = bytearray()
        self._literal_left = literal.size
        if literal.size == 0:
            self._literal_done(b"")
        else:
            self.setRawMode()
        return None

    def rawDataReceived(self, data: bytes) -> None:
        assert self._literal is not None
        take = data[: self._literal_left]
        if not self._dropping:  # a dropped command's literal is not kept
            self._literal += take
        self._literal_left -= len(take)
        if self._literal_left == 0:
            self._literal_done(data[len(take):])

    def _drop_command(self, line: bytes) -> None:
        """
        C{line} is answered and not run (an invalid tag, a line that ended
        IDLE).  If it announces a non-synchronizing literal (RFC 7888), the
        client sends the literal without waiting: its octets, and the rest
        of the command after them, are read and dropped, never taken as
        commands (an APPEND's message would otherwise run line by line).
        """
        announced = literal_at_end(line)
        if announced is None or not announced[1].non_synchronizing:
            return
        if self.transport is None or self.transport.disconnecting:
            return
        self._dropping = True
        self._tag = b"*"
        self.line_received(line)

    def _literal_done(self, rest: bytes) -> None:
        assert self._literal is not None
        self._pieces.append(self._literal)
        self._literal = None
        self.setLineMode(rest)

    def dispatch(self, tag: bytes, pieces: list[bytes | bytearray]) -> Any:
        first = pieces[0] if pieces and isinstance(pieces[0], bytes) else b""
        verb, _, rest = first.partition(b" ")
        try:
            name = verb.decode("ascii").upper()
        except UnicodeDecodeError:
            name = ""
        own = name in _OWN_REPLY
        if not own and name not in _ANY_STATE | _AUTHENTICATED | _SELECTED:
            if not self.count_bad_command():
                self.tagged(tag, "BAD", "unknown command")
            return None
        try:
            args = tokenize([rest, *pieces[1:]])
        except ParseError as e:
            if not self.count_bad_command():
                self.tagged(tag, "BAD", str(e))
            return None
        if own:
            return getattr(self, f"do_{name}")(tag, args)
        if name in _AUTHENTICATED and self.state == "NOT-AUTHENTICATED":
            self.tagged(tag, "BAD", f"{name} is not valid before login")
            return None
        if name in _SELECTED and self.state != "SELECTED":
            self.tagged(tag, "BAD", f"{name} needs a selected mailbox")
            return None
        quiet = name.encode() in _NO_EXPUNGE or (
            name == "UID" and bool(args) and isinstance(args[0], Atom)
            and args[0].upper() in _NO_EXPUNGE)
        d = Deferred.fromCoroutine(self._run(tag, getattr(self, f"cmd_{name}"), args, quiet))
        d.addErrback(self._command_failed, tag)
        return self.serialize(d)

    async def _run(self, tag: bytes, handler: Any, args: list[Token], quiet: bool) -> None:
        text = handler(tag, args)
        if isawaitable(text):
            text = await text
        if text is None:
            # IDLE: the tagged reply comes at DONE; a FETCH cut short by
            # the connection's close: none.
            return
        if self.session is not None and not quiet:
            await self.report_changes()
        self.tagged(tag, "OK", text)

    def _command_failed(self, failure: Failure, tag: bytes) -> None:
        if failure.check(ParseError):
            if not getattr(failure.value, "counted", True) or not self.count_bad_command():
                self.tagged(tag, "BAD", str(failure.value))
        elif failure.check(No):
            self.tagged(tag, "NO", str(failure.value))
        elif isinstance(failure.value, StoreError):
            self.tagged(tag, "NO", store_refusal(failure.value))
        else:
            self.log.failure("{listener}: {peer}: IMAP command failed", failure,
                             listener=self.context.listener.name, peer=self.peer)
            self.tagged(tag, "NO", "[SERVERBUG] internal error")

    # The selected mailbox

    def watch(self, session: Any) -> None:
        session.on_change(lambda: self._folder_changed(session))

    async def close_session(self) -> None:
        session, self.session = self.session, None
        if self.state == "SELECTED":
            self.state = "AUTHENTICATED"
        if session is not None:
            await session.close()

    async def report_changes(self) -> None:
        """
        Sync the view and announce what changed (RFC 3501 section 7):
        EXPUNGE with the sequence numbers of the view as it was, highest
        first so that each stays valid; then EXISTS and RECENT; then the
        new flags.
        """
        session = self.session
        old = session.messages()
        changes = await session.sync()
        if session is not self.session or not changes:
            return
        if changes.expunged:
            gone = set(changes.expunged)
            for seq in range(len(old), 0, -1):
                if old[seq - 1].uid in gone:
                    self.untagged(f"{seq} EXPUNGE")
        messages = session.messages()
        if changes.added:
            self.untagged(f"{len(messages)} EXISTS")
            self.untagged(f"{len(session.recent)} RECENT")
        if changes.flags:
            changed = {info.uid for info in changes.flags}
            for seq, info in enumerate(messages, 1):
                if info.uid in changed:
                    flags = flags_list(info.flags, info.uid in session.recent)
                    self.untagged(b"%d FETCH (FLAGS " % seq + flags + b")")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        session, self.session = self.session, None
        if session is not None:
            session.close()
        super().connectionLost(reason)

    # IDLE (RFC 2177)

    def cmd_IDLE(self, tag: bytes, args: list[Token]) -> None:
        if args:
            raise ParseError("IDLE takes no arguments")
        self.sendLine(b"+ idling")
        self.idling = tag
        if self.session is not None:
            self._folder_changed(self.session)

    def _folder_changed(self, session: Any) -> None:
        """The store says the folder changed: while idling, sync and tell."""
        if self.idling is None or session is not self.session:
            return

        def report(_: Any) -> Any:
            if self.idling is None or session is not self.session:
                return None
            return Deferred.fromCoroutine(self.report_changes())

        def failed(failure: Failure) -> None:
            self.log.failure("{peer}: IDLE update failed", failure, peer=self.peer)

        self._idle_work.addCallback(report).addErrback(failed)

    def _idle_line(self, line: bytes) -> Any:
        # Only DONE ends IDLE; anything else is an error, and also ends it
        # (Twisted takes any line as DONE).
        tag, self.idling = self.idling, None
        assert tag is not None
        d, self._idle_work = self._idle_work, succeed(None)
        if line.upper() == b"DONE":
            d.addCallback(lambda _: self.tagged(tag, "OK", "IDLE terminated"))
        else:
            d.addCallback(lambda _: self.tagged(tag, "BAD", "expected DONE"))
        return self.serialize(d)

    # Any state

    def cmd_CAPABILITY(self, tag: bytes, args: list[Token]) -> str:
        self.untagged("CAPABILITY " + " ".join(self.capabilities()))
        return "CAPABILITY completed"

    def cmd_NOOP(self, tag: bytes, args: list[Token]) -> str:
        return "NOOP completed"

    def cmd_ID(self, tag: bytes, args: list[Token]) -> str:
        # RFC 2971: NIL or a list of field/value pairs; we answer with our
        # name only, whatever the client says.
        if len(args) != 1 or not (isinstance(args[0], list) or (
                isinstance(args[0], Atom) and args[0].upper() == b"NIL")):
            raise ParseError("ID needs NIL or a parenthesized list")
        pairs = b" ".join(nstring(k) + b" " + nstring(v) for k, v in SERVER_ID)
        self.untagged(b"ID (" + pairs + b")")
        return "ID completed"

    def do_LOGOUT(self, tag: bytes, args: list[Token]) -> None:
        self.untagged("BYE logging out")
        self.tagged(tag, "OK", "LOGOUT completed")
        self.state = "LOGOUT"
        self.disconnect()

    # Not authenticated

    def do_STARTTLS(self, tag: bytes, args: list[bytes]) -> None:
        if self.state != "NOT-AUTHENTICATED" or self.encrypted:
            self.tagged(tag, "BAD", "STARTTLS not allowed now (already under TLS or authenticated)")
        elif not self.can_start_tls:
            self.tagged(tag, "BAD", "STARTTLS not available on this listener")
        else:
            self.tagged(tag, "OK", "Begin TLS negotiation now")
            self.start_tls()

    def do_LOGIN(self, tag: bytes, args: list[bytes]) -> Any:
        if self.state != "NOT-AUTHENTICATED":
            self.tagged(tag, "BAD", "already authenticated")
            return None
        if len(args) != 2 or any(isinstance(a, list) for a in args):
            self.tagged(tag, "BAD", "LOGIN needs a user name and a password")
            return None
        if not self.plaintext_allowed or self.context.backend is None:
            # RFC 3501 section 6.2.3 (LOGINDISABLED), RFC 5530 PRIVACYREQUIRED.
            self.tagged(tag, "NO", "[PRIVACYREQUIRED] LOGIN is disabled before TLS; use STARTTLS")
            return None
        d = self.login_password(args[0], args[1], IAuthenticatedUser)
        d.addCallback(self._login_finished, tag)
        return self.serialize(d)

    def do_AUTHENTICATE(self, tag: bytes, args: list[bytes]) -> None:
        if self.state != "NOT-AUTHENTICATED":
            self.tagged(tag, "BAD", "already authenticated")
            return
        if len(args) not in (1, 2) or any(isinstance(a, list) for a in args):
            self.tagged(tag, "BAD", "AUTHENTICATE needs a mechanism name")
            return
        refused = self.start_sasl(
            args[0], args[1] if len(args) == 2 else None,
            lambda data: self.sendLine(b"+ " + data),
            lambda outcome: self._login_finished(outcome, tag),
            IAuthenticatedUser,
        )
        if refused == "encryption-required":
            self.tagged(tag, "NO", "[PRIVACYREQUIRED] plain-text mechanism refused before TLS")
        elif refused:
            self.tagged(tag, "NO", "unsupported authentication mechanism")

    def _login_finished(self, outcome: Outcome, tag: bytes) -> None:
        if isinstance(outcome, LoggedIn):
            self.state = "AUTHENTICATED"
            self.setTimeout(self.idle_timeout())
            self.tagged(tag, "OK", f"[CAPABILITY {' '.join(self.capabilities())}] logged in")
            return
        if outcome.temporary:
            self.tagged(tag, "NO", "[UNAVAILABLE] temporary authentication failure, try again later")
        elif outcome.cancelled:
            self.tagged(tag, "BAD", "authentication cancelled")
        elif outcome.malformed:
            self.tagged(tag, "BAD", "invalid base64 in authentication data")
        else:
            self.tagged(tag, "NO", "[AUTHENTICATIONFAILED] authentication failed")
        if self.too_many_auth_failures:
            self.untagged("BYE too many authentication failures")
            self.disconnect()


class IMAPFactory(ConnectionLimitingFactory):
    protocol_class = IMAPServer
