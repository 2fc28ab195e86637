"""
The project's zope interfaces: the contracts between its rooms.

Protocol code (POP3, IMAP, SMTP) talks to authentication, storage and policy
only through these interfaces, so that a directory in LDAP or a store in SQL can
replace today's files without touching a protocol.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


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
        account: str, sequence: int, key: bytes, state: object
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
