"""Shared fixtures, built on :mod:`tests.support`: a work directory, a trustme CA, the fake SDDC
Manager over HTTPS, and ``tokend run`` processes with a leak check at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    PASSWORD,
    TLS,
    USER,
    Tokend,
    Upstream,
    assert_no_secrets,
    configured_tokend,
    start_upstream,
)
from tokend.testing.fake_sddc import FakeSddc


@pytest.fixture
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Unix socket paths are limited to 108 bytes: keep the directory short.
    return tmp_path_factory.mktemp("t", numbered=True)


@pytest.fixture
def tls(workdir: Path) -> TLS:
    return TLS(workdir)


@pytest.fixture
def fakes() -> list[FakeSddc]:
    """Every fake upstream a test started: the leak check reads what they issued."""
    return []


@pytest.fixture
async def make_upstream(tls: TLS, fakes: list[FakeSddc]) -> AsyncIterator[Callable[..., Any]]:
    """Start a fake SDDC Manager over HTTPS (``FakeSddc`` keywords; the test user, 6 s tokens)."""
    started: list[Upstream] = []

    async def make(**kwargs: Any) -> Upstream:
        kwargs.setdefault("users", {USER: PASSWORD})
        kwargs.setdefault("access_ttl", 6)
        upstream = await start_upstream(FakeSddc(**kwargs), tls)
        started.append(upstream)
        fakes.append(upstream.fake)
        return upstream

    yield make
    for upstream in started:
        await upstream.runner.cleanup()


@pytest.fixture
async def upstream(make_upstream: Callable[..., Any]) -> Upstream:
    result: Upstream = await make_upstream()
    return result


@pytest.fixture
async def make_tokend(workdir: Path, fakes: list[FakeSddc]) -> AsyncIterator[Callable[..., Any]]:
    """Start ``tokend run`` on ``workdir/config.toml``; stop it and check its output for secrets
    at teardown."""
    started: list[Tokend] = []

    async def make(url: str, ca_pem: Path | None, *, wait: str | None = "ready",
                   env: dict[str, str] | None = None, **config: Any) -> Tokend:
        """Start a daemon from ``configured_tokend(workdir, url, ca_pem, **config)`` (overrides of
        ``server``, ``metrics``, ``log``, ``target``, ``extra_targets``; ``password``; a command
        ``prefix`` and the ``socket`` it makes) with ``env`` added to the environment.

        ``wait`` is "ready" (every target holds a token), "listening" or None.
        """
        daemon = configured_tokend(workdir, url, ca_pem, **config)
        daemon.start(env)
        started.append(daemon)
        if wait == "ready":
            await daemon.ready()
        elif wait == "listening":
            await daemon.started()
        return daemon

    yield make
    for daemon in started:
        await daemon.stop()
    # Every end-to-end test doubles as a leak test: nothing secret in what tokend printed.
    for daemon in started:
        assert_no_secrets(daemon.stdout(), fakes, "stdout")
        assert_no_secrets(daemon.stderr(), fakes, "stderr")


@pytest.fixture
async def tokend(make_tokend: Callable[..., Any], upstream: Upstream) -> Tokend:
    daemon: Tokend = await make_tokend(upstream.url, upstream.ca_pem)
    return daemon
