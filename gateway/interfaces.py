"""
The project's zope interfaces: the contracts between its rooms.

Protocol code (POP3, IMAP, SMTP) talks to authentication, storage and policy
only through these interfaces, so that a directory in LDAP or a store in SQL can
replace today's files without touching a protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from gateway.auth.verifiers import OTPState


class IAuthBackend(Interface):
    """
    What SASL mechanisms and APOP may ask of the user directory.

    Every method is asynchronous (returns a L{Deferred}) because a directory may
    live behind the network and because password hashing runs off the reactor
    thread.  Account names given by clients are not trusted: each method
    canonicalises the name itself and answers C{None} (or C{False}) for an
    unknown or disabled account, exactly as for a wrong secret, so that a caller
    cannot tell the two apart.
    """

    def check_password(authcid: str, password: bytes):  # type: ignore[no-untyped-def]
        """
        Check a plain-text password (PLAIN, LOGIN, USER/PASS, IMAP LOGIN).

        The check runs against the stored SCRAM keys; an account that holds only
        a legacy secret is checked against that, and on success its SCRAM keys
        are derived and stored.

        @return: L{Deferred} firing with the canonical account id, or C{None}.
        """

    def scram_credentials(authcid: str, algorithm: str):  # type: ignore[no-untyped-def]
        """
        @param algorithm: C{"SHA-1"} or C{"SHA-256"}.
        @return: L{Deferred} firing with a L{gateway.auth.verifiers.ScramKeys}
            whose C{account} is the canonical id, or C{None}.
        """

    def legacy_secret(authcid: str, mechanism: str):  # type: ignore[no-untyped-def]
        """
        The password-equivalent secret for CRAM-MD5, DIGEST-MD5 or APOP.

        @param mechanism: C{"CRAM-MD5"}, C{"DIGEST-MD5"} or C{"APOP"}.
        @return: L{Deferred} firing with C{(account, secret_bytes)} when the
            account exists, is enabled, and the operator enabled that mechanism
            for it; else C{None}.
        """

    def otp_state(authcid: str):  # type: ignore[no-untyped-def]
        """
        @return: L{Deferred} firing with a L{gateway.auth.verifiers.OTPState} or
            C{None}.
        """

    def otp_advance(account: str, sequence: int, key: bytes):  # type: ignore[no-untyped-def]
        """
        Atomically replace the stored OTP state of C{account} by C{(sequence,
        key)} if and only if the stored sequence is C{sequence + 1}: the
        compare-and-set that makes a one-time password usable once.

        @return: L{Deferred} firing with C{True} if the state was replaced.
        """

    def account_for_certificate(certificate: object):  # type: ignore[no-untyped-def]
        """
        Map a verified TLS client certificate (a C{cryptography.x509.Certificate})
        to an account by the configured rule.

        @return: L{Deferred} firing with the canonical account id, or C{None}.
        """

    def may_act_as(account: str, authzid: str):  # type: ignore[no-untyped-def]
        """
        @return: L{Deferred} firing with C{True} if C{account} may act for
            C{authzid} (always true when C{authzid} names C{account} itself).
        """


class IOTPReinitialisation(Interface):
    """
    What a directory provides, besides L{IAuthBackend}, to let clients
    re-initialise their OTP sequence (RFC 2243 section 3).

    Separate from L{IAuthBackend} because a read-only directory (LDAP) may
    not be able to store a new seed.
    """

    def otp_reinitialise(  # type: ignore[no-untyped-def]
        account: str, sequence: int, key: bytes, state: OTPState
    ):
        """
        Atomically replace the stored OTP state of C{account} by C{state} if
        and only if the stored sequence is C{sequence + 1}: the same
        compare-and-set as L{IAuthBackend.otp_advance}, where C{(sequence,
        key)} is the OTP the client just proved it holds.

        @return: L{Deferred} firing with C{True} if the state was replaced.
        """


class IMechanismFactory(Interface):
    """
    A SASL mechanism as offered by a listener: a name, its properties, and a
    way to start one exchange.
    """

    name = Attribute("The IANA mechanism name, e.g. 'SCRAM-SHA-256'.")
    plaintext = Attribute("True if the client sends its password in clear.")
    legacy = Attribute("True if it needs a password-equivalent stored secret.")

    def __call__(context):  # type: ignore[no-untyped-def]
        """
        @param context: a L{gateway.auth.sasl.base.SASLContext}.
        @return: a fresh L{gateway.auth.sasl.base.Mechanism}.
        """


class IMailStore(Interface):
    """
    The mail store: every account's folders, shared by POP3, IMAP and SMTP
    delivery.  Value types and errors are in L{gateway.store.model}.

    Every method that touches the disk returns a L{Deferred}; disk work never
    runs on the reactor thread.  Account names are canonical account ids
    (from the directory).  Folder names use C{"/"} as the hierarchy
    delimiter; C{"INBOX"} is case-insensitive, other names are not.
    """

    def deliver(accounts, message, internal_date=None):  # type: ignore[no-untyped-def]
        """
        Store one message in the INBOX of each account.

        The message is written once to C{tmp/}, fsynced, and linked (or
        copied) into each account's C{new/}; each directory is fsynced before
        the returned Deferred fires.  Nobody is told "stored" before the data
        is on disk; concurrent deliveries may share one directory fsync.  A
        failure leaves no partial message visible.

        @param accounts: canonical account ids (an unknown account gets
            L{NoSuchAccount} in the report; the store creates the Maildir of
            a known account on first use).
        @param message: the message as C{bytes}, or the path (C{str}) of a
            spooled file to read; line ends are stored as CRLF.
        @param internal_date: POSIX seconds, default now.
        @return: L{Deferred} firing with a L{DeliveryReport}; quota refusals
            and the like are in the report, not errbacks.
        """

    def open_folder(account, name, readonly=False):  # type: ignore[no-untyped-def]
        """
        Open a session on a folder (IMAP SELECT/EXAMINE, a POP3 maildrop).
        Each call gets its own L{IFolderSession}; sessions on one folder in
        this process share one index and see each other's changes.

        @raise NoSuchFolder: (errback).
        @return: L{Deferred} firing with an L{IFolderSession}.
        """

    def status(account, name):  # type: ignore[no-untyped-def]
        """@return: L{Deferred} firing with a L{FolderStatus}, from the index."""

    def folders(account):  # type: ignore[no-untyped-def]
        """@return: L{Deferred} firing with a list of L{FolderInfo}."""

    def create_folder(account, name):  # type: ignore[no-untyped-def]
        """Create a folder (and missing parents).  Errback L{FolderExists},
        L{InvalidFolderName}."""

    def delete_folder(account, name):  # type: ignore[no-untyped-def]
        """Delete a folder and its messages.  INBOX cannot be deleted."""

    def rename_folder(account, old, new):  # type: ignore[no-untyped-def]
        """
        Rename a folder and its children.  Renaming INBOX moves its messages
        to the new folder and leaves INBOX empty (RFC 3501 section 6.3.5).
        """

    def subscribe(account, name, subscribed):  # type: ignore[no-untyped-def]
        """Set or clear a folder's subscription (IMAP SUBSCRIBE/UNSUBSCRIBE)."""

    def lock_pop3(account):  # type: ignore[no-untyped-def]
        """
        Take the account's exclusive POP3 lock (RFC 1939 section 8).

        @return: L{Deferred} firing with a callable that releases it, or
            failing with L{MailboxInUse}.
        """

    def usage(account):  # type: ignore[no-untyped-def]
        """@return: L{Deferred} firing with the account's L{Usage}."""


