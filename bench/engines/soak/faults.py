"""Random upstream faults, injected into the fake one after another."""

from __future__ import annotations

import asyncio

from bench.engines.soak.consumers import Ctx
from tokend.testing.faults import FaultTarget

MALFORMED_KINDS = ("not_json", "not_jwt", "no_exp", "expired", "iat_future", "missing_fields",
                   "wrong_types")


async def inject_faults(ctx: Ctx, url: str, gap: tuple[float, float]) -> None:
    """Every ``gap`` seconds (uniform), one random misbehaviour of the fake."""
    faults = ctx.fake.faults
    rng = ctx.rng
    await asyncio.sleep(rng.uniform(*gap))
    while ctx.running():
        kind = rng.choices(
            ["fail", "429", "drop", "down", "malformed", "revoke", "delay", "redirect"],
            weights=[5, 2, 3, 2, 3, 2, 2, 1])[0]
        op: FaultTarget = rng.choice(["refresh", "refresh", "login", "any"])
        if kind == "fail":
            status = rng.choice([500, 502, 503])
            faults.fail_next(op, status, count=rng.randint(1, 3))
            ctx.report.faults[f"fail {op} {status}"] += 1
        elif kind == "429":
            faults.fail_next(op, 429, headers={"Retry-After": str(rng.randint(1, 3))})
            ctx.report.faults[f"429+Retry-After {op}"] += 1
        elif kind == "drop":
            when = rng.choice(["headers", "no_response"])
            faults.drop_next(op, count=rng.randint(1, 2), when=when)  # type: ignore[arg-type]
            ctx.report.faults[f"drop {op} {when}"] += 1
        elif kind == "down":
            mode = rng.choice(["503", "drop"])
            spell = rng.uniform(0.5, 3.0)
            faults.down_mode = mode  # type: ignore[assignment]
            faults.down = True
            ctx.report.faults[f"down ({mode})"] += 1
            await asyncio.sleep(spell)
            faults.down = False
            ctx.report.info["seconds down"] += round(spell)
        elif kind == "malformed":
            bad = rng.choice(MALFORMED_KINDS)
            faults.malformed_next(op if op != "any" else "refresh", bad)  # type: ignore[arg-type]
            ctx.report.faults[f"malformed {bad}"] += 1
        elif kind == "revoke":
            faults.revoke_all_refresh_tokens()
            ctx.report.faults["revoke all refresh tokens"] += 1
        elif kind == "delay":
            # Below request_timeout (3 s), so every token the fake sends reaches tokend.
            delay = rng.uniform(0.05, 0.4)
            spell = rng.uniform(1.0, 4.0)
            faults.delays[op if op != "any" else "refresh"] = delay
            ctx.report.faults["delay"] += 1
            await asyncio.sleep(spell)
            faults.delays.clear()
        else:
            faults.redirect_next(op, url + "/elsewhere")
            ctx.report.faults[f"redirect {op}"] += 1
        await asyncio.sleep(rng.uniform(*gap))
