# -*- test-case-name: tests.test_tap -*-
"""
twistd glue: the C{mailgateway} plugin's options and C{makeService}.

Configuration errors end the start with the full list of problems and exit
status 1, before anything listens; they are never only logged.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from gateway.auth.usersfile import UsersFileError
from gateway.config import load
from gateway.errors import ConfigError
from gateway.smtp.aliases import AliasError
from gateway.tls import TLSSetupError


class Options(usage.Options):
    synopsis = "--config FILE"
    longdesc = (
        "Serve POP3, IMAP4 and ESMTP, each listener with its own TLS context, "
        "from one TOML configuration file (see etc/gateway.toml). "
        "Validate a file without starting with 'mailgateway check FILE'. "
        "SIGHUP reloads certificates and the users file; SIGTERM stops cleanly."
    )
    optParameters = [
        ["config", "c", "etc/gateway.toml", "The TOML configuration file."],
    ]


def makeService(options: Options) -> Any:
    from twisted.internet import reactor

    from gateway.service import build

    try:
        config = load(options["config"])
        return build(config, reactor)
    except ConfigError as e:
        raise SystemExit(f"mailgateway: {options['config']}: {e.render()}") from None
    except TLSSetupError as e:
        raise SystemExit(f"mailgateway: {options['config']}: TLS: {e}") from None
    except UsersFileError as e:
        raise SystemExit(f"mailgateway: {options['config']}: {e.render()}") from None
    except AliasError as e:
        raise SystemExit(f"mailgateway: {options['config']}: aliases: {e}") from None
