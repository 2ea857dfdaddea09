"""The ``tokend`` command: argument parsing and the subcommands. No logic beyond wiring.

The commands that ask a running tokend (``token``, ``status``, ``health``, ``invalidate``) are in
:mod:`tokend.cli_client`; the exit statuses below are named in :mod:`tokend.exitcodes`.

Every command exits with one of four statuses, so a script can tell them apart:

====  ===================================================================================
0     done (a daemon, the demo and the fake stop with 0 on SIGTERM or Ctrl-C: that is how
      they end)
1     a runtime failure: tokend unreachable, no token, a failed online check, ``run --once``
      without a token
2     a usage or configuration error: a bad option, a config ``run`` would refuse, an
      unknown target, a ``--min-ttl`` the upstream's token lifetime cannot meet
130   interrupted (Ctrl-C) before a one-shot command finished; nothing is printed on stdout
====  ===================================================================================
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from tokend import DEFAULT_CONFIG_PATH, __version__
from tokend.cli_client import cmd_health, cmd_invalidate, cmd_status, cmd_token
from tokend.errors import ConfigError
from tokend.exitcodes import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, fail

if TYPE_CHECKING:  # the config package is imported by the commands that read a config
    from tokend.config import Config, LogOverride

# Only what every command needs is imported here: `tokend token` runs once per script step, so
# its start-up time matters; the daemon's modules are imported by the commands that use them.

# What `tokend demo` and `tokend fake-sddc` import from the `fake` extra (pyproject.toml).
FAKE_EXTRA_MODULES = ("cryptography", "jwt")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"tokend: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line of SPEC §2."""
    parser = _Parser(prog="tokend", description="Keeps a valid SDDC Manager token and serves it"
                     " on a Unix socket.", epilog="Exit status: 0 done; 1 runtime failure (e.g. no"
                     " token); 2 usage or configuration error; 130 interrupted. Durations take"
                     " a unit (500ms, 30s, 5m, 1h); a bare number is seconds.")
    parser.add_argument("--version", action="version", version=f"tokend {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def client(p: argparse.ArgumentParser, timeout: str = "5s",
               what: str = "give up on an attempt after this long") -> None:
        p.add_argument("--socket", help="tokend's socket (default: $TOKEND_SOCKET, else"
                       " /run/tokend/tokend.sock)")
        p.add_argument("--timeout", type=_seconds, default=_seconds(timeout), metavar="DURATION",
                       help=f"{what} (default {timeout}; e.g. 500ms, 10s)")

    p = sub.add_parser("run", help="run the daemon in the foreground")
    p.add_argument("--config", help="config file (default: $TOKEND_CONFIG, else"
                   f" {DEFAULT_CONFIG_PATH})")
    p.add_argument("--once", action="store_true",
                   help="get a token for every target, write the file sinks, and exit: 0, or 1"
                   " naming what failed (for init containers and CI jobs)")
    _log_options(p)

    p = sub.add_parser("demo", help="run the daemon against an embedded fake SDDC Manager")
    p.add_argument("--duration", type=_seconds, metavar="DURATION",
                   help="stop after this long (e.g. 20s, 5m; a bare number is seconds;"
                   " default: until Ctrl-C)")

    p = sub.add_parser("token", help="print the current access token")
    client(p)
    p.add_argument("--target", help="target name (default: the default target)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print the token JSON")
    form.add_argument("--header", action="store_true",
                      help="print 'Authorization: Bearer <token>' (for curl -H @-)")
    p.add_argument("--min-ttl", type=_seconds, metavar="DURATION",
                   help="a token valid for at least this long (e.g. 600 or 10m)")
    p.add_argument("--wait", type=_seconds, default=None, metavar="DURATION",
                   help="keep retrying while tokend is absent or has no token, until this long"
                   " has passed (e.g. 30s, 2m; default 0s: one try); with --after: how long to"
                   " wait for a new token (default 60s, at most 300s)")
    p.add_argument("--after", metavar="FINGERPRINT",
                   help="print the token once its fingerprint is no longer this one (or when"
                   " --wait passes): one watch (SPEC §10.1)")
    p.add_argument("--watch", action="store_true",
                   help="print the token, then each new one as tokend gets it, one line each,"
                   " until interrupted (for 'while read' loops); with --after, start from"
                   " that fingerprint")

    p = sub.add_parser("status", help="per-target state, for a person")
    client(p)
    p.add_argument("--json", action="store_true", help="print the status JSON")

    p = sub.add_parser("health", help="exit 0 if tokend is healthy (or ready), else 1")
    client(p)
    p.add_argument("--ready", action="store_true", help="check /readyz instead of /healthz")
    p.add_argument("--target", help="with --ready: only this target")

    p = sub.add_parser("invalidate", help="report the current token as refused: tokend gets a"
                       " new one (one refresh, however many report it)")
    client(p, "30s", "how long to wait for the new token")
    p.add_argument("--target", help="target name (default: the default target)")

    p = sub.add_parser("check-config", help="check the config as 'run' would, and read every"
                       " secret; exit 0 means 'run' starts with it")
    p.add_argument("--config", help="config file (default: $TOKEND_CONFIG, else"
                   f" {DEFAULT_CONFIG_PATH})")
    p.add_argument("--online", action="store_true",
                   help="then, per target: resolve, connect, verify TLS, log in once with the"
                   " configured credentials (this counts against the lockout guard) and revoke"
                   " that session")

    sub.add_parser("example-config", help="print the example config, every key documented"
                   " (tokend example-config > config.toml)")

    p = sub.add_parser("fake-sddc", help="run the fake SDDC Manager alone")
    p.add_argument("--listen", default="127.0.0.1:8443", help="HOST:PORT (default 127.0.0.1:8443)")
    p.add_argument("--access-ttl", type=_seconds, default=3600.0, metavar="DURATION",
                   help="access token lifetime (default 3600s, i.e. 1h)")
    p.add_argument("--refresh-ttl", type=_seconds, default=86400.0, metavar="DURATION",
                   help="refresh token lifetime (default 86400s, i.e. 24h)")
    p.add_argument("--user", action="append", default=[], metavar="U:P",
                   help="a user (repeatable; default administrator@vsphere.local:VMware1!)."
                   " The password is then visible in the process list: use --users-file for"
                   " anything but a throwaway password")
    p.add_argument("--users-file", type=Path, metavar="PATH",
                   help="users, one USER:PASSWORD per line")
    p.add_argument("--api-key", action="append", default=[], metavar="K", help="an API key")
    p.add_argument("--tls-dir", type=Path, help="serve HTTPS with ca.pem, cert.pem, key.pem"
                   " from this folder (created if absent)")
    return parser


