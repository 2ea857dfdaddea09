"""``tokend status`` for a person: one block per target."""

from __future__ import annotations

from typing import Any

_COLORS = {"valid": "32", "refreshing": "36", "starting": "36", "degraded": "33",
           "expired": "31", "credentials_rejected": "31"}


def _paint(text: str, code: str, color: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if color else text


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def render_status(data: dict[str, Any], color: bool = False) -> str:
    """The status JSON as aligned text; colour only when asked (on a TTY)."""
    blocks = []
    for t in data.get("targets", []):
        state = str(t.get("state"))
        lines = [
            f"{t.get('name')}: {_paint(state, _COLORS.get(state, '0'), color)}",
            f"  expires in      {_duration(t.get('expiresIn'))}"
            + (f" (at {t['expiresAt']})" if t.get("expiresAt") else ""),
            f"  last refresh    {t.get('lastRefreshAt') or '-'}",
            f"  next refresh    {t.get('nextRefreshAt') or '-'}",
            f"  failures        {t.get('consecutiveFailures', 0)} in a row",
        ]
        lockout = t.get("lockout")
        if lockout:  # rejections that outlive a restart (SPEC §8.9)
            lines.append(f"  lockout record  {lockout.get('rejections')} rejected login(s),"
                         f" kept until {lockout.get('expiresAt')} (fix the secret or SIGHUP to clear)")
        err = t.get("lastError")
        if err:
            lines.append(f"  last error      {err.get('errorCode')} at {err.get('at')}")
            lines.append(f"    message       {err.get('message')}")
            if err.get("remediationMessage"):
                lines.append(f"    remediation   {err.get('remediationMessage')}")
            if err.get("referenceToken"):
                lines.append(f"    reference     {err.get('referenceToken')}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) if blocks else "no targets"
