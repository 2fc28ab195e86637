# -*- test-case-name: tests.test_smtp_review,tests.test_smtp_transaction -*-
"""
RFC 5321 section 4.1.2 paths and ESMTP parameters, for MAIL FROM and RCPT TO.

C{MAIL FROM:<path> params}: the path is C{<>} (the null path, MAIL only) or
C{<[source-route:]local@domain>}; the source route is accepted and ignored
(RFC 5321 section 4.1.1.3 / appendix C).  With SMTPUTF8 (RFC 6531) the
local part and domain may hold UTF-8.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ATOM_UTF8 = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])+"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_QUOTED_UTF8 = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|[^\x00-\x7f]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ALNUM_UTF8 = r"(?:[A-Za-z0-9]|[^\x00-\x7f])"
_LABEL_UTF8 = rf"{_ALNUM_UTF8}(?:(?:[A-Za-z0-9-]|[^\x00-\x7f]){{0,61}}{_ALNUM_UTF8})?"
_LITERAL = r"\[(?:[0-9.]{7,15}|IPv6:[0-9A-Fa-f:.]{2,45})\]"


def _mailbox(utf8: bool) -> re.Pattern[str]:
    atom, quoted, label = (_ATOM_UTF8, _QUOTED_UTF8, _LABEL_UTF8) if utf8 else (_ATOM, _QUOTED, _LABEL)
    local = rf"(?:{atom}(?:\.{atom})*|{quoted})"
    domain = rf"(?:{label}(?:\.{label})*|{_LITERAL})"
    # RFC 5321 section 4.1.2: A-d-l = At-domain *( "," At-domain ), each a
    # domain like the mailbox's; accepted and ignored (appendix C), but not
    # a hiding place for control characters or undeclared UTF-8.
    route = rf"(?:@{domain}(?:,@{domain})*:)?"
    return re.compile(rf"^<{route}({local}@({domain}))>$")


_MAILBOX = {False: _mailbox(False), True: _mailbox(True)}
_POSTMASTER = re.compile(r"^<(postmaster)>$", re.I)
_PARAM = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]+))?$")

#: RFC 5321 section 4.5.3.1: local part 64 octets, domain 255, path 256.
MAX_PATH = 256
MAX_LOCAL = 64


class AddressError(ValueError):
    """The path or a parameter is malformed; C{code}/C{enhanced} say how."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(text)
        self.code, self.enhanced, self.text = code, enhanced, text


def split_command(argument: str, keyword: str) -> tuple[str, list[str]]:
    """
    Split C{"FROM:<a@b> SIZE=10"} into the path and its parameters.

    @raise AddressError: 501 when the keyword or brackets are missing.
    """
    head, _, rest = argument.partition(":")
    if head.strip().upper() != keyword:
        raise AddressError(501, "5.5.4", f"syntax: {keyword}:<address>")
    rest = rest.lstrip(" ")  # some clients send "FROM: <a@b>"
    if not rest.startswith("<"):
        raise AddressError(501, "5.5.4", "address must be in angle brackets")
    end = rest.find(">")
    if end < 0:
        raise AddressError(501, "5.5.4", "unterminated address")
    # '>' may appear inside a quoted local part; find the closing one.  In
    # a quoted string a backslash escapes the next character, a backslash
    # too (RFC 5321 section 4.1.2, quoted-pairSMTP).
    quoted = escaped = False
    for i, ch in enumerate(rest):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            end = i
            break
    path, params = rest[: end + 1], rest[end + 1:]
    return path, params.split()


def parse_path(path: str, *, utf8: bool = False, null_ok: bool = False,
               postmaster_ok: bool = False) -> str:
    """
    @return: the mailbox (C{local@domain}), C{""} for the null path, or
        C{"postmaster"} for the bare postmaster recipient.
    @raise AddressError: 501 5.1.3 (or 5.1.7 for a sender) when malformed.
    """
    if path == "<>":
        if null_ok:
            return ""
        raise AddressError(501, "5.1.3", "the null address is not a recipient")
    if postmaster_ok:
        m = _POSTMASTER.match(path)
        if m:
            return "postmaster"
    if len(path.encode("utf-8")) > MAX_PATH + 2:
        raise AddressError(501, "5.1.3", "address too long")
    m = _MAILBOX[utf8].match(path)
    if m is None:
        if not utf8 and not path.isascii():
            raise AddressError(553, "5.6.7", "non-ASCII address needs SMTPUTF8")
        raise AddressError(501, "5.1.7" if null_ok else "5.1.3", "bad address syntax")
    mailbox, domain = m.group(1), m.group(2)
    if domain.startswith("[") and not _valid_literal(domain[1:-1]):
        raise AddressError(501, "5.1.7" if null_ok else "5.1.3", "bad address literal")
    local = mailbox[: -len(domain) - 1]
    if len(local.encode("utf-8")) > MAX_LOCAL:
        raise AddressError(501, "5.1.3", "local part too long")
    return mailbox


def _valid_literal(text: str) -> bool:
    """RFC 5321 section 4.1.3: an IPv4 address, or C{IPv6:} and an IPv6 one."""
    try:
        if text[:5].upper() == "IPV6:":
            ipaddress.IPv6Address(text[5:])
        else:
            ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def ace(domain: str) -> str:
    """
    The comparable form of a domain: lower case, without a trailing dot,
    each U-label as its A-label (RFC 5890; RFC 6531 section 3.2 lets
    either arrive).  The conversion is Punycode of the NFC label, without
    IDNA 2003's mappings (which would make C{straße} C{strasse}): a label
    that is not a valid U-label yields an A-label no valid domain has, so
    it matches nothing.
    """
    domain = unicodedata.normalize("NFC", domain).lower().rstrip(".")
    if domain.isascii():
        return domain
    return ".".join(label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")
                    for label in domain.split("."))


def canonical_recipient(address: str, local_domains: tuple[str, ...]) -> str:
    """
    The recipient as the policy, the directory and the delivery see it:
    the bare C{postmaster} (RFC 5321 section 4.1.1.3) becomes
    C{postmaster@} the first local domain, and a domain that is one of
    C{local_domains} in another spelling (case, U-label or A-label, a
    trailing dot) is spelt as configured.  Any other address is unchanged:
    it is not ours to rewrite.
    """
    if "@" not in address:
        return f"{address}@{local_domains[0]}" if local_domains and address else address
    local, _, domain = address.rpartition("@")
    if domain.startswith("["):
        return address
    wanted = ace(domain)
    for configured in local_domains:
        if ace(configured) == wanted:
            return f"{local}@{configured}"
    return address


def parse_params(params: list[str]) -> dict[str, str | None]:
    """
    ESMTP parameters, keys upper-cased.

    @raise AddressError: 501 for malformed or repeated parameters.
    """
    out: dict[str, str | None] = {}
    for item in params:
        m = _PARAM.match(item)
        if m is None:
            raise AddressError(501, "5.5.4", "malformed parameter")
        key = m.group(1).upper()
        if key in out:
            raise AddressError(501, "5.5.4", f"parameter {key} given twice")
        out[key] = m.group(2)
    return out