def _seconds(text: str) -> float:
    from tokend.values import parse_duration

    try:
        return parse_duration(float(text) if text.replace(".", "", 1).isdigit() else text, "value")
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (use 30, 500ms, 30s, 5m or 1h)") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tokend`` console script."""
    args = build_parser().parse_args(argv)
    command: str = args.command
    handler = {"run": cmd_run, "demo": cmd_demo, "token": cmd_token, "status": cmd_status,
               "health": cmd_health, "check-config": cmd_check_config,
               "fake-sddc": cmd_fake_sddc, "invalidate": cmd_invalidate,
               "example-config": cmd_example_config}[command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return _interrupted(args)
    except BrokenPipeError:  # `tokend token --watch | head -1`: the reader is done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _config_path(args: argparse.Namespace) -> str:
    return str(args.config or os.environ.get("TOKEND_CONFIG") or DEFAULT_CONFIG_PATH)


def cmd_run(args: argparse.Namespace) -> int:
    """``tokend run``: the daemon in the foreground (``--once``: one token, then exit)."""
    import asyncio

    from tokend.config import load_config
    from tokend.daemon import Daemon
    from tokend.harden import harden_process
    from tokend.logs import configure

    harden_process()
    try:
        override = _log_override(args)
        config = load_config(_config_path(args))
        if args.once:
            return _run_once(config, override)
        daemon = Daemon(config, log_override=override)  # preflight checks come first in run()
        configure(daemon.config.log.level, daemon.config.log.format)
        return asyncio.run(daemon.run())
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE)


def cmd_demo(args: argparse.Namespace) -> int:
    """``tokend demo``: the daemon against the embedded fake, in a temp dir."""
    import asyncio

    if (missing := _missing_fake_extra("demo")) is not None:
        return missing
    from tokend.demo import run_demo
    from tokend.harden import harden_process

    harden_process()
    status: int = asyncio.run(run_demo(args.duration))
    return status


def cmd_check_config(args: argparse.Namespace) -> int:
    """``tokend check-config``: every check ``run`` makes, then what tokend would do."""
    from tokend.config import describe, load_config
    from tokend.preflight import preflight

    path = _config_path(args)
    try:
        config = load_config(path)
        found = preflight(config, look_for_live=True)
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE)
    print(f"{path}: OK")
    for line in describe(config):
        print(line)
    for note in found.notes:
        print(f"note: {note}")
    if args.online:
        return _check_online(config)
    return EXIT_OK


