"""Revocation at exit (``revoke_on_exit``) sends only a refresh token id the upstream still honours.

Once a refresh is answered "refresh token gone", its id is dead: a DELETE with it at shutdown would
be refused, and would carry a credential the upstream already dropped. Driven by the virtual-clock
rig of tests/test_keeper.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.test_keeper import rig_factory  # noqa: F401  (the fixture)
from tokend.errors import CredentialsRejected, RefreshTokenGone, TransientError, UpstreamError

DEAD_ID = "rid-1"  # FakeSource's id of the first login


@pytest.mark.parametrize("login_failure", [
    TransientError("down", status=503),
    CredentialsRejected("bad", status=401),
], ids=["transient", "rejected"])
async def test_no_revoke_with_a_refresh_id_the_upstream_refused(
        rig_factory: Callable[..., Any], login_failure: UpstreamError) -> None:  # noqa: F811
    rig = await rig_factory(lifetime=100.0, revoke_on_exit=True)
    rig.source.script("refresh", RefreshTokenGone("gone", status=404))
    rig.source.script("login", login_failure)

    await rig.clock.advance(70.0)  # the refresh is refused; the login that follows fails
    await rig.keeper.stop(revoke=True)

    assert [c.argument for c in rig.source.calls if c.operation == "revoke"] == []
    assert rig.source.calls[1].operation == "refresh" and rig.source.calls[1].argument == DEAD_ID
    assert rig.source.ops() == ["login", "refresh", "login"]  # and no further use of the dead id


async def test_revoke_at_exit_sends_the_id_of_the_login_after_a_refused_refresh(
        rig_factory: Callable[..., Any]) -> None:  # noqa: F811
    # The check above would pass if nothing were ever revoked: here an id is held, and is sent.
    rig = await rig_factory(lifetime=100.0, revoke_on_exit=True)
    rig.source.script("refresh", RefreshTokenGone("gone", status=404))
    rig.source.script("login", lambda: rig.source.issue(refresh_id="rid-2"))

    await rig.clock.advance(70.0)
    await rig.keeper.stop(revoke=True)

    assert [c.argument for c in rig.source.calls if c.operation == "revoke"] == ["rid-2"]
    assert rig.source.ops() == ["login", "refresh", "login", "revoke"]
