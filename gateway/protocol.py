# -*- test-case-name: tests.test_protocols,tests.test_base_review -*-
"""
What POP3, IMAP and SMTP connections share: the listener they belong to, the
TLS state (implicit or upgraded), limits (line length, idle time, bad
commands, connections), and the connection log.

L{LineProtocol} is a C{LineReceiver}, not a C{LineOnlyReceiver}: its
C{clearLineBuffer} drops every line the client sent after STARTTLS/STLS and
before the handshake, which is how L{LineProtocol.start_tls} closes the
command-injection hole (CVE-2011-0411; RFC 3207 section 4.2, RFC 2595 section
3.1).  A C{LineOnlyReceiver} would still deliver the lines of the same
segment.

Protocol classes know nothing of storage or policy: they receive a
L{ListenerContext} with the portal and settings, built by L{gateway.service}.

The connection log: by default a line when a connection opens, when its
TLS handshake completes, when it logs in and when it closes.  A protocol
that sets L{LineProtocol.summary_log} (SMTP, where a client may open a
connection per message) writes one line at the close instead, as Postfix's
smtpd does: client, TLS version and cipher, account and mechanism, what the
connection did and why it ended (formatting and writing the four lines was
about a tenth of the reactor's time in C{bench/smtp_intake.py --starttls
--auth}).  Refusals, timeouts and errors are logged when they happen.

Closing: L{LineProtocol.disconnect} asks the transport to close once the
last reply is written; a client that never reads would keep that reply, and
the connection, for ever, so after C{[limits] close_grace} seconds (5 by
default) the connection is aborted.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from OpenSSL import SSL
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import basic, policies
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.auth.checkers import PlainPasswordCredentials
from gateway.auth.sasl import registry
from gateway.auth.sasl.base import SASLContext
from gateway.auth.sasl.exchange import Exchange, LoggedIn, Outcome, portal_login
from gateway.config import Limits, Listener
from gateway.interfaces import IAuthBackend
from gateway.tls import ServerTLS, connection_info


@dataclass
class ListenerContext:
    """
    Everything a connection of one listener needs, wired by the service.

    @ivar tls: the listener's L{ServerTLS}, or C{None} for C{tls = "none"}.
    @ivar mechanisms: the SASL mechanisms this listener offers (before the
        TLS and plain-text filter).
    @ivar extras: room for the later services (store, policy, queue) without
        changing this class's constructor.
    """

    listener: Listener
    hostname: str
    limits: Limits
    portal: Portal
    clock: IReactorTime
    tls: ServerTLS | None = None
    backend: IAuthBackend | None = None
    mechanisms: tuple[str, ...] = ()
    sasl_options: dict[str, Any] = field(default_factory=dict)
    plaintext_without_tls: bool = False
    trusted_networks: tuple[Any, ...] = ()
    extras: dict[str, Any] = field(default_factory=dict)

    def is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted_networks)


def peer_host(address: Any) -> str:
    """
    The client's address as text, an IPv4 client on an IPv6 socket
    (C{::ffff:192.0.2.7}) spelt as IPv4: trusted networks, the throttle and
    the per-address limit must see one client, whichever socket it came in
    through.
    """
    host = getattr(address, "host", None) or str(address)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return str(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(host)


#: IPv6 clients are counted per network of this length for
#: C{max_connections_per_address}: one host or site usually holds a /64 and
#: may use any address in it (as L{gateway.auth.throttle} groups them).
IPV6_PREFIX = 64


def address_key(address: str) -> str:
    """What C{max_connections_per_address} counts C{address} under."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        shift = 128 - IPV6_PREFIX
        return str(ipaddress.IPv6Network(((int(ip) >> shift) << shift, IPV6_PREFIX)))
    return address


