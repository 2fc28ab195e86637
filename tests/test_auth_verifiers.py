# -*- test-case-name: tests.test_auth_verifiers -*-
"""
L{gateway.auth.verifiers}: the PBKDF2 behind every stored verifier is
RFC 5802's C{Hi()}, whichever library computes it.
"""

from __future__ import annotations

import base64
import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.verifiers import (
    SASLprepError,
    _prepared_password,
    derive_scram_keys,
    keys_from_salted,
    password_matches,
    salted_password,
    saslprep,
)


class SaltedPasswordTests(SynchronousTestCase):
    def test_rfc7677_example(self) -> None:
        """
        RFC 7677 section 3's exchange (user "user", password "pencil"):
        the client proof and server signature computed from our
        SaltedPassword match the RFC's.
        """
        import hmac

        salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
        salted = salted_password("pencil", salt, 4096, "SHA-256")
        client_key, stored_key, server_key = keys_from_salted(salted, "SHA-256")
        auth_message = (
            b"n=user,r=rOprNGfwEbeRWgbNEkqO,"
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
        )
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self.assertEqual(base64.b64encode(proof),
                         b"dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
        self.assertEqual(base64.b64encode(hmac.digest(server_key, auth_message, "sha256")),
                         b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")

    @settings(max_examples=30, deadline=None)
    @given(password=st.binary(max_size=40), salt=st.binary(max_size=32),
           iterations=st.integers(min_value=1, max_value=64),
           algorithm=st.sampled_from(["SHA-1", "SHA-256"]))
    def test_same_as_hashlib(self, password: bytes, salt: bytes, iterations: int,
                             algorithm: str) -> None:
        """
        Verifiers written before the change (by C{hashlib.pbkdf2_hmac})
        still match: the two compute the same function of the prepared
        (SASLprep'ed, or raw non-UTF-8) password.
        """
        name = {"SHA-1": "sha1", "SHA-256": "sha256"}[algorithm]
        expected = hashlib.pbkdf2_hmac(name, _prepared_password(password), salt, iterations)
        self.assertEqual(salted_password(password, salt, iterations, algorithm), expected)

    def test_ascii_password_same_as_hashlib(self) -> None:
        for algorithm, name in (("SHA-1", "sha1"), ("SHA-256", "sha256")):
            self.assertEqual(salted_password(b"alice-password-1", b"salt", 4096, algorithm),
                             hashlib.pbkdf2_hmac(name, b"alice-password-1", b"salt", 4096))

    def test_password_matches(self) -> None:
        keys = derive_scram_keys("alice@example.test", "correct horse", "SHA-256")
        self.assertTrue(password_matches(keys, b"correct horse"))
        self.assertFalse(password_matches(keys, b"correct horsf"))


def _saslprep_in_full(text: str) -> str:
    """L{saslprep} without its printable-ASCII shortcut: the text is made
    non-ASCII by a character SASLprep maps to nothing (U+00AD, table B.1)."""
    return saslprep(text + "\u00ad")


class SASLprepShortcutTests(SynchronousTestCase):
    @given(st.text(alphabet=st.characters(max_codepoint=0x7F)))
    def test_ascii_same_as_full_check(self, text: str) -> None:
        """
        The printable-ASCII shortcut gives what the full RFC 4013 procedure
        gives, and ASCII controls still go through the full check (and are
        refused).
        """
        try:
            expected = _saslprep_in_full(text)
        except SASLprepError:
            self.assertRaises(SASLprepError, saslprep, text)
        else:
            self.assertEqual(saslprep(text), expected)

    def test_control_refused(self) -> None:
        self.assertRaises(SASLprepError, saslprep, "alice\x07")
        self.assertRaises(SASLprepError, saslprep, "alice\x7f")
