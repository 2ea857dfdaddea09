"""The first target's ``/v1/status`` entry of a running :class:`Tokend`, read for a test's checks
and waits (``await eventually(lambda: in_state(tokend, "valid"), ...)``)."""

from __future__ import annotations

from typing import Any

from tests.support.daemon import Tokend


async def state(tokend: Tokend) -> str:
    """The state of the first target."""
    value: str = (await tokend.status())["state"]
    return value


async def in_state(tokend: Tokend, wanted: str) -> bool:
    return await state(tokend) == wanted


async def last_error(tokend: Tokend) -> dict[str, Any] | None:
    """The ``lastError`` of the first target, ``None`` when there is none."""
    error: dict[str, Any] | None = (await tokend.status())["lastError"]
    return error
