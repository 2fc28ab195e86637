# -*- test-case-name: tests.test_usercli -*-
"""
The admin commands C{mailgateway user ...} and C{mailgateway auth unban}.

Each command is a function taking the users-file path (or the state
directory) and a L{Terminal} for its I/O; L{add_subparsers} wires them into
the C{mailgateway} argparse tree with handlers of the form
C{func(args, out, err) -> exit status}.  Passwords and pass phrases come from
a prompt (twice, must match) or, with C{--password-stdin}, from the first line
of standard input; never from the command line.  Every error is one line on
stderr and exit status 1.

Writes go through L{UsersFile.update}: under the file's lock, re-read, change,
atomic replace (mode 0600), so a running gateway never loses them; it picks
them up by itself (it watches the file).
"""

from __future__ import annotations

import argparse
import getpass as _getpass
import os
import secrets
import string
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from gateway.auth import otp as _otp
from gateway.auth.directory import legacy_matches
from gateway.auth.throttle import BANS_FILENAME, unban_in_file
from gateway.auth.usersfile import (
    LEGACY_MECHANISMS,
    Account,
    Legacy,
    UsersFile,
    UsersFileError,
    address_problem,
    canonical,
)
from gateway.auth.verifiers import (
    ALGORITHMS,
    DEFAULT_ITERATIONS,
    OTPState,
    derive_scram_keys,
    password_matches,
)


class CommandError(Exception):
    """A one-line message for the operator."""


@dataclass
class Terminal:
    """The commands' I/O: injectable for tests."""

    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    getpass: Callable[[str], str] = _getpass.getpass


def read_secret(term: Terminal, from_stdin: bool, what: str = "password") -> str:
    """
    First line of stdin (without its LF or CR LF), or a prompt answered twice
    alike.

    @raise CommandError: empty, not UTF-8, or with a control character (no
        client could send it: NUL ends a SASL PLAIN field, and SASLprep,
        RFC 4013 section 2.3, prohibits them all).  The message never
        quotes the secret.
    """
    if from_stdin:
        try:
            line = term.stdin.readline()
        except UnicodeDecodeError:  # a strict UTF-8 stdin
            raise CommandError(f"the {what} is not valid UTF-8") from None
        secret = line[:-1] if line.endswith("\n") else line
        secret = secret[:-1] if secret.endswith("\r") else secret
    else:
        try:
            secret = term.getpass(f"New {what}: ")
            if term.getpass(f"Repeat the {what}: ") != secret:
                raise CommandError(f"the two {what}s differ")
        except EOFError:
            raise CommandError(f"no {what} given") from None
    if not secret:
        raise CommandError(f"empty {what}")
    if any("\ud800" <= c <= "\udfff" for c in secret):  # surrogateescape'd bytes
        raise CommandError(f"the {what} is not valid UTF-8")
    if any(ord(c) < 32 or ord(c) == 127 for c in secret):
        raise CommandError(f"the {what} contains a control character")
    return secret


def account_name(name: str, default_domain: str | None = None) -> str:
    name = canonical(name)
    if "@" not in name and default_domain:
        name = f"{name}@{canonical(default_domain)}"
    problem = address_problem(name)
    if problem:
        raise CommandError(f"{name!r} {problem}")
    return name


def _scram(name: str, password: str, iterations: int) -> tuple[Any, ...]:
    return tuple(derive_scram_keys(name, password, alg, iterations) for alg in sorted(ALGORITHMS))


def _existing(accounts: dict[str, Account], name: str) -> Account:
    if name not in accounts:
        raise CommandError(f"no account {name}")
    return accounts[name]


def user_add(users_path: str, account: str, term: Terminal, *, addresses: Iterable[str] = (),
             legacy: Iterable[str] = (), disabled: bool = False, password_stdin: bool = False,
             default_domain: str | None = None, iterations: int = DEFAULT_ITERATIONS) -> None:
    name = account_name(account, default_domain)
    aliases = tuple(dict.fromkeys(account_name(a, default_domain) for a in addresses))
    mechanisms = tuple(sorted(set(legacy)))
    unknown = set(mechanisms) - set(LEGACY_MECHANISMS)
    if unknown:
        raise CommandError(f"unknown legacy mechanism {', '.join(sorted(unknown))} "
                           f"(known: {', '.join(LEGACY_MECHANISMS)})")
    password = read_secret(term, password_stdin)

    def add(accounts: dict[str, Account]) -> None:
        if name in accounts:
            raise CommandError(f"account {name} already exists")
        accounts[name] = Account(name, not disabled, aliases, _scram(name, password, iterations),
                                 Legacy(mechanisms, password) if mechanisms else None)

    UsersFile(users_path).update(add, create=True)
    print(f"added {name}" + (" (disabled)" if disabled else ""), file=term.stdout)
    if mechanisms:
        print(f"note: {name} holds a password-equivalent secret for {', '.join(mechanisms)}",
              file=term.stdout)


