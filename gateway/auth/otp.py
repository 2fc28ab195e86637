# -*- test-case-name: tests.test_otp -*-
"""
One-time passwords, RFC 2289, and the extended responses of RFC 2243: pure
functions, no I/O.

An OTP is 64 bits: the seed and the secret pass phrase hashed and folded to 64
bits, then hashed and folded C{count} more times (RFC 2289 section 6).  The
server keeps the last OTP it accepted, for sequence C{n}; the client proves
itself with the OTP for C{n - 1}, which the server checks by applying L{step}
once.  An OTP is written as 16 hex digits or as six words from the standard
dictionary with a 2-bit checksum (RFC 2289 section 5 and appendix D).

Only the standard dictionary is supported: RFC 2289 section 5 also allows
alternate dictionaries, whose words are mapped through a hash; a response in
one is refused as malformed.  MD4 is not supported (RFC 2289 makes MD5
mandatory; MD4 is broken and absent from many OpenSSL builds).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from dataclasses import dataclass

from gateway.auth.otpwords import INDEX, WORDS

#: The hash algorithms this module supports, as named in challenges.
ALGORITHMS = ("md5", "sha1")

#: RFC 2289 section 6.0: generators must take pass phrases of 10 to 63
#: characters and refuse shorter ones; longer ones are allowed.
MIN_PASSPHRASE = 10

#: The largest sequence number a re-initialisation may set (the common
#: implementations' limit; RFC 2289 gives none).
MAX_SEQUENCE = 9999

_SEED = re.compile(r"[A-Za-z0-9]{1,16}")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def validate_seed(seed: str) -> str:
    """
    Check a seed (RFC 2289 section 6.0: 1 to 16 alphanumerics, no blanks,
    case-insensitive).

    @return: the seed in lower case, the form that is hashed and stored.
    @raise ValueError: if it is not 1 to 16 ASCII letters and digits.
    """
    if not isinstance(seed, str) or not _SEED.fullmatch(seed):
        raise ValueError("a seed is 1 to 16 ASCII letters and digits")
    return seed.lower()


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unsupported OTP algorithm {algorithm!r}")


def _fold(algorithm: str, digest: bytes) -> bytes:
    """
    Fold a digest to 64 bits (RFC 2289 section 6.0 and appendix A).

    MD5: the two 64-bit halves are XORed.  SHA-1: the five 32-bit words are
    folded as C{w0 ^ w2 ^ w4, w1 ^ w3}, and each word is then written least
    significant byte first, as the appendix A code does on a little-endian
    host (RFC 2289 errata; the appendix C vectors need this order).
    """
    if algorithm == "md5":
        return bytes(a ^ b for a, b in zip(digest[:8], digest[8:16]))
    w0, w1, w2, w3, w4 = struct.unpack(">5I", digest)
    return struct.pack("<2I", w0 ^ w2 ^ w4, w1 ^ w3)


def _hash(algorithm: str, data: bytes) -> bytes:
    return _fold(algorithm, hashlib.new(algorithm, data).digest())


def step(algorithm: str, key: bytes) -> bytes:
    """
    Apply the hash once more: C{step(a, otp(a, p, s, n)) == otp(a, p, s, n + 1)}.

    @raise ValueError: for an unknown algorithm or a key that is not 8 bytes.
    """
    _check_algorithm(algorithm)
    if len(key) != 8:
        raise ValueError("an OTP is 8 bytes")
    return _hash(algorithm, key)


def precedes(algorithm: str, key: bytes, stored: bytes) -> bool:
    """Is C{key} the OTP just before C{stored} in its chain (does one
    L{step} of it give C{stored})?  Constant time; C{False} for a key
    that is no 64-bit OTP or an unknown algorithm."""
    try:
        return hmac.compare_digest(step(algorithm, key), stored)
    except ValueError:
        return False


def otp(algorithm: str, passphrase: str | bytes, seed: str, count: int) -> bytes:
    """
    The one-time password for C{count}: the generator's computation.

    @param passphrase: the secret pass phrase; a C{str} is encoded as UTF-8.
    @param seed: the seed, in any case (it is hashed in lower case).
    @param count: how many times the hash is applied after the first; C{0}
        is the first OTP of the appendix C vectors.
    @return: 8 bytes.
    @raise ValueError: for an unknown algorithm, a bad seed, a pass phrase
        shorter than L{MIN_PASSPHRASE} characters, or a negative count.
    """
    _check_algorithm(algorithm)
    seed = validate_seed(seed)
    if len(passphrase) < MIN_PASSPHRASE:
        raise ValueError(f"a pass phrase has at least {MIN_PASSPHRASE} characters")
    if count < 0:
        raise ValueError("the count cannot be negative")
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    key = _hash(algorithm, seed.encode("ascii") + passphrase)
    for _ in range(count):
        key = _hash(algorithm, key)
    return key


def _checksum(value: int) -> int:
    # RFC 2289 appendix B: the sum of the 32 bit pairs of the key, mod 4.
    total = 0
    while value:
        total += value & 3
        value >>= 2
    return total & 3


def to_words(key: bytes) -> str:
    """
    The six-word form of an OTP, upper case, single spaces (RFC 2289 section
    5 and appendix B): the 64 bits and a 2-bit checksum, 11 bits a word.

    @raise ValueError: if C{key} is not 8 bytes.
    """
    if len(key) != 8:
        raise ValueError("an OTP is 8 bytes")
    value = int.from_bytes(key, "big")
    bits = (value << 2) | _checksum(value)
    return " ".join(WORDS[(bits >> (11 * (5 - i))) & 0x7FF] for i in range(6))


def from_words(text: str) -> bytes:
    """
    Parse the six-word form, in any case, words separated by whitespace.

    @raise ValueError: if there are not six words, one is not in the standard
        dictionary, or the checksum does not match.
    """
    words = text.split()
    if len(words) != 6:
        raise ValueError("an OTP is six words")
    bits = 0
    for word in words:
        index = INDEX.get(word.upper()) if word.isascii() else None
        if index is None:
            raise ValueError("a word is not in the standard dictionary")
        bits = (bits << 11) | index
    value = bits >> 2
    if _checksum(value) != bits & 3:
        raise ValueError("the six words' checksum does not match")
    return value.to_bytes(8, "big")


def to_hex(key: bytes) -> str:
    """The hex form, lower case, no spaces."""
    if len(key) != 8:
        raise ValueError("an OTP is 8 bytes")
    return key.hex()


def parse_hex(text: str) -> bytes:
    """
    Parse the hex form: 16 hex digits in any case; whitespace may appear
    anywhere (RFC 2289 section 6.0: C{9E87 6134 D904 99DD}).

    @raise ValueError: for any other character or another number of digits.
    """
    digits = "".join(text.split())
    if len(digits) != 16 or not set(digits) <= _HEX_DIGITS:
        raise ValueError("an OTP in hex is 16 hex digits")
    return bytes.fromhex(digits)


def challenge(algorithm: str, sequence: int, seed: str) -> str:
    """
    An extended challenge (RFC 2243 section 2.1): C{otp-md5 498 ke1234 ext}.

    @param sequence: the count the client must answer for.
    """
    _check_algorithm(algorithm)
    return f"otp-{algorithm} {sequence} {validate_seed(seed)} ext"


@dataclass(frozen=True)
class NewParameters:
    """
    The new state an C{init-hex}/C{init-word} response asks for (RFC 2243
    section 3): the client's OTP for C{sequence} under the new seed.
    """

    algorithm: str
    sequence: int
    seed: str
    key: bytes


@dataclass(frozen=True)
class Response:
    """
    A parsed response to an OTP challenge.

    @ivar candidates: the possible 8-byte OTPs it carries for the current
        challenge: one, or two for a bare response that reads both as hex and
        as six words (RFC 2289 section 6.0 leaves the format implicit).
    @ivar init: the requested re-initialisation, or C{None}.
    """

    candidates: tuple[bytes, ...]
    init: NewParameters | None = None


def _either(text: str) -> tuple[bytes, ...]:
    found: list[bytes] = []
    for parse in (parse_hex, from_words):
        try:
            key = parse(text)
        except ValueError:
            continue
        if key not in found:
            found.append(key)
    if not found:
        raise ValueError("neither 16 hex digits nor six dictionary words")
    return tuple(found)


def _new_parameters(text: str) -> tuple[str, int, str]:
    # RFC 2243 section 3: "<algorithm> SP <sequence> SP <seed>".
    fields = text.split()
    if len(fields) != 3:
        raise ValueError("new parameters are: algorithm sequence seed")
    algorithm, sequence, seed = fields
    algorithm = algorithm.lower()
    _check_algorithm(algorithm)
    if not sequence.isascii() or not sequence.isdigit() or len(sequence) > 4:
        raise ValueError("bad new sequence number")
    number = int(sequence)
    if not 1 <= number <= MAX_SEQUENCE:
        raise ValueError("the new sequence number is out of range")
    return algorithm, number, validate_seed(seed)


def parse_response(text: str) -> Response:
    """
    Parse a response: a bare OTP (hex or six words), or an RFC 2243 extended
    response C{hex:}, C{word:}, C{init-hex:} or C{init-word:} (type names in
    any case).  A re-initialisation is C{init-hex:<current OTP>:<algorithm>
    <sequence> <seed>:<new OTP>}.

    @raise ValueError: for anything else, including unknown extended types.
    """
    text = text.strip()
    if not text.isascii() or any(ch < " " and ch != "\t" or ch == "\x7f" for ch in text):
        raise ValueError("not printable ASCII")
    if ":" not in text:
        return Response(_either(text))
    kind, _, rest = text.partition(":")
    kind = kind.lower()
    if kind in ("hex", "word"):
        parse = parse_hex if kind == "hex" else from_words
        if ":" in rest:
            raise ValueError(f"{kind}: takes one argument")
        return Response((parse(rest),))
    if kind in ("init-hex", "init-word"):
        parse = parse_hex if kind == "init-hex" else from_words
        fields = rest.split(":")
        if len(fields) != 3:
            raise ValueError(f"{kind}: takes three arguments")
        current, params, new = fields
        algorithm, sequence, seed = _new_parameters(params)
        return Response(
            (parse(current),), NewParameters(algorithm, sequence, seed, parse(new))
        )
    raise ValueError("unknown extended response type")
