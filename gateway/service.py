# -*- test-case-name: tests.test_service -*-
"""
The composition root: a validated configuration in, a running service tree
out.  This is the only module that wires components together; everything
below it receives its collaborators as arguments.

Tree::

    GatewayService (MultiService)        SIGHUP: reload TLS and the directory
      ListenerService "smtp"  ─ endpoint ─ [TLSMemoryBIOFactory] ─ SMTPFactory
      ListenerService "imaps" ─ endpoint ─ TLSMemoryBIOFactory ─ IMAPFactory
      ...

A listener that cannot bind stops the start: L{ListenerService} raises
C{SystemExit} with the listener's name, endpoint and the reason, so twistd
exits non-zero instead of logging and carrying on.

On stop (SIGTERM), every listener stops accepting, each open connection is
told the server is going away and closed after its current command, and
whatever remains after C{server.shutdown_timeout} seconds is aborted.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, cast

from twisted.application import service
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorFromThreads
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from gateway.auth.cache import PasswordCache
from gateway.auth.directory import FileDirectory
from gateway.auth.portal import build_portal
from gateway.auth.realm import GatewayRealm
from gateway.auth.throttle import BANS_FILENAME, Throttle, ThrottleSettings
from gateway.auth.usersfile import UsersFile, UsersFileError
from gateway.config import GatewayConfig, Listener

__all__ = ["build", "GatewayService", "ListenerService", "UsersFileError"]
from gateway.imap.protocol import IMAPFactory
from gateway.pop3.protocol import POP3Factory
from gateway.protocol import ConnectionLimitingFactory, ListenerContext
from gateway.smtp.addressbook import DirectoryAddressBook
from gateway.smtp.delivery import Delivery
from gateway.smtp.policy import PolicySettings
from gateway.smtp.server import SMTPFactory, SMTPServices
from gateway.smtp.spool import Spool
from gateway.store.maildir import MaildirStore
from gateway.tls import ServerTLS, TLSSetupError
from gateway.tls import build as build_tls

log = Logger()

FACTORIES: dict[str, type[ConnectionLimitingFactory]] = {
    "smtp": SMTPFactory,
    "pop3": POP3Factory,
    "imap": IMAPFactory,
}


class ListenerService(service.Service):
    """One listening endpoint and the connections it accepted."""

    def __init__(self, listener: Listener, endpoint: Any, factory: ConnectionLimitingFactory,
                 wrapped: Any, clock: Any, shutdown_timeout: float) -> None:
        self.setName(listener.name)
        self.listener = listener
        self.endpoint = endpoint
        self.factory = factory
        self.wrapped = wrapped
        self.clock = clock
        self.shutdown_timeout = shutdown_timeout
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        # Bind in the privileged phase (ports below 1024 before twistd drops
        # privileges); endpoints for TCP, UNIX and systemd answer at once.
        result: list[Any] = []
        self.endpoint.listen(self.wrapped).addBoth(result.append)
        if not result:
            raise SystemExit(f"mailgateway: listener {self.name} ({self.listener.endpoint}): "
                             "endpoint did not bind immediately")
        outcome = result[0]
        if not IListeningPort.providedBy(outcome):
            reason = outcome.getErrorMessage() if hasattr(outcome, "getErrorMessage") else outcome
            raise SystemExit(
                f"mailgateway: listener {self.name} ({self.listener.endpoint}): "
                f"cannot listen: {reason}"
            )
        self.port = outcome
        host = outcome.getHost()
        log.info("listener {name} ({role}, tls={tls}) on {host}", name=self.name,
                 role=self.listener.role, tls=self.listener.tls, host=host)
        super().privilegedStartService()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        stopped = defer.maybeDeferred(port.stopListening) if port else defer.succeed(None)
        return stopped.addCallback(lambda _: self.factory.close_all(self.shutdown_timeout))


class GatewayService(service.MultiService):
    """
    The whole gateway; reloads certificates and users on SIGHUP.

    @ivar periodic: callables started with the service, each returning a
        running C{LoopingCall} (users-file watch, ban-file sync).
    """

    def __init__(self, config: GatewayConfig, tls: dict[str, ServerTLS],
                 reloadables: list[Any]) -> None:
        super().__init__()
        self.config = config
        self.tls = tls
        self.reloadables = reloadables
        self.periodic: list[Any] = []
        self.closers: list[Any] = []  # called after the listeners stopped
        self._loops: list[Any] = []
        self._previous_hup: Any = None

    def privilegedStartService(self) -> None:
        state = self.config.server.state_dir
        try:
            state.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise SystemExit(f"mailgateway: server.state_dir {state}: {e.strerror}") from None
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self._loops = [start() for start in self.periodic]
        if hasattr(signal, "SIGHUP"):
            from twisted.internet import reactor

            def on_hup(signum: int, frame: Any) -> None:
                cast(IReactorFromThreads, reactor).callFromThread(self.reload)

            self._previous_hup = signal.signal(signal.SIGHUP, on_hup)

    def stopService(self) -> Any:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous_hup = None
        d = defer.maybeDeferred(super().stopService)

        def close_rest(result: Any) -> Any:
            return defer.gatherResults([defer.maybeDeferred(c) for c in self.closers],
                                       consumeErrors=True).addBoth(lambda _: result)

        return d.addBoth(close_rest)

    def reload(self) -> None:
        """Re-read certificates and reloadable components; keep the old on error."""
        for name, server_tls in self.tls.items():
            try:
                server_tls.reload()
            except TLSSetupError as e:
                log.error("TLS profile {name} not reloaded, keeping the old one: {why}",
                          name=name, why=str(e))
            except Exception:
                # Whatever broke, the old contexts stay and the rest (other
                # profiles, the users file) is still reloaded.
                log.failure("TLS profile {name} not reloaded, keeping the old one",
                            name=name)
            else:
                log.info("TLS profile {name} reloaded", name=name)
        for component in self.reloadables:
            try:
                component.reload()
            except Exception:
                log.failure("reload of {c} failed", c=component)


class ThreadRunner:
    """
    The C{run_in_thread} of the directory (password hashing), the store,
    the spool and the throttle: C{runner(f, *args, **kwargs)} runs C{f} in
    one of C{size} worker threads and returns a L{Deferred} that fires on
    the reactor thread with its result or failure.

    What C{deferToThreadPool} on the reactor's pool does, with less work on
    the reactor per call: a C{SimpleQueue} (in C) instead of Twisted's
    team, coordinator and C{queue.Queue} with its Python condition variable
    (about a tenth of the reactor's time with a thread call per login and
    two per message, in bench/smtp_intake.py --starttls --auth).  The
    threads start with the first call and stop (after the work queued
    before) when the reactor shuts down.
    """

    #: How long L{stop} waits, at shutdown, for the work queued before it
    #: (deliveries being fsynced); a thread stuck longer (a hung NFS
    #: server) is left behind, logged: the process exits all the same.
    STOP_WAIT = 60.0

    def __init__(self, reactor: Any, size: int = 10) -> None:
        self._reactor = reactor
        self._size = size
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stopped = False

    def __call__(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        if self._stopped:
            # Like every other failure of the work, on the Deferred: callers
            # (a late delivery's callback at shutdown) need not expect a raise.
            return defer.fail(RuntimeError("the worker threads are stopped"))
        if not self._threads:
            self._start()
        d: defer.Deferred[Any] = defer.Deferred()
        self._queue.put((d, f, args, kwargs))
        return d

    def _start(self) -> None:
        for n in range(self._size):
            thread = threading.Thread(target=self._work, name=f"mailgateway-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._reactor.addSystemEventTrigger("during", "shutdown", self.stop)

    def _work(self) -> None:
        call, get = self._reactor.callFromThread, self._queue.get
        while True:
            item = get()
            if item is None:
                return
            d, f, args, kwargs = item
            try:
                result = f(*args, **kwargs)
            except BaseException:
                call(d.errback, Failure())
            else:
                call(d.callback, result)
            del item, d, f, args, kwargs  # hold nothing while idle

    def stop(self, wait: float | None = None) -> None:
        """Let the threads finish what was queued, then end them; after
        C{wait} seconds (L{STOP_WAIT}) in all, leave those still busy."""
        self._stopped = True
        threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)
        deadline = time.monotonic() + (self.STOP_WAIT if wait is None else wait)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            log.warn("{count} worker thread(s) still busy at shutdown, left behind: "
                      "{names}", count=len(stuck), names=", ".join(stuck))


def mail_services(config: GatewayConfig, reactor: Any, directory: FileDirectory,
                  run_in_thread: Callable[..., Any] | None = None) -> dict[str, Any]:
    """The store, the spool and the SMTP transaction's collaborators, and
    the worker threads, for protocol work too heavy for the reactor (IMAP
    SEARCH's decoding)."""
    if run_in_thread is None:
        run_in_thread = ThreadRunner(reactor)
    state = config.server.state_dir
    store = MaildirStore(
        str(state / "mail"), run_in_thread=run_in_thread, clock=reactor,
        known_account=lambda account: directory.account(account) is not None,
        hostname=config.server.hostname,
    )
    spool = Spool(str(state / "spool"), run_in_thread=run_in_thread, clock=reactor)
    policy = PolicySettings.from_config(config)
    book = DirectoryAddressBook(directory, config.server.local_domains, config.server.aliases)
    delivery = Delivery(store, spool, book, config.server.hostname, reactor)
    smtp = SMTPServices(policy, book, delivery)
    return {"store": store, "spool": spool, "smtp": smtp, "addressbook": book,
            "run_in_thread": run_in_thread}


def build(config: GatewayConfig, reactor: Any, portal: Portal | None = None) -> GatewayService:
    """
    Build the service tree.  Nothing listens until it is started.

    @raise TLSSetupError: a TLS profile's files cannot be used.
    @raise UsersFileError: the users file cannot be used.
    @raise AliasError: the aliases file cannot be used.
    """
    tls = build_tls(config.tls)
    reloadables: list[Any] = []
    root = GatewayService(config, tls, reloadables)
    backend: FileDirectory | None = None
    run_in_thread = ThreadRunner(reactor)
    if portal is None:
        throttle = Throttle(reactor, ThrottleSettings.from_config(
            config.auth.throttle, config.server.trusted_networks))
        if config.auth.users is not None:
            backend = FileDirectory(
                UsersFile(str(config.auth.users)),
                default_domain=config.auth.default_domain,
                certificate_rule=config.auth.certificate_mapping,
                run_in_thread=run_in_thread,
                password_cache=(PasswordCache(config.auth.cache_ttl, reactor)
                                if config.auth.cache_ttl > 0 else None),
            )
            reloadables.append(backend)
            directory = backend
            root.periodic.append(lambda: directory.watch(reactor))
        bans = str(config.server.state_dir / BANS_FILENAME)
        root.periodic.append(lambda: throttle.keep(bans, run_in_thread=run_in_thread))
        portal = build_portal(GatewayRealm(), backend, throttle,
                              backend.canonical_name if backend else None)
    extras: dict[str, Any] = {}
    if backend is not None:
        extras = mail_services(config, reactor, backend, run_in_thread)
        root.closers.append(extras["store"].close)
        reloadables.append(extras["addressbook"])
    sasl_options: dict[str, Any] = {"gssapi.domain": config.auth.default_domain}
    if config.auth.gssapi_keytab is not None:
        sasl_options["gssapi.keytab"] = str(config.auth.gssapi_keytab)
    for listener in config.listeners:
        profile = config.profile_for(listener)
        server_tls = tls[profile.name] if profile else None
        context = ListenerContext(
            listener=listener,
            hostname=config.server.hostname,
            limits=config.limits,
            portal=portal,
            clock=reactor,
            tls=server_tls,
            backend=backend,
            sasl_options=sasl_options,
            # An empty list is a choice (no AUTH on this listener), not "unset".
            mechanisms=(listener.mechanisms if listener.mechanisms is not None
                        else config.auth.mechanisms),
            plaintext_without_tls=(
                listener.plaintext_without_tls
                if listener.plaintext_without_tls is not None
                else config.auth.plaintext_without_tls
            ),
            trusted_networks=config.server.trusted_networks,
            extras=extras,
        )
        factory = FACTORIES[listener.protocol](context)
        wrapped: Any = factory
        if listener.tls == "implicit":
            assert server_tls is not None  # config validation guarantees it
            wrapped = TLSMemoryBIOFactory(server_tls, False, factory)
            wrapped.noisy = False
        endpoint = serverFromString(reactor, listener.endpoint)
        ListenerService(listener, endpoint, factory, wrapped, reactor,
                        config.server.shutdown_timeout).setServiceParent(root)
    return root
