"""``tokend run --once``: obtain a token for every target, write the file sinks, and exit.

For init containers and CI jobs (what Vault Agent's ``exit_after_auth`` does): each target's
keeper runs until its first attempt is over, exactly as in the daemon, so the lockout guard and
its record under ``state_dir`` apply (a target whose secret is already locked out makes no login;
the spacing after a rejection is waited out). The token files are left in place for whoever reads
them next, whatever ``keep_on_exit`` says; the refresh tokens are revoked if ``revoke_on_exit``.
No socket is opened and no metrics are served.
"""

from __future__ import annotations

import asyncio
import time

from tokend.config import Config
from tokend.keeper import Keeper
from tokend.ledger import Ledger
from tokend.logs import get_logger
from tokend.metrics import Metrics

log = get_logger()


async def run_once(config: Config) -> list[str]:
    """Get a token for every target of ``config`` once; the reason for each that got none."""
    ledger = Ledger.open(config.server.state_dir, time.time())
    metrics = Metrics()
    keepers = [Keeper(t, metrics.target(t.name), ledger=ledger) for t in config.targets]
    for keeper in keepers:
        keeper.start()
    try:
        await asyncio.gather(*(k.first_attempt_done.wait() for k in keepers))
    finally:
        failures = [_reason(k) for k in keepers if k.current(time.monotonic()) is None]
        for keeper in keepers:
            await keeper.stop(revoke=keeper.target.revoke_on_exit, keep_file=True)
    return failures


def _reason(keeper: Keeper) -> str:
    """Why ``keeper`` has no token, in one line."""
    now, wall = time.monotonic(), time.time()
    text = f"{keeper.name}: no token (state {keeper.state})"
    error = keeper.last_error(now, wall)
    lockout = keeper.status(now, wall).get("lockout")
    if error is None and lockout:
        text += (f": the lockout guard made no login: {lockout['rejections']} rejected login(s) of"
                 f" this secret on record until {lockout['expiresAt']} (fix the secret, then"
                 " try again)")
    if error is not None:
        text += f": {error['errorCode']}: {error['message']}"
        if error.get("remediationMessage"):
            text += f" ({error['remediationMessage']})"
    return text
