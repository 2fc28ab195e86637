# -*- test-case-name: tests.test_auth_verifiers,tests.test_sasl_scram -*-
"""
Stored verifiers: what the users file keeps instead of passwords.

An account stores, per SCRAM hash, C{(salt, iterations, StoredKey, ServerKey)}
(RFC 5802 section 3).  Nothing in it lets a reader log in: PLAIN and LOGIN
passwords are checked by deriving the client key and comparing its hash with
StoredKey, in constant time.

Password hashing (PBKDF2) is CPU work: callers on the reactor thread run
L{check_password} through C{deferToThread}.  It is done by C{cryptography}
(the OpenSSL it bundles), not C{hashlib}: the same function and result, in
less than half the time of the system OpenSSL 3.0's C{PKCS5_PBKDF2_HMAC}
that C{hashlib} calls here (0.6 against 1.3-1.5 ms for 4096 rounds of
SHA-256, measured for bench/smtp_intake.py --auth); both release the GIL.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stringprep
import unicodedata
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

#: RFC 7677 recommends at least 4096 iterations for SCRAM-SHA-256.
DEFAULT_ITERATIONS = 4096

ALGORITHMS = {"SHA-1": "sha1", "SHA-256": "sha256"}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"SHA-1": hashes.SHA1, "SHA-256": hashes.SHA256}


@dataclass(frozen=True)
class ScramKeys:
    """
    One SCRAM verifier (RFC 5802 section 3).

    @ivar account: the canonical account id these keys belong to.
    @ivar algorithm: C{"SHA-1"} or C{"SHA-256"}.
    """

    account: str
    algorithm: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


@dataclass(frozen=True)
class OTPState:
    """
    The server side of RFC 2289: the last one-time password accepted.

    @ivar algorithm: C{"md5"} or C{"sha1"}.
    @ivar seed: the seed, lower case, 1 to 16 alphanumerics.
    @ivar sequence: the sequence number the I{next} challenge will ask for
        plus one: the client must answer for C{sequence - 1}.
    @ivar key: the 8-byte OTP for C{sequence} (the last one accepted, or the
        one set by C{otp-init}).
    """

    account: str
    algorithm: str
    seed: str
    sequence: int
    key: bytes


class SASLprepError(ValueError):
    """A string has characters RFC 4013 prohibits."""


def saslprep(text: str) -> str:
    """
    Prepare a user name or password per RFC 4013 (SASLprep).

    @raise SASLprepError: for prohibited or badly ordered bidirectional text.
    """
    if text.isascii() and text.isprintable():
        # Printable ASCII is its own SASLprep: nothing in it is mapped
        # (B.1, C.1.2), changed by NFKC, prohibited (C.2.1 is the controls)
        # or bidirectional.  Most names and passwords; the full check below
        # costs about 0.1 ms a string on the reactor.
        return text
    # RFC 4013 section 2.1 mapping: non-ASCII spaces to SPACE, B.1 to nothing.
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in text
        if not stringprep.in_table_b1(ch)
    )
    # Section 2.2: normalisation form KC.
    normal = unicodedata.normalize("NFKC", mapped)
    if not normal:
        return normal
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21,
        stringprep.in_table_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
        stringprep.in_table_a1,
    )
    for ch in normal:
        if any(test(ch) for test in prohibited):
            raise SASLprepError(f"prohibited character U+{ord(ch):04X}")
    # Section 2.4 / RFC 3454 section 6: bidirectional rules.
    ral = [stringprep.in_table_d1(ch) for ch in normal]
    if any(ral):
        if any(stringprep.in_table_d2(ch) for ch in normal):
            raise SASLprepError("mixed bidirectional text")
        if not (ral[0] and ral[-1]):
            raise SASLprepError("bidirectional text must start and end RandAL")
    return normal


def _prepared_password(password: bytes | str) -> bytes:
    if isinstance(password, bytes):
        octets = password
        try:
            password = octets.decode("utf-8")
        except UnicodeDecodeError:
            # Not UTF-8: no SASLprep possible, use the octets as they are.
            return octets
    try:
        return saslprep(password).encode("utf-8")
    except SASLprepError:
        return password.encode("utf-8")


def salted_password(
    password: bytes | str, salt: bytes, iterations: int, algorithm: str
) -> bytes:
    """RFC 5802: SaltedPassword := Hi(Normalize(password), salt, i), which
    is PBKDF2 with HMAC and an output of one hash length."""
    digest = _HASHES[algorithm]()
    kdf = PBKDF2HMAC(algorithm=digest, length=digest.digest_size, salt=salt,
                     iterations=iterations)
    return kdf.derive(_prepared_password(password))


def keys_from_salted(salted: bytes, algorithm: str) -> tuple[bytes, bytes, bytes]:
    """
    @return: C{(ClientKey, StoredKey, ServerKey)} from a SaltedPassword.
    """
    name = ALGORITHMS[algorithm]
    client_key = hmac.digest(salted, b"Client Key", name)
    stored_key = hashlib.new(name, client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", name)
    return client_key, stored_key, server_key


def derive_scram_keys(
    account: str,
    password: bytes | str,
    algorithm: str,
    iterations: int = DEFAULT_ITERATIONS,
    salt: bytes | None = None,
) -> ScramKeys:
    """Make a new SCRAM verifier for C{password} (a fresh random salt)."""
    if salt is None:
        salt = os.urandom(16)
    salted = salted_password(password, salt, iterations, algorithm)
    _, stored, server = keys_from_salted(salted, algorithm)
    return ScramKeys(account, algorithm, salt, iterations, stored, server)


def password_matches(keys: ScramKeys, password: bytes | str) -> bool:
    """
    Check a plain-text password against a stored SCRAM verifier in constant
    time.  CPU-heavy: run it off the reactor thread.
    """
    salted = salted_password(password, keys.salt, keys.iterations, keys.algorithm)
    _, stored, _ = keys_from_salted(salted, keys.algorithm)
    return hmac.compare_digest(stored, keys.stored_key)


def secret_matches(stored: bytes, given: bytes) -> bool:
    """Constant-time comparison of a legacy secret with a given password."""
    return hmac.compare_digest(stored, given)


_FINGERPRINT_KEY = os.urandom(32)


def password_fingerprint(account: str | None, password: bytes) -> bytes:
    """
    A keyed digest of a tried password, so the throttle can tell a client
    retrying one stale password from one guessing many, without keeping the
    password.  The key lives only in this process.
    """
    who = (account or "").encode("utf-8", "replace")
    return hmac.digest(_FINGERPRINT_KEY, who + b"\0" + password, "sha256")[:16]
