"""Fixtures for the facade's end-to-end tests: tokend with a [[proxies]] table for ``t1`` that has
both a Unix socket and an HTTPS listener (users from a real ``htpasswd -B -C 10`` file, a session
key file, the generated CA), and the fake SDDC Manager behind it over HTTPS."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from tests.e2e.proxy_fixtures import PROXY_SOCKET, Proxied, proxy_table
from tests.support import Answer, Tokend, Upstream, eventually
from tokend.proxy.localtoken import SessionKeys

LOCAL_USER = "automation"
LOCAL_PASSWORD = "Local-Passw0rd-of-the-facade!"
OTHER_USER = "reporting"
OTHER_PASSWORD = "Another-local-passw0rd"


def htpasswd(path: Path, user: str, password: str) -> None:
    """Add or change ``user`` in the htpasswd file at ``path`` with Apache's own tool (bcrypt,
    cost 10), the password on standard input."""
    tool = shutil.which("htpasswd")
    if tool is None:
        pytest.fail("htpasswd is missing: install Debian's apache2-utils (.ci/facade-setup does)")
    create = [] if path.exists() else ["-c"]
    subprocess.run([tool, "-B", "-C", "10", "-i", *create, str(path), user],
                   input=password.encode(), capture_output=True, check=True, timeout=30)


def write_session_key(path: Path) -> Path:
    """A session key file: one key of 32 random bytes, standard base64, mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(os.urandom(32)).decode() + "\n")
    return path


@dataclass
class Facaded(Proxied):
    """tokend with a Unix socket and an HTTPS listener for ``t1``, and the fake behind it;
    :meth:`request` goes to the HTTPS listener, :meth:`unix` to the socket."""

    users_file: Path
    key_file: Path
    ca_file: Path
    port: int

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def keys(self) -> SessionKeys:
        """The session keys tokend signs with (the test wrote the file)."""
        return SessionKeys.load(self.key_file, "test")

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only ``<state_dir>/proxy-ca.pem``."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    async def request(self, method: str, path: str, body: Any = None,
                      headers: dict[str, str] | None = None, timeout: float = 30.0) -> Answer:
        """One request on the HTTPS listener (a body that is not bytes is sent as JSON)."""
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        hdrs = dict(headers or {})
        if data is not None and not isinstance(body, bytes):
            hdrs.setdefault("Content-Type", "application/json")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s, \
                s.request(method, URL(self.url + path, encoded=True), data=data, headers=hdrs,
                          ssl=self.ssl_context()) as r:
            return Answer(r.status, await r.read(), CIMultiDict(r.headers))

    async def unix(self, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> Answer:
        """One request on the proxy's Unix socket."""
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        connector = aiohttp.UnixConnector(path=str(self.socket))
        async with aiohttp.ClientSession(connector=connector) as s, \
                s.request(method, URL("http://sddc" + path, encoded=True), data=data,
                          headers=headers) as r:
            return Answer(r.status, await r.read(), CIMultiDict(r.headers))

    async def login(self, user: str = LOCAL_USER, password: str = LOCAL_PASSWORD) -> Answer:
        """``POST /v1/tokens`` on the HTTPS listener."""
        return await self.request("POST", "/v1/tokens", {"username": user, "password": password})

    async def access_token(self) -> str:
        """A local access token of :data:`LOCAL_USER`."""
        answer = await self.login()
        assert answer.status == 201, answer.body
        token: str = answer.json()["accessToken"]
        return token


def bound_port(tokend: Tokend) -> int | None:
    """The port of the HTTPS listener, from the ``proxy.started`` line (listen on port 0)."""
    lines = [e for e in tokend.events("proxy.started") if e.get("listen")]
    if not lines:
        return None
    return int(str(lines[-1]["listen"]).rsplit(":", 1)[1])


def facade_table(workdir: Path, **settings: Any) -> dict[str, Any]:
    """The [[proxies]] table of the facade tests: socket, listen on a port the kernel picks, the
    users file and the session key file in ``workdir``."""
    defaults = {"listen": "127.0.0.1:0", "users_file": str(workdir / "users.htpasswd"),
                "session_key_file": str(workdir / "facade.key")}
    return proxy_table(workdir / PROXY_SOCKET, **{**defaults, **settings})


@pytest.fixture
def make_facaded(make_upstream: Callable[..., Any], make_tokend: Callable[..., Any],
                 workdir: Path) -> Callable[..., Any]:
    async def make(upstream_args: dict[str, Any] | None = None,
                   proxy: dict[str, Any] | None = None, **tokend_args: Any) -> Facaded:
        users_file = workdir / "users.htpasswd"
        if not users_file.exists():
            htpasswd(users_file, LOCAL_USER, LOCAL_PASSWORD)
            htpasswd(users_file, OTHER_USER, OTHER_PASSWORD)
        key_file = workdir / "facade.key"
        if not key_file.exists():
            write_session_key(key_file)
        upstream: Upstream = await make_upstream(**(upstream_args or {"access_ttl": 60}))
        tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem,
                                           proxies=[facade_table(workdir, **(proxy or {}))],
                                           **tokend_args)
        port = await eventually(lambda: bound_port(tokend), 10, what="the HTTPS listener")
        return Facaded(tokend, upstream, workdir / PROXY_SOCKET, users_file, key_file,
                       workdir / "state" / "proxy-ca.pem", port)
    return make


@pytest.fixture
async def facaded(make_facaded: Callable[..., Any]) -> Facaded:
    result: Facaded = await make_facaded()
    return result


def connect_tcp(port: int) -> socket.socket:
    """A plain TCP connection to the listener (no TLS yet)."""
    return socket.create_connection(("127.0.0.1", port), timeout=30)
