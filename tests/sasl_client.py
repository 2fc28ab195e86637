"""
Client halves of the SASL mechanisms, for tests that play the client in a
conversation with the server.  Written from the RFCs, independently of the
server code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def plain(user: str, password: str, authzid: str = "") -> bytes:
    return b64(f"{authzid}\0{user}\0{password}".encode())


def cram_md5(user: str, password: str, challenge_b64: bytes) -> bytes:
    challenge = base64.b64decode(challenge_b64)
    digest = hmac.new(password.encode(), challenge, "md5").hexdigest()
    return b64(f"{user} {digest}".encode())


class ScramClient:
    """RFC 5802 client, no channel binding."""

    def __init__(self, user: str, password: str, algorithm: str = "sha256") -> None:
        self.user = user
        self.password = password
        self.algorithm = algorithm
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.bare = f"n={user},r={self.nonce}"

    def first(self) -> bytes:
        return b64(("n,," + self.bare).encode())

    def final(self, server_first_b64: bytes) -> bytes:
        server_first = base64.b64decode(server_first_b64).decode()
        attrs = dict(item.split("=", 1) for item in server_first.split(","))
        salt = base64.b64decode(attrs["s"])
        salted = hashlib.pbkdf2_hmac(self.algorithm, self.password.encode(), salt, int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", self.algorithm).digest()
        stored = hashlib.new(self.algorithm, client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{self.bare},{server_first},{without_proof}".encode()
        signature = hmac.new(stored, auth_message, self.algorithm).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.new(salted, b"Server Key", self.algorithm).digest()
        self.expected_server_signature = hmac.new(server_key, auth_message, self.algorithm).digest()
        return b64(f"{without_proof},p={base64.b64encode(proof).decode()}".encode())

    def verify(self, server_final_b64: bytes) -> bool:
        text = base64.b64decode(server_final_b64).decode()
        return text == "v=" + base64.b64encode(self.expected_server_signature).decode()
