"""TLS material is re-read (SPEC §8.8): ``UpstreamClient.check_trust`` and the CA file behind it.

Two trustme CAs; a local HTTPS server whose certificate is issued by CA2. The client's ``ca_file``
starts as CA1 (the server is not trusted) and is rewritten to CA2.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from tokend.config import TargetConfig
from tokend.errors import ConfigError, TransientError
from tokend.secrets import Secret, SecretSource
from tokend.upstream import UpstreamClient

TOKEN = jwt.encode({"iat": 1_999_996_400, "exp": 2_000_000_000}, "k" * 32, algorithm="HS256")
Server = Callable[..., Awaitable[TestServer]]


class Upstream:
    """An HTTPS login endpoint; ``gate``, when set, holds each answer until it is opened."""

    def __init__(self) -> None:
        self.ca1, self.ca2 = trustme.CA(), trustme.CA()
        self.gate: asyncio.Event | None = None
        self.logins = 0

    async def login(self, request: web.Request) -> web.Response:
        await request.read()
        self.logins += 1
        if self.gate is not None:
            await self.gate.wait()
        return web.json_response({"accessToken": TOKEN, "refreshToken": {"id": "rid-1"}},
                                 status=201)

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca2.issue_cert("127.0.0.1").configure_cert(ctx)
        return ctx


@pytest.fixture
async def upstream(aiohttp_server: Server) -> tuple[Upstream, str]:
    up = Upstream()
    app = web.Application()
    app.router.add_post("/v1/tokens", up.login)
    server = await aiohttp_server(app, ssl=up.context())
    return up, f"https://127.0.0.1:{server.port}"


def write_ca(path: Path, ca: trustme.CA) -> None:
    path.write_bytes(ca.cert_pem.bytes())


def config(url: str, ca_file: Path | None, **extra: Any) -> TargetConfig:
    source = SecretSource("literal", "/etc/tokend/config.toml", "targets[3].password",
                          literal=Secret("Pw#x"))
    return TargetConfig(name="t1", url=url, username="u", password=source, api_key=None,
                        ca_file=ca_file, request_timeout=5.0, **extra)


async def login(client: UpstreamClient) -> str:
    return (await client.login("u", Secret("Pw#x"))).access_token


@contextlib.asynccontextmanager
async def client_of(url: str, ca_file: Path, ca: trustme.CA | None) -> AsyncIterator[UpstreamClient]:
    """A client whose ``ca_file`` holds ``ca`` (or does not exist yet), closed on the way out."""
    if ca is not None:
        write_ca(ca_file, ca)
    client = UpstreamClient(config(url, ca_file))
    try:
        yield client
    finally:
        await client.close()


async def test_rewritten_ca_file_is_trusted_on_the_next_call(
        upstream: tuple[Upstream, str], tmp_path: Path) -> None:
    up, url = upstream
    ca_file = tmp_path / "ca.pem"
    async with client_of(url, ca_file, up.ca1) as client:
        with pytest.raises(TransientError) as exc:
            await login(client)
        assert exc.value.outcome == "tls_error"
        assert up.logins == 0  # the password never went to the untrusted server

        write_ca(ca_file, up.ca2)
        assert client.check_trust() is True
        assert await login(client) == TOKEN
        assert client.check_trust() is False  # read again, unchanged


async def test_unchanged_ca_file_is_not_reloaded(
        upstream: tuple[Upstream, str], tmp_path: Path) -> None:
    up, url = upstream
    ca_file = tmp_path / "ca.pem"
    async with client_of(url, ca_file, up.ca2) as client:
        assert await login(client) == TOKEN
        session = client._get_pool().session
        assert client.check_trust() is False
        assert client.check_trust() is False
        assert await login(client) == TOKEN
        assert client._get_pool().session is session  # the same session, kept alive


@pytest.mark.parametrize("fault", ["missing", "not a certificate", "a directory",
                                   "a trusted-certificate block"])
async def test_broken_ca_file_names_the_key_and_keeps_the_trust_store(
        upstream: tuple[Upstream, str], tmp_path: Path, fault: str) -> None:
    up, url = upstream
    ca_file = tmp_path / "ca.pem"
    async with client_of(url, ca_file, up.ca2) as client:
        assert await login(client) == TOKEN
        if fault == "missing":
            ca_file.unlink()
        elif fault == "not a certificate":
            ca_file.write_text("-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n")
        elif fault == "a directory":
            ca_file.unlink()
            ca_file.mkdir()
        else:
            text = up.ca1.cert_pem.bytes().replace(b" CERTIFICATE", b" TRUSTED CERTIFICATE")
            ca_file.write_bytes(text)
        with pytest.raises(ConfigError) as exc:
            client.check_trust()
        assert exc.value.key == "targets[3].ca_file"
        assert str(ca_file) in str(exc.value) and exc.value.fix
        assert await login(client) == TOKEN  # CA2 is still trusted


async def test_call_in_flight_finishes_on_the_old_session(
        upstream: tuple[Upstream, str], tmp_path: Path) -> None:
    up, url = upstream
    ca_file = tmp_path / "ca.pem"
    async with client_of(url, ca_file, up.ca2) as client:
        up.gate = asyncio.Event()
        first = asyncio.create_task(login(client))
        while up.logins == 0:
            await asyncio.sleep(0.01)
        old = client._get_pool()
        ca_file.write_bytes(up.ca1.cert_pem.bytes() + up.ca2.cert_pem.bytes())
        assert client.check_trust() is True
        assert not old.session.closed  # never interrupted
        up.gate.set()
        assert await first == TOKEN
        await asyncio.sleep(0)  # the close runs in the background once the call is done
        for _ in range(100):
            if old.session.closed:
                break
            await asyncio.sleep(0.01)
        assert old.session.closed
        assert client._get_pool() is not old
        assert await login(client) == TOKEN


async def test_ca_file_broken_at_start_trusts_only_the_system_cas_until_it_loads(
        upstream: tuple[Upstream, str], tmp_path: Path) -> None:
    up, url = upstream
    ca_file = tmp_path / "ca.pem"
    # no file yet: as if it broke between the config check and the start
    async with client_of(url, ca_file, None) as client:
        with pytest.raises(TransientError) as exc:
            await login(client)
        assert exc.value.outcome == "tls_error"
        with pytest.raises(ConfigError):
            client.check_trust()
        write_ca(ca_file, up.ca2)
        assert client.check_trust() is True
        assert await login(client) == TOKEN


@pytest.mark.parametrize("settings", [
    {"tls_fingerprint": ("sha256:" + ":".join(["AB"] * 32),)}, {"verify_tls": False}, {}])
async def test_check_trust_without_a_ca_file_in_use_is_false(settings: dict[str, Any]) -> None:
    client = UpstreamClient(config("https://127.0.0.1:9", None, **settings))
    try:
        assert client.check_trust() is False
    finally:
        await client.close()


def test_ca_file_bundle_with_comments_in_any_encoding_loads(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "bundle.pem"
    ca_file.write_bytes(b"# Issuer: CN=\xc5\x90 \xe4 r\xe9sum\xe9\n" + ca.cert_pem.bytes()
                        + b"# trailing comment \xff\n")
    client = UpstreamClient(config("https://127.0.0.1:9", ca_file))
    assert client._ca_pem == ca_file.read_bytes()
    assert client.check_trust() is False