def user_passwd(users_path: str, account: str, term: Terminal, *, password_stdin: bool = False,
                default_domain: str | None = None, iterations: int = DEFAULT_ITERATIONS) -> None:
    name = account_name(account, default_domain)
    users = UsersFile(users_path)
    _existing(dict(users.load().accounts), name)  # fail before prompting
    password = read_secret(term, password_stdin)

    def change(accounts: dict[str, Account]) -> None:
        old = _existing(accounts, name)
        # The OTP state is kept (a separate credential), and its pass phrase
        # must stay different from the password, as otp-init requires.
        if old.otp is not None and _is_otp_passphrase(old.otp, password):
            raise CommandError("the password must differ from the account's OTP pass phrase")
        # A secret with no legacy mechanism (an import) is not renewed: dropped.
        legacy = old.legacy and old.legacy.mechanisms and Legacy(old.legacy.mechanisms, password)
        accounts[name] = replace(old, scram=_scram(name, password, iterations),
                                 legacy=legacy or None)

    users.update(change)
    print(f"changed the password of {name}", file=term.stdout)


def _is_otp_passphrase(state: OTPState, secret: str) -> bool:
    """Is C{secret} the pass phrase of C{state}?  The stored key is always
    the OTP for C{state.sequence} (the one set or the last accepted)."""
    if len(secret) < _otp.MIN_PASSPHRASE:
        return False
    try:
        return _otp.otp(state.algorithm, secret, state.seed, state.sequence) == state.key
    except ValueError:
        return False


def user_enable(users_path: str, account: str, term: Terminal, *, enabled: bool = True,
                default_domain: str | None = None) -> None:
    """Enable (or disable) an account: a disabled one cannot log in; it keeps
    its keys, OTP state and addresses."""
    name = account_name(account, default_domain)
    word = "enabled" if enabled else "disabled"

    def change(accounts: dict[str, Account]) -> bool:
        old = _existing(accounts, name)
        accounts[name] = replace(old, enabled=enabled)
        return old.enabled != enabled

    changed = UsersFile(users_path).update(change)[0]
    print(f"{word} {name}" if changed else f"{name} is already {word}", file=term.stdout)


def user_del(users_path: str, account: str, term: Terminal, *,
             default_domain: str | None = None) -> None:
    name = account_name(account, default_domain)

    def delete(accounts: dict[str, Account]) -> None:
        _existing(accounts, name)
        del accounts[name]
        for other, a in list(accounts.items()):
            if name in a.may_act_for:
                accounts[other] = replace(
                    a, may_act_for=tuple(n for n in a.may_act_for if n != name))

    UsersFile(users_path).update(delete)
    print(f"deleted {name}", file=term.stdout)


def _legacy_text(a: Account) -> str:
    if a.legacy is None:
        return "-"
    return f"HELD ({', '.join(a.legacy.mechanisms) or 'imported'})"


def user_list(users_path: str, term: Terminal) -> None:
    """A table; the LEGACY SECRET column flags password-equivalent secrets."""
    accounts = list(UsersFile(users_path).load().accounts.values())
    rows = [("ACCOUNT", "ENABLED", "SCRAM", "LEGACY SECRET", "OTP", "ADDRESSES")]
    rows += [(a.name, "yes" if a.enabled else "no",
              ",".join(k.algorithm for k in a.scram) or "-", _legacy_text(a),
              "yes" if a.otp else "no", ",".join(a.addresses) or "-") for a in accounts]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1], file=term.stdout)
    held = sum(a.legacy is not None for a in accounts)
    print(f"{held} of {len(accounts)} accounts hold a password-equivalent legacy secret",
          file=term.stdout)


