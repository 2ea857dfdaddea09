"""The keeper's news (SPEC §10.1): one shared future, resolved at publish, withdraw and retire."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.test_keeper import rig_factory  # noqa: F401  (the fixture)
from tokend.errors import TransientError


async def test_news_is_one_future_resolved_at_the_next_publish(
        rig_factory: Callable[..., Any]) -> None:  # noqa: F811
    rig = await rig_factory(lifetime=100.0)
    news = rig.keeper.news()
    assert rig.keeper.news() is news  # shared by everyone who asks
    await rig.clock.advance(60.0)
    assert not news.done()
    await rig.clock.advance(15.0)  # the refresh at 70 % of 100 s (rand = 0.5: no jitter)
    assert rig.source.ops() == ["login", "refresh"]
    assert news.done() and not news.cancelled()
    assert rig.keeper.news() is not news and not rig.keeper.news().done()


async def test_news_is_resolved_when_the_token_is_withdrawn(rig_factory: Callable[..., Any]) -> None:  # noqa: F811
    rig = await rig_factory(lifetime=100.0, max_backoff=5.0)
    rig.source.script("refresh", *(TransientError("down", status=503) for _ in range(1000)))
    rig.source.script("login", *(TransientError("down", status=503) for _ in range(1000)))
    await rig.clock.advance(90.0)
    news = rig.keeper.news()
    assert not news.done() and rig.valid()
    await rig.clock.advance(9.5)
    assert not rig.valid()
    assert news.done()


async def test_news_stays_resolved_once_the_keeper_is_retired(rig_factory: Callable[..., Any]) -> None:  # noqa: F811
    rig = await rig_factory()
    news = rig.keeper.news()
    await rig.keeper.stop(revoke=False)
    assert rig.keeper.retired and news.done()
    assert rig.keeper.news().done()  # a watch that starts now does not wait
