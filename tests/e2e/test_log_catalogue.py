"""The logs of a full fault scenario hold to the event catalogue (tokend/events.py, the README)."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.support import Tokend, eventually, write_config
from tokend.events import CATALOGUE

README = Path(__file__).resolve().parents[2] / "README.md"
SCENARIO = {"revoke_on_exit": True, "max_login_failures": 2, "max_backoff": "1s"}


async def test_every_log_line_of_a_fault_scenario_is_in_the_catalogue(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any], workdir: Path) -> None:
    upstream = await make_upstream(access_ttl=4)
    fake = upstream.fake
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem, target=SCENARIO)
    await eventually(lambda: fake.count("refresh", 200) >= 1, 10, what="a refresh")
    fake.faults.fail_next("refresh", 503, count=2)
    await eventually(lambda: fake.count("refresh", 503) >= 2, 10, what="failed refreshes")
    fake.revoke_all_refresh_tokens()
    user = next(iter(fake.users))
    good = fake.users[user]
    fake.users[user] = "changed-upstream"
    await eventually(lambda: (tokend.events("login.rejected") or [{}])[-1].get("rejections") == 2,
                     20, what="the lockout guard")
    fake.users[user] = good
    write_config(workdir, upstream.url, upstream.ca_pem, target={**SCENARIO, "bogus": 1})
    tokend.signal(signal.SIGHUP)
    await eventually(lambda: tokend.events("config.reload_failed"), 5, what="reload_failed")
    write_config(workdir, upstream.url, upstream.ca_pem, target=SCENARIO)
    tokend.signal(signal.SIGHUP)
    await eventually(lambda: tokend.events("config.reloaded"), 5, what="reloaded")
    await eventually(lambda: fake.count("login", 201) >= 2, 10, what="a login after SIGHUP")
    assert await tokend.stop() == 0

    lines = tokend.events()
    assert len(lines) > 20
    seen = set()
    foreign = [line for line in lines if "logger" in line]
    assert not [f for f in foreign if f["level"] in ("error", "critical")], foreign
    for line in lines:
        if "logger" in line:
            continue  # a library's own line (aiohttp, asyncio), not a tokend event
        event = line.get("event")
        assert event in CATALOGUE, f"not in the catalogue: {line}"
        entry = CATALOGUE[event]
        assert line["level"] in entry.levels, line
        missing = [f for f in entry.fields if f not in line]
        assert not missing, f"{event} lacks {missing}: {line}"
        stamp = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
        assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0, line
        seen.add(event)
    expected = {"daemon.started", "token.acquired", "token.refreshed", "token.refresh_failed",
                "login.rejected", "target.state_changed", "config.reload_failed",
                "config.reloaded", "token.revoked", "daemon.stopping", "daemon.stopped"}
    assert expected <= seen, expected - seen
    changes = [(e["old"], e["new"]) for e in tokend.events("target.state_changed")]
    assert ("degraded", "credentials_rejected") in changes or \
        ("expired", "credentials_rejected") in changes or \
        any(new == "credentials_rejected" for _, new in changes), changes


def test_the_readme_lists_every_event_of_the_catalogue() -> None:
    text = README.read_text()
    listed = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", text, flags=re.MULTILINE))
    assert listed == set(CATALOGUE), (set(CATALOGUE) - listed, listed - set(CATALOGUE))
