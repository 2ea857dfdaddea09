#!/usr/bin/env python3
"""Benchmark of tokend's proxy against a bare aiohttp reverse proxy and against the fake directly.

The command line of the benchmark engine, ``bench/engines/proxy``, which says what runs and how
each number is measured. Goals are printed with PASS/FAIL; nothing here asserts. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

GIB = 1024 ** 3


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from bench.engines.common import check_load_options  # main put the repository on the path

    p = argparse.ArgumentParser(description="Benchmark GET /v1/domains through tokend's proxy, through"
                                " a bare aiohttp reverse proxy and straight to the fake, then 1 GiB"
                                " each way through them.")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per load run (default 10)")
    p.add_argument("--connections", default="1,10,100",
                   help="comma-separated keep-alive connection counts (default 1,10,100; '' skips"
                        " the load runs)")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="seconds of unmeasured load before each run (default 1; 0: none)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the load sweep; each cell shows its best round by req/s (default 1)")
    p.add_argument("--stream-bytes", type=int, default=GIB,
                   help=f"size of the upload and of the download (default {GIB}, 1 GiB; 0 skips them)")
    p.add_argument("--no-stream-references", dest="stream_references", action="store_false",
                   help="transfer through tokend only, not also through the bare proxy and directly")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the proxies to the last CPU and the rest to the others")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = p.parse_args(argv)
    check_load_options(p, args, no_connections_ok=True)
    if args.stream_bytes < 0:
        p.error("--stream-bytes must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    if str(REPO) not in sys.path:  # run as a file: the engine and the test toolkit are beside it
        sys.path.insert(0, str(REPO))
    args = parse_args(argv)
    from bench.engines.proxy.run import run_benchmark

    return run_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
