# -*- test-case-name: tests.test_cli -*-
"""
The C{mailgateway} admin command: check, certs, user, auth.

Every command answers an error with one clear message on stderr and exit
status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from gateway.config import GatewayConfig, load
from gateway.errors import ConfigError


def summarize(config: GatewayConfig, tls_info: dict[str, str]) -> str:
    """A human summary of a valid configuration: one line per listener."""
    out = [
        f"configuration {config.path} is valid",
        f"  hostname:       {config.server.hostname}",
        f"  state_dir:      {config.server.state_dir}",
        f"  local domains:  {', '.join(config.server.local_domains) or '(none)'}",
        f"  trusted nets:   {', '.join(map(str, config.server.trusted_networks)) or '(none)'}",
        f"  users file:     {config.auth.users or '(none)'}",
        f"  plain-text auth before TLS: "
        f"{'ALLOWED' if config.auth.plaintext_without_tls else 'refused'}",
        "  listeners:",
    ]
    width = max((len(lst.name) for lst in config.listeners), default=4)
    for lst in config.listeners:
        profile = f" profile={lst.tls_profile}" if lst.tls_profile else ""
        out.append(f"    {lst.name:<{width}}  {lst.role:<11} {lst.endpoint:<28} tls={lst.tls}{profile}")
    for name, info in sorted(tls_info.items()):
        out.append(f"  tls.{name}: {info}")
    return "\n".join(out)


def cmd_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from gateway.auth.usersfile import UsersFile, UsersFileError
    from gateway.tls import TLSSetupError, build

    try:
        config = load(args.config)
        servers = build(config.tls)
        users = UsersFile(str(config.auth.users)).load() if config.auth.users else None
    except ConfigError as e:
        print(f"mailgateway: {args.config}: {e.render()}", file=err)
        return 1
    except TLSSetupError as e:
        print(f"mailgateway: {args.config}: TLS: {e}", file=err)
        return 1
    except UsersFileError as e:
        print(f"mailgateway: {args.config}: {e.render()}", file=err)
        return 1
    info = {
        name: f"certificate valid until {s.not_after:%Y-%m-%d}"
        + (", requests client certificates" if s.requests_client_certificate else "")
        for name, s in servers.items()
    }
    print(summarize(config, info), file=out)
    for name, server in sorted(servers.items()):
        for warning in server.warnings:
            print(f"  warning: tls.{name}: {warning}", file=out)
    if users is not None:
        print(f"  users file holds {len(users.accounts)} account(s)", file=out)
        return _check_routing(config, out, err)
    return 0


def _check_routing(config: GatewayConfig, out: TextIO, err: TextIO) -> int:
    """The aliases file parses, and postmaster leads somewhere in every local domain."""
    from gateway.auth.directory import FileDirectory
    from gateway.auth.usersfile import UsersFile
    from gateway.smtp.addressbook import DirectoryAddressBook
    from gateway.smtp.aliases import AliasError

    try:
        book = DirectoryAddressBook(
            FileDirectory(UsersFile(str(config.auth.users))), config.server.local_domains,
            config.server.aliases)
    except AliasError as e:
        print(f"mailgateway: {config.path}: aliases: {e}", file=err)
        return 1
    if config.server.aliases:
        print(f"  aliases:        {len(book.aliases.table)} in {config.server.aliases}", file=out)
    for domain in config.server.local_domains:
        if not book.is_local_recipient(f"postmaster@{domain}"):
            print(f"  warning: postmaster@{domain} leads nowhere: RFC 5321 requires it; "
                  "add 'postmaster: ACCOUNT' to the aliases file", file=out)
    return 0


def cmd_certs_init(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from gateway import certs

    hostnames = args.hostname or ["localhost"]
    try:
        paths = certs.init_certificates(
            Path(args.out), hostnames, key_type=args.key_type, overwrite=args.force
        )
    except certs.CertificateError as e:
        print(f"mailgateway certs: {e}", file=err)
        return 1
    print(f"CA:     {certs.describe_certificate(paths.ca_certificate)}", file=out)
    print(f"server: {certs.describe_certificate(paths.certificate)}", file=out)
    print(f"wrote files in {args.out}", file=out)
    return 0


def cmd_certs_client(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from gateway import certs

    try:
        paths = certs.issue_client_certificate(
            Path(args.ca_dir), args.user,
            Path(args.out) if args.out else None, key_type=args.key_type,
        )
    except certs.CertificateError as e:
        print(f"mailgateway certs: {e}", file=err)
        return 1
    print(f"client: {certs.describe_certificate(paths.certificate)}", file=out)
    return 0


def cmd_policy_explain(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """The relay policy's dry run: every decision, and the rule that made it."""
    from gateway.auth.directory import FileDirectory
    from gateway.auth.usersfile import UsersFile, UsersFileError
    from gateway.smtp.addressbook import DirectoryAddressBook
    from gateway.smtp.policy import PolicySettings, Session, explain

    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"mailgateway: {args.config}: {e.render()}", file=err)
        return 1
    listener = next((lst for lst in config.listeners if lst.name == args.listener), None)
    if listener is None or listener.protocol != "smtp":
        names = ", ".join(lst.name for lst in config.listeners if lst.protocol == "smtp")
        print(f"mailgateway: no SMTP listener named {args.listener!r} (have: {names})", file=err)
        return 1
    if config.auth.users is None:
        print("mailgateway: the configuration names no users file", file=err)
        return 1
    try:
        directory = FileDirectory(UsersFile(str(config.auth.users)),
                                  default_domain=config.auth.default_domain)
    except UsersFileError as e:
        print(f"mailgateway: {e.render()}", file=err)
        return 1
    from gateway.smtp.aliases import AliasError

    try:
        book = DirectoryAddressBook(directory, config.server.local_domains, config.server.aliases)
    except AliasError as e:
        print(f"mailgateway: aliases: {e}", file=err)
        return 1
    account = None
    if args.auth:
        found = directory.account(args.auth)
        if found is None:
            print(f"mailgateway: no account {args.auth!r}", file=err)
            return 1
        if not found.enabled:
            # The gateway refuses its logins: no session is authenticated as it.
            print(f"mailgateway: account {found.name} is disabled: it cannot authenticate",
                  file=err)
            return 1
        account = found.name
    try:
        client = str(ipaddress.ip_address(args.client))
    except ValueError:
        print(f"mailgateway: --client {args.client!r} is not an IP address", file=err)
        return 1
    # The addresses as the server has them after parsing MAIL FROM and
    # RCPT TO (SMTPUTF8 assumed): a malformed one never reaches the policy.
    try:
        sender = _envelope_address("--from", args.sender, null_ok=True)
        recipients = [_envelope_address("--to", rcpt, postmaster_ok=True) for rcpt in args.to]
    except ValueError as e:
        print(f"mailgateway: {e}", file=err)
        return 1
    settings = PolicySettings.from_config(config)
    session = Session(listener.role, client, listener.tls == "implicit", account)
    print(f"listener {listener.name} ({listener.role}), client {client}, "
          f"{'authenticated as ' + account if account else 'not authenticated'}", file=out)
    refused = False
    for what, decision in explain(settings, book, session, sender, recipients):
        verdict = "accept" if decision.accept else "REFUSE"
        print(f"  {what:<40} {verdict:<6} {decision.reply():<55} rule: {decision.rule}",
              file=out)
        refused = refused or not decision.accept
    return 2 if refused else 0


