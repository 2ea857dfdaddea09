#!/usr/bin/env python3
"""Soak: ``tokend run`` against 2-second access tokens and random upstream faults, for minutes.

The command line of the soak engine, ``bench/engines/soak``, which says what runs and defines every
number of the report. The exit status is 1 when a number that must be zero is not, or when tokend's
RSS grew more than ``--max-rss-growth-mb``.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None, default_slack: float,
               default_consumers: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Soak tokend against 2-second tokens and random faults.")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=15.0, help="length (default 15)")
    length.add_argument("--seconds", type=float, help="length in seconds (instead of --minutes)")
    p.add_argument("--seed", type=int, help="random seed for faults and pauses (default: random)")
    p.add_argument("--consumers", default=default_consumers,
                   help=f"consumer kinds and counts (default {default_consumers})")
    p.add_argument("--min-ttl", type=float, default=0.5,
                   help="min_ttl the min_ttl consumers ask for (default 0.5; the 1 s lifetime"
                        " cannot meet 1, which one request in ten asks, expecting 400)")
    p.add_argument("--slack", type=float, default=default_slack,
                   help=f"seconds a token's window is shrunk at both ends when judging a 503"
                        f" (default {default_slack:g}), plus the longest stall seen near the answer")
    p.add_argument("--rss-interval", type=float, default=30.0, help="RSS sample interval (default 30)")
    p.add_argument("--fault-gap", default="1,4", help="seconds between faults: MIN,MAX (default 1,4)")
    p.add_argument("--max-rss-growth-mb", type=float, default=10.0,
                   help="fail when tokend's RSS grew more than this (default 10)")
    p.add_argument("--keep", type=Path, help="keep tokend's log and config in this (new) folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    if str(REPO) not in sys.path:  # run as a file: the engine and the test toolkit are beside it
        sys.path.insert(0, str(REPO))
    from bench.engines.soak import DEFAULT_CONSUMERS, DEFAULT_SLACK, run_soak

    args = parse_args(argv, DEFAULT_SLACK, DEFAULT_CONSUMERS)
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    lo, _, hi = args.fault_gap.partition(",")
    workdir = None
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        workdir = args.keep
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    print(f"$ {command}", flush=True)
    report = asyncio.run(run_soak(
        seconds, seed=args.seed, consumers=args.consumers, min_ttl=args.min_ttl, slack=args.slack,
        rss_interval=args.rss_interval, fault_gap=(float(lo), float(hi or lo)),
        max_rss_growth_mb=args.max_rss_growth_mb, workdir=workdir, command=command,
        progress=sys.stderr))
    print(report.render(), flush=True)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