def cmd_fake_sddc(args: argparse.Namespace) -> int:
    """``tokend fake-sddc``: the fake SDDC Manager alone."""
    import asyncio

    if (missing := _missing_fake_extra("fake-sddc")) is not None:
        return missing
    from tokend.testing.cli import read_users, serve_forever

    try:
        users = read_users(args.user, args.users_file)
    except ValueError as exc:
        return fail(str(exc), EXIT_USAGE)
    try:
        asyncio.run(serve_forever(args.listen, args.access_ttl, args.refresh_ttl, users or None,
                                  args.api_key, args.tls_dir))
    except ValueError as exc:
        return fail(f"--listen: {exc}", EXIT_USAGE)
    except OSError as exc:
        return fail(f"cannot serve on {args.listen}: {exc.strerror or exc}", EXIT_FAIL)
    return EXIT_OK


def _missing_fake_extra(command: str) -> int | None:
    """Exit status 2 and one line naming the fix when the ``fake`` extra is not installed, else None.

    Checked before anything is imported, so the answer is the same whichever module would fail.
    """
    from importlib.util import find_spec

    missing = [name for name in FAKE_EXTRA_MODULES if find_spec(name) is None]
    if not missing:
        return None
    return fail(f"{command} needs the fake SDDC Manager's packages ({', '.join(missing)} missing):"
                 " pip install 'tokend[fake]'", EXIT_USAGE)


# -- the exit statuses -------------------------------------------------------------------------


def _interrupted(args: argparse.Namespace) -> int:
    """Ctrl-C: the way a daemon, the demo and the fake end (0); a one-shot command's 130."""
    if args.command in ("demo", "fake-sddc") or (args.command == "run" and not args.once):
        return EXIT_OK
    return EXIT_INTERRUPTED


# -- run: --once and the log options -----------------------------------------------------------


def _log_options(p: argparse.ArgumentParser) -> None:
    from tokend.values import LOG_FORMATS, LOG_LEVELS

    p.add_argument("--log-level", choices=LOG_LEVELS,
                   help="over [log] level and $TOKEND_LOG_LEVEL, also after a reload")
    p.add_argument("--log-format", choices=LOG_FORMATS,
                   help="over [log] format and $TOKEND_LOG_FORMAT (auto: console on a terminal,"
                   " else json)")


def _log_override(args: argparse.Namespace) -> LogOverride | None:
    """The log settings of the command line, else of $TOKEND_LOG_LEVEL/$TOKEND_LOG_FORMAT."""
    from tokend.config import LogOverride
    from tokend.values import LOG_FORMATS, LOG_LEVELS, as_choice

    level = args.log_level
    if level is None and os.environ.get("TOKEND_LOG_LEVEL"):
        level = as_choice(os.environ["TOKEND_LOG_LEVEL"], "$TOKEND_LOG_LEVEL", LOG_LEVELS)
    fmt = args.log_format
    if fmt is None and os.environ.get("TOKEND_LOG_FORMAT"):
        fmt = as_choice(os.environ["TOKEND_LOG_FORMAT"], "$TOKEND_LOG_FORMAT", LOG_FORMATS)
    return LogOverride(level, fmt) if level or fmt else None


def _run_once(config: Config, override: LogOverride | None) -> int:
    """``tokend run --once``: the checks of ``run`` (sockets aside), one token per target, exit."""
    import asyncio
    import dataclasses

    from tokend.logs import configure
    from tokend.once import run_once
    from tokend.preflight import preflight

    if override is not None:
        config = dataclasses.replace(config, log=override.over(config.log))
    configure(config.log.level, config.log.format)
    preflight(config, sockets=False)
    failures = asyncio.run(run_once(config))
    for failure in failures:
        fail(failure)
    return EXIT_FAIL if failures else EXIT_OK


# -- check-config --online, example-config -----------------------------------------------------


def _check_online(config: Config) -> int:
    import asyncio

    from tokend.logs import configure
    from tokend.online import check_online

    configure("warning", "auto", sys.stderr)
    print("online check: one real login per target with its configured credentials; it counts"
          " against the lockout guard like any login of tokend's, and the session it opens is"
          " revoked at once", flush=True)
    ok = asyncio.run(check_online(config, lambda line: print(line, flush=True)))
    return EXIT_OK if ok else EXIT_FAIL


def cmd_example_config(args: argparse.Namespace) -> int:
    """``tokend example-config``: the example config shipped in the package, on stdout."""
    from importlib.resources import files

    sys.stdout.write(files("tokend").joinpath("config.example.toml").read_text())
    return EXIT_OK