def _envelope_address(option: str, text: str, *, null_ok: bool = False,
                      postmaster_ok: bool = False) -> str:
    """C{text} (with or without its angle brackets) parsed as the server
    parses a path.  @raise ValueError: naming the option, with the server's
    reply."""
    from gateway.smtp.address import AddressError, parse_path

    path = text if text.startswith("<") and text.endswith(">") else f"<{text}>"
    try:
        return parse_path(path, utf8=True, null_ok=null_ok, postmaster_ok=postmaster_ok)
    except AddressError as e:
        raise ValueError(f"{option} {text!r}: {e.text} (the server answers {e.code} "
                         f"{e.enhanced})") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mailgateway", description="Administer the mail gateway."
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    check = sub.add_parser("check", help="validate a configuration file and summarize it")
    check.add_argument("config", help="the TOML configuration file")
    check.set_defaults(func=cmd_check)

    certs = sub.add_parser("certs", help="make a CA, server and client certificates")
    csub = certs.add_subparsers(dest="certs_command", metavar="ACTION")
    csub.required = True
    init = csub.add_parser("init", help="create a CA and a server certificate")
    init.add_argument("--hostname", action="append",
                      help="server host name (repeatable); localhost and 127.0.0.1 are always added")
    init.add_argument("--out", required=True, help="directory to write into")
    init.add_argument("--key-type", choices=("ec", "rsa"), default="ec",
                      help="ECDSA P-256 (default) or RSA 2048")
    init.add_argument("--force", action="store_true",
                      help="replace existing files (a CA is never replaced silently)")
    init.set_defaults(func=cmd_certs_init)
    client = csub.add_parser("client", help="issue a client certificate (for SASL EXTERNAL)")
    client.add_argument("user", help="the account, e.g. alice@example.edu")
    client.add_argument("--ca-dir", required=True, help="directory made by 'certs init'")
    client.add_argument("--out", help="output directory (default CA_DIR/clients)")
    client.add_argument("--key-type", choices=("ec", "rsa"), default="ec")
    client.set_defaults(func=cmd_certs_client)

    policy = sub.add_parser("policy", help="the relay policy")
    psub = policy.add_subparsers(dest="policy_command", metavar="ACTION")
    psub.required = True
    ex = psub.add_parser(
        "explain", help="dry run: the decision for an envelope, and the rule that made it",
        description="Exit status: 0 if everything is accepted, 2 if something is refused, "
                    "1 on error.")
    ex.add_argument("--config", required=True, help="the TOML configuration file")
    ex.add_argument("--listener", required=True, help="an SMTP listener's name")
    ex.add_argument("--client", required=True, help="the client's IP address")
    ex.add_argument("--auth", metavar="ACCOUNT", help="the client authenticated as ACCOUNT")
    ex.add_argument("--from", dest="sender", required=True, help="MAIL FROM ('' for <>)")
    ex.add_argument("--to", action="append", required=True, help="RCPT TO (repeatable)")
    ex.set_defaults(func=cmd_policy_explain)

    for extend in _extensions():
        extend(sub)
    return p


def _extensions() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Command groups that live in their own modules."""
    from gateway.auth import usercli

    return [usercli.add_subparsers]


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = parser().parse_args(argv)
    try:
        return int(args.func(args, out, err) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return 130


def entry_point() -> None:
    sys.exit(main())
