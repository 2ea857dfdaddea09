"""Shared fixtures: a trustme CA, the fake SDDC Manager over HTTPS, a tokend process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import PASSWORD, TLS, USER, Tokend, Upstream, start_upstream, write_config
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


def assert_no_secrets(text: str, fakes: list[FakeSddc], where: str) -> None:
    """No password, access token or refresh id any fake issued or accepted appears in ``text``."""
    secrets = {PASSWORD}
    for fake in fakes:
        secrets.update(fake.users.values())
        secrets.update(fake.api_keys)
        secrets.update(fake.issued_access_tokens)
        secrets.update(fake.issued_refresh_ids)
    leaked = [s[:12] + "..." for s in secrets if s and s in text]
    assert not leaked, f"secrets leaked into {where}: {leaked}"


@pytest.fixture
async def make_upstream(tls: TLS, fakes: list[FakeSddc]) -> AsyncIterator[Callable[..., Any]]:
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
    started: list[Tokend] = []

    async def make(url: str, ca_pem: Path | None, *, wait: str | None = "ready",
                   env: dict[str, str] | None = None, **config: Any) -> Tokend:
        """Start tokend; ``wait`` is "ready" (a token held), "listening", or None."""
        path = write_config(workdir, url, ca_pem, **config)
        daemon = Tokend(workdir, path, workdir / "tokend.sock")
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
