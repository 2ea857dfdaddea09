"""The commands that ask a running tokend over its socket: ``token`` (once, ``--after``,
``--watch``), ``status``, ``health`` and ``invalidate``.

Standard library and :mod:`tokend.client` only: ``tokend token`` runs once per script step, so its
start-up time matters (``tests/test_cli_imports.py``). Exit statuses are those of :mod:`tokend.exitcodes`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from tokend.client import (
    Client,
    TargetNotFound,
    Token,
    TokenRefused,
    TokenUnavailable,
    Unreachable,
    get_token,
    request,
    socket_path,
)
from tokend.exitcodes import EXIT_FAIL, EXIT_OK, EXIT_USAGE, USAGE_STATUSES, fail

# tokend token --watch: how long each watch is held, and the back-off while tokend is away.
WATCH_HOLD = 60.0
REWATCH_JITTER = 0.25
WATCH_RETRY_MAX = 30.0


def cmd_token(args: argparse.Namespace) -> int:
    """``tokend token``: print the current access token, or watch for new ones."""
    if args.min_ttl is not None and (args.watch or args.after):
        return fail("--min-ttl cannot be combined with --watch or --after", EXIT_USAGE)
    if args.watch:
        return _watch_tokens(args)
    if args.after is not None:
        client = Client(args.socket, args.target, args.timeout)
        try:
            token = client.watch(args.after, WATCH_HOLD if args.wait is None else args.wait)
        except Unreachable as exc:
            return fail(str(exc))
        except TokenRefused as exc:
            return fail(f"no token: {exc}", _refusal_exit(exc))
        _print_token(args, _token_json(token))
        return EXIT_OK
    try:
        data = get_token(args.target, args.min_ttl, args.socket, args.timeout, args.wait or 0.0)
    except Unreachable as exc:
        return fail(str(exc))
    except TokenRefused as exc:
        return fail(f"no token: {exc}", _refusal_exit(exc))
    _print_token(args, data)
    return EXIT_OK


def _print_token(args: argparse.Namespace, data: dict[str, Any]) -> None:
    """One line: the token, its header (--header) or its JSON (--json); flushed at once."""
    if args.json:
        line = json.dumps(data)
    elif args.header:
        line = f"Authorization: Bearer {data['accessToken']}"
    else:
        line = data["accessToken"]
    print(line, flush=True)


def _token_json(token: Token) -> dict[str, Any]:
    return {"target": token.target, "tokenType": token.token_type,
            "accessToken": token.access_token, "expiresAt": token.expires_at,
            "expiresIn": token.expires_in, "upstreamExp": token.upstream_exp,
            "fingerprint": token.fingerprint}


def _watch_tokens(args: argparse.Namespace) -> int:
    """``tokend token --watch``: a line per new token until interrupted.

    The first token must come (within ``--wait``, as without --watch): a wrong socket or target
    fails at once. After that, tokend being away, holding no token or swapping the target's
    keeper on reload is waited out (said once on stderr), so a ``while read`` loop outlives a
    restart of tokend.
    """
    import random
    import time

    client = Client(args.socket, args.target, args.timeout)
    try:
        data = get_token(args.target, None, args.socket, args.timeout, args.wait or 0.0)
    except Unreachable as exc:
        return fail(str(exc))
    except TokenRefused as exc:
        return fail(f"no token: {exc}", _refusal_exit(exc))
    last = str(data["fingerprint"])
    if args.after != last:
        _print_token(args, data)
    delay = 0.5
    waiting = False
    while True:
        time.sleep(REWATCH_JITTER * random.random())  # as AsyncClient.tokens() does
        try:
            token = client.watch(last, WATCH_HOLD)
        except (Unreachable, TokenUnavailable, TargetNotFound) as exc:
            if isinstance(exc, TargetNotFound) and delay >= WATCH_RETRY_MAX:
                return fail(f"no token: {exc}")  # not a reload: the target is gone
            if not waiting:
                print(f"tokend: {exc}; waiting for tokend", file=sys.stderr, flush=True)
                waiting = True
            pause = exc.retry_after if exc.retry_after is not None else delay
            time.sleep(min(pause, WATCH_RETRY_MAX) * (0.5 + random.random() / 2))
            delay = min(delay * 2, WATCH_RETRY_MAX)
            continue
        except TokenRefused as exc:
            return fail(f"no token: {exc}")
        delay, waiting = 0.5, False
        if token.fingerprint != last:
            last = token.fingerprint
            _print_token(args, _token_json(token))


def cmd_status(args: argparse.Namespace) -> int:
    """``tokend status``: per-target state."""
    from tokend.status import render_status

    try:
        answer = request("/v1/status", sock=args.socket, timeout=args.timeout)
    except Unreachable as exc:
        return fail(str(exc))
    if answer.status != 200:
        return fail(answer.error)
    data: dict[str, Any] = answer.json()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(render_status(data, color=_color(sys.stdout)))
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    """``tokend health``: exit 0 if healthy (or ready); silent unless it fails."""
    path = "/readyz" if args.ready else "/healthz"
    if args.ready and args.target:
        path += f"?target={args.target}"
    try:
        answer = request(path, sock=args.socket, timeout=args.timeout)
    except Unreachable as exc:
        return fail(str(exc))
    if answer.status == 200:
        return EXIT_OK
    if answer.status in USAGE_STATUSES:  # an unknown target: the probe itself is wrong
        return fail(f"{socket_path(args.socket)}: {answer.error}", EXIT_USAGE)
    what = "not ready" if args.ready else "unhealthy"
    detail = ""
    if args.ready and answer.status == 503:
        states = [f"{t['name']}: {t['state']}" for t in answer.json().get("targets", [])]
        detail = f" ({', '.join(states)})"
    elif answer.status != 503:
        detail = f" ({answer.error})"
    return fail(f"{socket_path(args.socket)}: {what}{detail}")


def cmd_invalidate(args: argparse.Namespace) -> int:
    """``tokend invalidate``: report the current token as refused; print the one that replaces it."""
    import urllib.parse

    try:
        current = get_token(args.target, None, args.socket, args.timeout)
        name, old = str(current["target"]), str(current["fingerprint"])
        answer = request(f"/v1/targets/{urllib.parse.quote(name, safe='')}/invalidate", "POST",
                         json.dumps({"fingerprint": old}).encode(), sock=args.socket,
                         timeout=args.timeout)
    except Unreachable as exc:
        return fail(str(exc))
    except TokenRefused as exc:
        return fail(f"no token to report: {exc}", _refusal_exit(exc))
    if answer.status != 200:
        return fail(f"{name}: reported {old}, no new token: {answer.error}",
                     EXIT_USAGE if answer.status in USAGE_STATUSES else EXIT_FAIL)
    new: dict[str, Any] = answer.json()
    print(f"{name}: reported {old}; now serving {new['fingerprint']},"
          f" expires in {new['expiresIn']}s")
    return EXIT_OK


def _refusal_exit(exc: TokenRefused) -> int:
    """2 when tokend refused the request itself (an unknown target, an impossible min_ttl)."""
    return EXIT_USAGE if exc.status in USAGE_STATUSES else EXIT_FAIL


def _color(stream: Any) -> bool:
    """Colour on a terminal, unless NO_COLOR is set to anything (https://no-color.org)."""
    return bool(stream.isatty()) and not os.environ.get("NO_COLOR")