@implementer(IHandshakeListener)
class LineProtocol(basic.LineReceiver, policies.TimeoutMixin):
    """
    Base of the three protocols.  Subclasses implement L{greet},
    L{line_received}, L{reply_busy}, L{reply_line_too_long},
    L{reply_timeout} and set C{service_name}.
    """

    delimiter = b"\r\n"
    service_name = "line"
    #: One log line per connection, at its close (see the module docstring).
    summary_log = False
    #: Seconds between L{disconnect} and the abort of a connection still open.
    @property
    def close_grace(self) -> float:
        """
        Seconds a closing connection may take to send its last reply (and,
        under TLS, its close_notify) before it is aborted: a client that
        stops reading must not hold a connection, a file descriptor and a
        slot in the listener's limits for ever (loseConnection waits for
        the write buffer).
        """
        return float(self.context.limits.close_grace)
    transport: Any  # set by makeConnection; a TCP or TLS transport
    factory: Any
    log = Logger()

    def __init__(self, context: ListenerContext) -> None:
        self.context = context
        self.MAX_LENGTH = context.limits.max_line_length
        # TimeoutMixin's clock: the attribute it documents for replacing.
        self.callLater = context.clock.callLater  # type: ignore[method-assign, assignment]
        self.encrypted = False
        self.tls_pending = False
        self.bad_commands = 0
        self.peer = "?"
        self.admitted = False
        self.exchange: Exchange | None = None
        self.peer_certificate: Any = None
        self.tls_info: dict[str, str] = {}
        self.channel_binding: dict[str, bytes] = {}
        self.auth_failures = 0
        self.account: str | None = None
        self.logout: Any = None
        #: connectionLost has run (the transport's C{disconnecting} tells
        #: only of a close of ours, not of the client's or a reset).
        self.connection_lost = False
        self.mechanism: str | None = None
        self._close_call: Any = None  # the abort after disconnect's grace
        self._session_call: Any = None  # the bound on the whole connection
        self._timeout_held = False  # the server is working; the client waits
        self._session_overdue = False

    # Connection life cycle

    def connectionMade(self) -> None:
        self.peer = peer_host(self.transport.getPeer())
        factory: ConnectionLimitingFactory = self.factory
        self.admitted = factory.admit(self.peer)
        if not self.admitted:
            self.log.warn(
                "{listener}: refused {peer}: too many connections",
                listener=self.context.listener.name,
                peer=self.peer,
            )
            self.reply_busy()
            self.disconnect()
            return
        factory.connections.add(self)
        # Replies are written whole; Nagle would hold a short last segment
        # (POP3's ".\r\n", a reply after a pipelined command) until the
        # client's delayed ACK: about 40 ms per exchange.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            try:
                no_delay(True)
            except Exception:  # not a TCP socket (UNIX, systemd pipes)
                pass
        self.encrypted = self.context.listener.tls == "implicit"
        if not self.summary_log:
            self.log.info(
                "{listener}: connection from {peer}",
                listener=self.context.listener.name,
                peer=self.peer,
            )
        self.setTimeout(self.context.limits.tls_handshake_timeout if self.encrypted
                        else self.idle_timeout())
        bound = self.session_timeout()
        if bound is not None:
            self._session_call = self.context.clock.callLater(bound, self._session_expired)
        if not self.encrypted:
            self.greet()
        # With implicit TLS the greeting waits for the handshake: it must
        # advertise what TLS makes possible (EXTERNAL with a client
        # certificate, SCRAM-*-PLUS), and clients may rely on it (RFC 3501
        # section 7.1; RFC 5802 section 6 downgrade detection).

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connection_lost = True
        self.setTimeout(None)
        if self._close_call is not None:
            if self._close_call.active():
                self._close_call.cancel()
            self._close_call = None
        if self._session_call is not None:
            if self._session_call.active():
                self._session_call.cancel()
            self._session_call = None
        if self.logout is not None:
            logout, self.logout = self.logout, None
            try:
                logout()
            except Exception:
                # The slot below must be given back whatever the session's
                # end did, or the listener loses it for good.
                self.log.failure("{listener}: logout of {peer} failed",
                                 listener=self.context.listener.name, peer=self.peer)
        if self.admitted:
            self.admitted = False
            self.factory.release(self.peer)
            self.factory.connections.discard(self)
            self.factory.connection_closed()
            why = reason.getErrorMessage() if reason is not None else "done"
            if self.summary_log:
                self._log_summary(why)
            else:
                self.log.info(
                    "{listener}: {peer} closed: {why}",
                    listener=self.context.listener.name,
                    peer=self.peer,
                    why=why,
                )

    def _log_summary(self, why: str) -> None:
        """
        The connection's one log line: C{"<listener>: <client> logged in as
        <account> (<mechanism>), TLSv1.3 <cipher>, <what it did>, closed:
        <why>"}, each part only when it applies.  The login part reads as
        the per-event line of the other protocols, so a search for
        C{"logged in as alice"} finds both.
        """
        parts = []
        if self.account is not None:
            parts.append(f"logged in as {self.account} ({self.mechanism})")
        if self.tls_info:
            parts.append(f"{self.tls_info['version']} {self.tls_info['cipher']}")
        elif not self.encrypted:
            parts.append("no TLS")
        details = self.summary_details()
        if details:
            parts.append(details)
        parts.append(f"closed: {why}")
        self.log.info("{listener}: {peer} {summary}", listener=self.context.listener.name,
                      peer=self.peer, summary=", ".join(parts))

    def summary_details(self) -> str:
        """What the connection did, for L{summary_log}'s line (C{""}: nothing
        to say)."""
        return ""

    def handshakeCompleted(self) -> None:
        self.encrypted = True
        self.tls_pending = False
        self.refresh_timeout()  # the handshake's own timeout is over
        self._read_tls_state()
        self.tls_info = connection_info(self.transport) or {}
        if not self.summary_log:
            info = self.tls_info or {"version": "?", "cipher": "?"}
            self.log.info(
                "{listener}: {peer} TLS {version} {cipher}",
                listener=self.context.listener.name,
                peer=self.peer,
                version=info["version"],
                cipher=info["cipher"],
            )
        if self.context.listener.tls == "implicit":
            self.greet()
        else:
            self.tls_started()

    def _read_tls_state(self) -> None:
        """Once per handshake: the verified client certificate and the
        channel binding data for SCRAM-*-PLUS."""
        handle = self.transport.getHandle() if hasattr(self.transport, "getHandle") else None
        if not isinstance(handle, SSL.Connection) or self.context.tls is None:
            return
        try:
            self.peer_certificate = self.context.tls.verified_peer_certificate(handle)
            if handle.get_protocol_version_name() == "TLSv1.3":
                # RFC 9266 tls-exporter; for TLS 1.2 it would need the
                # extended master secret, so it is not offered there.
                self.channel_binding = {
                    "tls-exporter": handle.export_keying_material(
                        b"EXPORTER-Channel-Binding", 32)
                }
        except Exception:
            self.log.failure("reading the TLS state of {peer}", peer=self.peer)

    # Lines

    def lineReceived(self, line: bytes) -> Any:
        if self.transport.disconnecting:
            return None  # closing: nothing more is run
        if self.tls_pending:
            # Belt and braces: nothing may be processed between the upgrade
            # reply and the handshake.
            return None
        self.resetTimeout()
        if self.exchange is not None:
            # A SASL response: nothing else runs until the mechanism answers.
            self._pause()
            self.exchange.respond(line)
            return None
        # Never hand the handler's result (often a Deferred) back to
        # LineReceiver: a true value there means "stop processing the
        # buffer", which would strand pipelined commands after one answered
        # at once.
        self.line_received(line)
        return None

    def serialize(self, d: Deferred[Any], *, hold_timeout: bool = False) -> Deferred[Any]:
        """
        Read no further command until C{d} (and the callbacks already on it,
        which write the reply) has fired: replies stay in order however the
        client pipelines (the fault of twisted/twisted#8126).

        @param hold_timeout: C{d} is the server's own work (a delivery), not
            waiting on the client: see L{hold_timeout}.
        """
        self._pause()
        if hold_timeout:
            self.hold_timeout()
        return d.addErrback(self._internal_error).addBoth(self._resume)

    # Timers: the idle timeout of the current state (L{idle_timeout}), and
    # an optional bound on the whole connection (L{session_timeout}).

    def refresh_timeout(self) -> None:
        """The state changed (a message begins, a login is done): wait
        L{idle_timeout} from now."""
        if not self._timeout_held:
            self.setTimeout(self.idle_timeout())

    def hold_timeout(self) -> None:
        """
        The server is working on the client's command and the client waits
        for the reply: no idle timeout runs until reading resumes
        (L{_resume}), and a session bound that passes meanwhile waits for
        the reply.  Timing out our own slowness would drop a reply the
        client is owed; after DATA it would make the client send the
        message again (RFC 5321 sections 4.5.3.2.6 and 6.1).  Not for
        work that waits on the client (a reply it does not read).
        """
        self._timeout_held = True
        self.setTimeout(None)

    def _release_timeout(self) -> None:
        if not self._timeout_held:
            return
        self._timeout_held = False
        if self._session_overdue:
            self._session_expired()
        elif self.transport is not None and not self.transport.disconnecting:
            self.setTimeout(self.idle_timeout())

    def _session_expired(self) -> None:
        self._session_call = None
        if self._timeout_held:
            self._session_overdue = True
            return
        if self.transport is None or self.transport.disconnecting:
            return
        self.log.info(
            "{listener}: {peer} connection time limit",
            listener=self.context.listener.name,
            peer=self.peer,
        )
        self.reply_session_timeout()
        self.disconnect()

    def _pause(self) -> None:
        if self.transport is not None and not self.transport.disconnecting:
            self.pauseProducing()

    def lineLengthExceeded(self, line: bytes) -> Any:
        self.reply_line_too_long()
        self.disconnect()
        return None

    def timeoutConnection(self) -> None:
        self.log.info(
            "{listener}: {peer} idle timeout",
            listener=self.context.listener.name,
            peer=self.peer,
        )
        self.reply_timeout()
        self.disconnect()

    def count_bad_command(self) -> bool:
        """
        Count a bad command.

        @return: C{True} if the connection has reached the limit and is being
            closed (the caller sends nothing more).
        """
        self.bad_commands += 1
        if self.bad_commands >= self.context.limits.max_bad_commands:
            self.disconnect()
            return True
        return False

    # TLS

    @property
    def can_start_tls(self) -> bool:
        return (
            self.context.tls is not None
            and self.context.listener.tls == "starttls"
            and not self.encrypted
            and not self.tls_pending
        )

    def start_tls(self) -> None:
        """
        Upgrade to TLS with the listener's context.  The caller has already
        written its "go ahead" reply; every byte the client sent after the
        upgrade command is thrown away (RFC 3207 section 4.2).
        """
        dropped = self.clearLineBuffer()
        if dropped:
            self.log.warn(
                "{listener}: {peer} sent {n} bytes after the TLS upgrade "
                "command; discarded",
                listener=self.context.listener.name,
                peer=self.peer,
                n=len(dropped),
            )
        self.tls_pending = True
        if not self._timeout_held:
            self.setTimeout(self.context.limits.tls_handshake_timeout)
        self.transport.startTLS(self.context.tls)

    @property
    def plaintext_allowed(self) -> bool:
        """May a password cross this connection in clear now?"""
        return self.encrypted or self.context.plaintext_without_tls

    def shutdown(self) -> None:
        """
        The server is stopping: say goodbye and close once the current
        command's reply is written.  Subclasses with work in flight override
        this to finish it first.
        """
        self.reply_shutdown()
        self.disconnect()

    # Authentication

    def sasl_context(self) -> SASLContext | None:
        """What the mechanisms may know of this connection, or C{None} if no
        directory is configured."""
        if self.context.backend is None:
            return None
        return SASLContext(
            service=self.service_name,
            hostname=self.context.hostname,
            backend=self.context.backend,
            encrypted=self.encrypted,
            peer_certificate=self.peer_certificate,
            channel_binding=dict(self.channel_binding),
            options=self.context.sasl_options,
        )

    def offered_mechanisms(self) -> list[str]:
        """The SASL mechanisms to advertise now."""
        if self.account is not None:
            return []
        sasl = self.sasl_context()
        if sasl is None:
            return []
        return registry.offered(
            self.context.mechanisms,
            encrypted=self.encrypted,
            plaintext_without_tls=self.context.plaintext_without_tls,
            context=sasl,
        )

    def handler_for(self, verb: bytes) -> Callable[..., Any] | None:
        """The C{do_VERB} method for a command verb, or C{None}."""
        try:
            name = verb.decode("ascii").upper()
        except UnicodeDecodeError:
            return None
        if not name.isalpha():
            return None
        handler: Callable[..., Any] | None = getattr(self, f"do_{name}", None)
        return handler

    def start_sasl(self, name: bytes, initial: bytes | None,
                   send_challenge: Callable[[bytes], None],
                   finish: Callable[[Outcome], None], interface: Any) -> str | None:
        """
        Begin a SASL exchange.  Commands are not read while the mechanism or
        the portal works; only the client's responses to challenges are.

        @param send_challenge: writes a base64 challenge in the protocol's
            framing.
        @param finish: writes the protocol's final reply for the outcome.
        @return: C{None} once started; else why not, with nothing sent:
            C{"encryption-required"} for a plain-text mechanism before TLS,
            C{"unsupported"} for one unknown or not offered now.
        """
        text = name.decode("ascii", "replace").upper()
        sasl = self.sasl_context()
        mechanism = None
        if sasl is not None:
            mechanism = registry.create(
                text, sasl, names=self.context.mechanisms,
                plaintext_without_tls=self.context.plaintext_without_tls,
            )
        if mechanism is None:
            known = registry.MECHANISMS.get(text)
            if (known is not None and known.plaintext and not self.plaintext_allowed
                    and text in self.context.mechanisms):
                return "encryption-required"
            return "unsupported"

        def challenge(data: bytes) -> None:
            send_challenge(data)
            self._resume(None)

        self.exchange = Exchange(
            mechanism, self.context.portal, self.peer, self.context.is_trusted(self.peer),
            interface, challenge,
        )
        self._pause()
        d = self.exchange.begin(initial)
        d.addCallback(self._authenticated)
        d.addCallback(finish)
        d.addErrback(self._internal_error)
        d.addBoth(self._resume)
        return None

    def _resume(self, result: Any) -> Any:
        self._release_timeout()
        if self.transport is not None and not self.transport.disconnecting:
            self.resumeProducing()
        return result

    def disconnect(self) -> None:
        """
        Close once what was written is sent, and run no further command;
        abort the connection if it is still open L{close_grace} seconds
        later (a client that does not read its last reply).

        If reading is paused (a command in progress), it is resumed first: a
        TLS transport must read the peer's close_notify to finish closing,
        or the connection, its slot in the factory and its descriptor linger
        (found by real clients on the implicit-TLS listeners).
        """
        if self.transport is None or self.transport.disconnecting:
            return
        self._buffer = b""
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()
        self.transport.loseConnection()
        if self._close_call is None:
            self._close_call = self.context.clock.callLater(self.close_grace, self._close_overdue)

    def _close_overdue(self) -> None:
        self._close_call = None
        if self.transport is not None:
            self.log.info("{listener}: {peer} did not read its last reply in {grace} s; aborted",
                          listener=self.context.listener.name, peer=self.peer,
                          grace=self.close_grace)
            self.transport.abortConnection()

    def _internal_error(self, failure: Failure) -> None:
        self.log.failure("{listener}: internal error", failure,
                         listener=self.context.listener.name)
        self.disconnect()

    def login(self, credentials: Any, interface: Any, mechanism: str) -> Deferred[Outcome]:
        """A login without SASL (USER/PASS, IMAP LOGIN, APOP), through the
        same portal and throttle."""
        d = portal_login(self.context.portal, credentials, interface, mechanism)
        return d.addCallback(self._authenticated)

    def login_password(self, user: bytes, password: bytes, interface: Any) -> Deferred[Outcome]:
        """USER/PASS and IMAP LOGIN."""
        credentials = PlainPasswordCredentials(
            user, password, self.peer, self.context.is_trusted(self.peer)
        )
        return self.login(credentials, interface, "PASSWORD")

    def _authenticated(self, outcome: Outcome) -> Outcome:
        self.exchange = None
        if isinstance(outcome, LoggedIn) and self.connection_lost:
            # The client left while the portal worked: connectionLost found
            # no logout to call, so the realm's session ends here.
            try:
                outcome.logout()
            except Exception:
                self.log.failure("{listener}: logout of {peer} failed",
                                 listener=self.context.listener.name, peer=self.peer)
            return outcome
        if isinstance(outcome, LoggedIn):
            self.account = outcome.account
            self.mechanism = outcome.mechanism
            self.logout = outcome.logout
            self.auth_failures = 0
            if not self.summary_log:
                self.log.info("{listener}: {peer} logged in as {account} ({mech})",
                              listener=self.context.listener.name, peer=self.peer,
                              account=outcome.account, mech=outcome.mechanism)
        elif not outcome.cancelled:
            self.auth_failures += 1
        return outcome

    @property
    def too_many_auth_failures(self) -> bool:
        return self.auth_failures >= self.context.limits.max_auth_failures

    # For subclasses

    def reply_shutdown(self) -> None:
        raise NotImplementedError

    def idle_timeout(self) -> float:
        """Seconds to wait for the client in the current state."""
        raise NotImplementedError

    def session_timeout(self) -> float | None:
        """Seconds a connection may last at most, or C{None}: no bound."""
        return None

    def reply_session_timeout(self) -> None:
        """Say goodbye when L{session_timeout} has passed."""
        self.reply_timeout()

    def greet(self) -> None:
        raise NotImplementedError

    def line_received(self, line: bytes) -> Any:
        raise NotImplementedError

    def tls_started(self) -> None:
        """Called once the handshake is done; reset state here."""

    def reply_busy(self) -> None:
        raise NotImplementedError

    def reply_line_too_long(self) -> None:
        raise NotImplementedError

    def reply_timeout(self) -> None:
        raise NotImplementedError