class IFolderSession(Interface):
    """
    One client's view of one folder.  The view (the list of messages, hence
    IMAP sequence numbers) changes only when the session calls L{sync}, so
    the protocol decides when expunges and new messages are announced.
    """

    name = Attribute("The folder's full name.")
    uidvalidity = Attribute("The folder's UIDVALIDITY.")
    readonly = Attribute("True for EXAMINE sessions.")
    recent = Attribute("The frozenset of UIDs that are \\Recent in this session.")

    def messages():  # type: ignore[no-untyped-def]
        """The session's view: a sequence of L{MessageInfo} in UID order
        (index 0 is message sequence number 1)."""

    def uidnext():  # type: ignore[no-untyped-def]
        """The next UID the folder will assign."""

    def sync():  # type: ignore[no-untyped-def]
        """
        Bring the view up to date with the folder (including changes made
        by other processes directly in the Maildir).

        @return: L{Deferred} firing with the L{Changes} since the view was
            last synced; C{expunged} lists UIDs that were in the old view.
        """

    def open_message(uid):  # type: ignore[no-untyped-def]
        """@return: L{Deferred} firing with a binary file object positioned
        at 0 (the caller closes it); errback L{NoSuchMessage}."""

    def read_message(uid):  # type: ignore[no-untyped-def]
        """
        The whole message, read off the reactor thread (IMAP FETCH and
        SEARCH, POP3 TOP and RETR of small messages; POP3 streams large
        ones with L{open_message}).

        @return: L{Deferred} firing with C{bytes}; errback L{NoSuchMessage}.
        """

    def read_messages(uids):  # type: ignore[no-untyped-def]
        """
        Several whole messages in one call off the reactor thread (POP3's
        read-ahead of pipelined RETRs: one thread hop for many messages).
        The caller bounds how much it asks for.

        @return: L{Deferred} firing with a C{dict} from UID to C{bytes} for
            the messages read; a UID missing from it is gone or was not
            readable this way (L{read_message} says why).
        """

    def append(message, flags=(), internal_date=None):  # type: ignore[no-untyped-def]
        """Add a message (IMAP APPEND); durable before firing.
        @return: L{Deferred} firing with its UID."""

    def set_flags(uids, flags, mode):  # type: ignore[no-untyped-def]
        """
        @param mode: C{"replace"}, C{"add"} or C{"remove"}.
        @return: L{Deferred} firing with the updated L{MessageInfo}s.  Two
            sessions changing flags at once lose no update.
        """

    def expunge(uids=None):  # type: ignore[no-untyped-def]
        """Remove the messages flagged \\Deleted (only those in C{uids} when
        given: UID EXPUNGE).  @return: L{Deferred} firing with their UIDs."""

    def delete(uids):  # type: ignore[no-untyped-def]
        """Remove these messages whatever their flags (POP3 at QUIT), all at
        once.  @return: L{Deferred} firing with the UIDs removed."""

    def copy(uids, destination):  # type: ignore[no-untyped-def]
        """@return: L{Deferred} firing with C{{source uid: new uid}}
        (UIDPLUS COPYUID); the destination's UIDVALIDITY is in its status."""

    def move(uids, destination):  # type: ignore[no-untyped-def]
        """Copy, then remove from this folder atomically from a client's
        point of view.  @return: like L{copy}."""

    def on_change(callback):  # type: ignore[no-untyped-def]
        """
        Call C{callback()} (no arguments, on the reactor thread) when the
        folder changed and L{sync} would report something: new delivery,
        another session's flags or expunge, or a change found on disk.
        IMAP IDLE uses it; it must fire within about a second of a delivery
        by this process.
        """

    def close():  # type: ignore[no-untyped-def]
        """End the session (IMAP CLOSE/UNSELECT/LOGOUT, POP3 end)."""
