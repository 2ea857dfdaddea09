#!/usr/bin/env python3
"""Benchmark of tokend's socket API against a bare aiohttp app and nginx, over Unix sockets.

The command line of the benchmark engine, ``bench/engines/serve``, which says what runs and how
each number is measured. Goals are printed with PASS/FAIL; nothing here asserts. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from bench.engines.common import check_load_options  # main put the repository on the path

    p = argparse.ArgumentParser(description="Benchmark tokend's GET /v1/token against a bare aiohttp"
                                " app and nginx, over Unix sockets, with autocannon.")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per load run (default 10)")
    p.add_argument("--connections", default="1,10,100",
                   help="comma-separated keep-alive connection counts (default 1,10,100)")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="seconds of unmeasured load before each run (default 1; 0: none)")
    p.add_argument("--idle-seconds", type=float, default=60.0,
                   help="idle CPU sample length (default 60; 0 skips it)")
    p.add_argument("--cli-runs", type=int, default=20, help="`tokend token` runs (default 20)")
    p.add_argument("--start-runs", type=int, default=5,
                   help="start-to-ready samples, each a fresh `tokend run` (default 5)")
    p.add_argument("--nginx-workers", default="1",
                   help="nginx worker_processes (default 1, like tokend's one event loop; or auto)")
    p.add_argument("--load-generator", choices=("driver", "cli"), default="driver",
                   help="driver: bench/cannon.js, autocannon with microsecond latencies (default);"
                        " cli: the autocannon command (latencies in whole milliseconds)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the load sweep; each cell shows its best round by req/s, the one"
                        " least disturbed on a shared machine (default 1)")
    p.add_argument("--per-uid", default="auto",
                   help="connections one load-generator uid may open; more are spread over extra"
                        " uids (65534, 65533, ...). auto: tokend's own per-uid limit; 0: never split")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the servers to the last CPU and the load generator to the others")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    p.add_argument("--startup-only", action="store_true",
                   help="only start-to-ready, RSS when ready and `tokend token` wall time: no load"
                        " runs, no idle sample, no nginx or autocannon needed")
    args = p.parse_args(argv)
    check_load_options(p, args)
    if args.nginx_workers != "auto" and not args.nginx_workers.isdigit():
        p.error("--nginx-workers: a number or auto")
    if args.per_uid != "auto" and not args.per_uid.isdigit():
        p.error("--per-uid: a number or auto")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    if str(REPO) not in sys.path:  # run as a file: the engine and the test toolkit are beside it
        sys.path.insert(0, str(REPO))
    args = parse_args(argv)
    from bench.engines.serve.run import run_benchmark, run_startup_only

    return run_startup_only(args) if args.startup_only else run_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