class ConnectionLimitingFactory(Factory):
    """
    A factory for one listener that counts its connections, in total and per
    client address (an IPv4-mapped address as its IPv4 address, IPv6 per
    L{IPV6_PREFIX} network: L{address_key}), against the configured limits.
    """

    protocol_class: type[LineProtocol] = LineProtocol
    noisy = False  # the listener service logs once, per listener

    def __init__(self, context: ListenerContext) -> None:
        self.context = context
        self.total = 0
        self.by_address: Counter[str] = Counter()
        self.connections: set[LineProtocol] = set()
        self._drained: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> LineProtocol:
        p = self.protocol_class(self.context)
        p.factory = self
        return p

    def admit(self, address: str) -> bool:
        """Take a slot for a client at C{address} if the limits allow (see
        L{address_key} for what counts as one address)."""
        limits = self.context.limits
        key = address_key(address)
        if self.total >= limits.max_connections:
            return False
        if (
            self.by_address[key] >= limits.max_connections_per_address
            and not self.context.is_trusted(address)
        ):
            return False
        self.total += 1
        self.by_address[key] += 1
        return True

    def close_all(self, timeout: float) -> Deferred[None]:
        """
        Ask every open connection to finish, and abort those still open after
        C{timeout} seconds.

        @return: a L{Deferred} that fires when no connection is left.
        """
        if not self.connections:
            return succeed(None)
        for conn in list(self.connections):
            conn.shutdown()
        d: Deferred[None] = Deferred()
        self._drained.append(d)

        def abort_rest() -> None:
            for conn in list(self.connections):
                conn.transport.abortConnection()

        timer = self.context.clock.callLater(timeout, abort_rest)
        def stop_timer(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(stop_timer)
        if not self.connections:
            self.connection_closed()
        return d

    def connection_closed(self) -> None:
        if not self.connections:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def release(self, address: str) -> None:
        """Give back the slot L{admit} took for C{address}."""
        key = address_key(address)
        self.total -= 1
        self.by_address[key] -= 1
        if self.by_address[key] <= 0:
            del self.by_address[key]