def user_show(users_path: str, account: str, term: Terminal, *,
              default_domain: str | None = None) -> None:
    """Everything about an account except keys and secrets."""
    name = account_name(account, default_domain)
    a = _existing(dict(UsersFile(users_path).load().accounts), name)
    lines = [("account", a.name), ("enabled", "yes" if a.enabled else "no"),
             ("addresses", ", ".join(a.addresses) or "-")]
    lines += [(f"scram {k.algorithm}", f"{k.iterations} iterations") for k in a.scram]
    lines.append(("legacy secret", _legacy_text(a)))
    if a.otp is not None:
        lines.append(("otp", f"otp-{a.otp.algorithm}, seed {a.otp.seed}, "
                      f"next challenge for sequence {a.otp.sequence - 1}"))
    lines += [("may act for", ", ".join(a.may_act_for) or "-"),
              ("certificate names", ", ".join(a.certificate_names) or "-")]
    for key, value in lines:
        print(f"{key + ':':<19}{value}", file=term.stdout)


def user_otp_init(users_path: str, account: str, term: Terminal, *, algorithm: str = "md5",
                  seed: str | None = None, count: int = 500, password_stdin: bool = False,
                  default_domain: str | None = None) -> None:
    """
    Set the RFC 2289 state: the OTP for C{count} from a pass phrase; the
    first challenge then asks for C{count - 1}.
    """
    name = account_name(account, default_domain)
    if algorithm not in _otp.ALGORITHMS:
        raise CommandError(f"algorithm must be one of {', '.join(_otp.ALGORITHMS)}")
    if not 1 <= count <= _otp.MAX_SEQUENCE:
        raise CommandError(f"count must be 1 to {_otp.MAX_SEQUENCE}")
    if seed is None:
        seed = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    try:
        seed = _otp.validate_seed(seed)
    except ValueError as e:
        raise CommandError(str(e)) from None
    users = UsersFile(users_path)
    old = _existing(dict(users.load().accounts), name)
    phrase = read_secret(term, password_stdin, "pass phrase")
    if len(phrase) < _otp.MIN_PASSPHRASE:
        raise CommandError(f"a pass phrase has at least {_otp.MIN_PASSPHRASE} characters "
                           "(RFC 2289)")
    keys = old.scram_keys("SHA-256")
    if (keys and password_matches(keys, phrase)) or (
            old.legacy and legacy_matches(old.legacy.secret, phrase.encode("utf-8"))):
        raise CommandError("the pass phrase must differ from the account's password")
    state = OTPState(name, algorithm, seed, count, _otp.otp(algorithm, phrase, seed, count))
    users.update(lambda accounts: accounts.update(
        {name: replace(_existing(accounts, name), otp=state)}))
    print(f"OTP set for {name}; first challenge: otp-{algorithm} {count - 1} {seed}",
          file=term.stdout)


def auth_unban(state_dir: str, target: str, term: Terminal) -> None:
    """Lift a ban from the ban file; the gateway re-reads it within seconds."""
    path = os.path.join(state_dir, BANS_FILENAME)
    if not os.path.exists(path):
        raise CommandError(f"no bans recorded ({path} does not exist)")
    lifted = unban_in_file(path, target.strip())
    if not lifted:
        raise CommandError(f"no ban matches {target}")
    print(f"lifted {lifted} ban(s) for {target}", file=term.stdout)


# -- argparse --------------------------------------------------------------

Resolver = Callable[[argparse.Namespace], tuple[str | None, str | None, str | None]]


def resolve_from_config(args: argparse.Namespace) -> tuple[str | None, str | None, str | None]:
    """C{(users file, state dir, default domain)} from C{--users}/C{--state-dir}
    or else from the configuration file (C{--config})."""
    users, state = getattr(args, "users", None), getattr(args, "state_dir", None)
    domain = None
    if (users is None or state is None) and args.config:
        from gateway.config import load
        from gateway.errors import ConfigError

        try:
            config = load(args.config)
        except ConfigError as e:
            problems = "; ".join(m if p == args.config else p + ": " + m
                                 for p, m in e.problems)
            raise CommandError(f"{args.config}: {problems}") from None
        users = users or (str(config.auth.users) if config.auth.users else None)
        state = state or str(config.server.state_dir)
        domain = config.auth.default_domain
    return users, state, domain


