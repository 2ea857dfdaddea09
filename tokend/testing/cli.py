"""The body of ``tokend fake-sddc``: the fake SDDC Manager alone, for people testing their automation.

``tokend/cli.py`` parses the arguments and renders errors; this module turns them into a running
fake and tells the user how to talk to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tokend.testing.fake_sddc import CALLS_KEPT, DEFAULT_USERS, FakeSddc, start_fake
from tokend.testing.tls import ensure_tls_dir


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[IPv6]:PORT``) into its parts; ``ValueError`` naming the expected form."""
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, e.g. 127.0.0.1:8443, got {listen!r}")
    return host, int(port)


def read_users(items: Sequence[str], users_file: Path | None) -> dict[str, str]:
    """Users from ``--user U:P`` items and the ``USER:PASSWORD`` lines of ``users_file``.

    Empty when neither names one (the fake then has its default user). Raises ``ValueError`` with
    a message naming the option and never the password: a malformed item, an unreadable file.
    """
    lines = list(items)
    if users_file is not None:
        try:
            lines += [line for line in users_file.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise ValueError(f"--users-file {users_file}: {exc.strerror}") from None
    users: dict[str, str] = {}
    for line in lines:
        name, sep, password = line.partition(":")
        if not sep or not name or not password:
            raise ValueError(f"--user {name or line!r}: expected USER:PASSWORD")
        users[name] = password
    return users


async def serve_forever(
    listen: str,
    access_ttl: float,
    refresh_ttl: float,
    users: Mapping[str, str] | None,
    api_keys: Iterable[str] | None,
    tls_dir: Path | None,
) -> None:
    """Run a fake SDDC Manager until cancelled. The first stdout line is its base URL.

    ``access_ttl`` and ``refresh_ttl`` are in seconds; ``users`` ``None`` means the default user;
    ``tls_dir`` serves HTTPS with the CA and certificate there (created if absent). Raises
    ``ValueError`` for a malformed ``listen``, ``OSError`` if it cannot be bound.
    """
    host, port = parse_listen(listen)
    fake = FakeSddc(access_ttl=access_ttl, refresh_ttl=refresh_ttl,
                    users=DEFAULT_USERS if users is None else users, api_keys=set(api_keys or ()),
                    calls_kept=CALLS_KEPT)
    ssl_context = ensure_tls_dir(tls_dir) if tls_dir is not None else None
    runner, url = await start_fake(fake, host, port, ssl_context)
    try:
        print(url, flush=True)
        print(usage(fake, url, tls_dir), flush=True)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def usage(fake: FakeSddc, url: str, tls_dir: Path | None) -> str:
    """How to get and use a token from the fake at ``url``; names users, never their passwords."""
    curl = f"curl --cacert {tls_dir / 'ca.pem'}" if tls_dir is not None else "curl"
    user = next(iter(fake.users), "USER")
    lines = [
        f"fake SDDC Manager: access tokens live {fake.access_ttl:g} s, refresh tokens {fake.refresh_ttl:g} s",
        f"users: {', '.join(fake.users) or '(none)'}; API keys: {len(fake.api_keys)}",
        "get a token pair (put the password in place of PASSWORD):",
        f"  {curl} -X POST {url}/v1/tokens -H 'Content-Type: application/json' \\",
        f"    -d '{{\"username\": \"{user}\", \"password\": \"PASSWORD\"}}'",
        "refresh it:",
        f"  {curl} -X PATCH {url}/v1/tokens/access-token/refresh -H 'Content-Type: application/json' \\",
        "    -d '\"REFRESH_TOKEN_ID\"'",
        "call a protected endpoint:",
        f"  {curl} {url}/v1/domains -H 'Authorization: Bearer ACCESS_TOKEN'",
    ]
    return "\n".join(lines)