def add_subparsers(subparsers: Any, resolve: Resolver = resolve_from_config) -> None:
    """Add C{user} and C{auth} to the C{mailgateway} command's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=os.environ.get("MAILGATEWAY_CONFIG"),
                        help="the gateway's TOML configuration (for the users file path)")
    common.add_argument("--users", help="the users file (overrides the configuration)")
    pw = argparse.ArgumentParser(add_help=False)
    pw.add_argument("--password-stdin", action="store_true",
                    help="read the password from the first line of standard input")

    def handler(command: str) -> Callable[..., int]:
        return lambda args, out, err, **io: run(command, args, out, err, resolve, **io)

    user = subparsers.add_parser("user", help="manage the accounts of the users file")
    us = user.add_subparsers(dest="user_command", metavar="ACTION")
    us.required = True
    p = us.add_parser("add", parents=[common, pw], help="add an account")
    p.add_argument("account")
    p.add_argument("--address", action="append", default=[], help="an alias (repeatable)")
    p.add_argument("--legacy", default="", help="CRAM-MD5,DIGEST-MD5,APOP: stores a "
                   "password-equivalent secret")
    p.add_argument("--disabled", action="store_true")
    p.set_defaults(func=handler("add"))
    p = us.add_parser("passwd", parents=[common, pw], help="set an account's password")
    p.add_argument("account")
    p.set_defaults(func=handler("passwd"))
    for action, text in (("del", "delete an account"), ("show", "describe an account"),
                         ("enable", "let a disabled account log in again"),
                         ("disable", "refuse an account's logins (its keys are kept)")):
        p = us.add_parser(action, parents=[common], help=text)
        p.add_argument("account")
        p.set_defaults(func=handler(action))
    p = us.add_parser("list", parents=[common], help="list the accounts")
    p.set_defaults(func=handler("list"))
    p = us.add_parser("otp-init", parents=[common, pw], help="set an RFC 2289 OTP sequence")
    p.add_argument("account")
    p.add_argument("--algorithm", choices=_otp.ALGORITHMS, default="md5")
    p.add_argument("--seed")
    p.add_argument("--count", type=int, default=500)
    p.set_defaults(func=handler("otp-init"))

    auth = subparsers.add_parser("auth", help="authentication throttling")
    au = auth.add_subparsers(dest="auth_command", metavar="ACTION")
    au.required = True
    p = au.add_parser("unban", parents=[common], help="lift a ban on an ADDRESS or ACCOUNT")
    p.add_argument("target", metavar="ADDRESS|ACCOUNT")
    p.add_argument("--state-dir", help="the state directory (overrides the configuration)")
    p.set_defaults(func=handler("unban"))


def run(command: str, args: argparse.Namespace, out: TextIO, err: TextIO,
        resolve: Resolver = resolve_from_config, *, stdin: TextIO | None = None,
        getpass: Callable[[str], str] | None = None) -> int:
    """Run one command; print one line and return 1 on any error."""
    term = Terminal(stdin or sys.stdin, out, getpass or _getpass.getpass)
    try:
        users, state, domain = resolve(args)
        if command == "unban":
            if not state:
                raise CommandError("no state directory: give --state-dir or --config")
            auth_unban(state, args.target, term)
            return 0
        if not users:
            raise CommandError("no users file: give --users or --config")
        kw: dict[str, Any] = {"default_domain": domain}
        if command == "list":
            user_list(users, term)
        elif command == "add":
            user_add(users, args.account, term, addresses=args.address,
                     legacy=[m.strip().upper() for m in args.legacy.split(",") if m.strip()],
                     disabled=args.disabled, password_stdin=args.password_stdin, **kw)
        elif command == "passwd":
            user_passwd(users, args.account, term, password_stdin=args.password_stdin, **kw)
        elif command == "otp-init":
            user_otp_init(users, args.account, term, algorithm=args.algorithm, seed=args.seed,
                          count=args.count, password_stdin=args.password_stdin, **kw)
        elif command in ("enable", "disable"):
            user_enable(users, args.account, term, enabled=command == "enable", **kw)
        else:
            {"del": user_del, "show": user_show}[command](users, args.account, term, **kw)
    except CommandError as e:
        print(f"mailgateway: {e}", file=err)
        return 1
    except UsersFileError as e:
        print(f"mailgateway: {e.one_line()}", file=err)
        return 1
    except OSError as e:
        # "PATH: reason", without "[Errno 2]" (the lock file's path is the
        # users file's: it is created next to it).
        where = os.fspath(e.filename).removesuffix(".lock") if e.filename else None
        print(f"mailgateway: {where + ': ' if where else ''}{e.strerror or e}", file=err)
        return 1
    except ValueError as e:
        print(f"mailgateway: {e}", file=err)
        return 1
    return 0


def main(argv: Sequence[str], out: TextIO, err: TextIO, **io: Any) -> int:
    """Parse C{argv} (C{user ...} or C{auth ...}) and run it: for tests and scripts."""
    parser = argparse.ArgumentParser(prog="mailgateway")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subparsers(sub)
    args = parser.parse_args(argv)
    return int(args.func(args, out, err, **io))
