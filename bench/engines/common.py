"""What the socket and the proxy benchmarks share: their options' checks, the CPU split, the work
directory, the load sweep, the report's head, ratio rows and JSON head.

The fronts import it before the engines (for ``--help``): only the standard library at the top;
aiohttp, tokend and the engines come in where they are used. The bare references share
``unix_serve.py`` instead, which imports nothing they do not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:

    from bench.engines.serve.load import LoadResult
    from bench.engines.serve.processes import Bench


# -- the command line ---------------------------------------------------------------------------


def check_load_options(p: argparse.ArgumentParser, args: argparse.Namespace,
                       no_connections_ok: bool = False) -> None:
    """``--connections`` as ``args.conn_list``; ``--duration`` and ``--rounds`` checked."""
    try:
        args.conn_list = [int(c) for c in args.connections.split(",") if c.strip()]
    except ValueError:
        p.error("--connections: expected numbers like 1,10,100")
    if (not args.conn_list and not no_connections_ok) or any(c < 1 for c in args.conn_list):
        p.error("--connections: expected numbers like 1,10,100")
    if args.duration <= 0:
        p.error("--duration must be > 0")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")


# -- a run ----------------------------------------------------------------------------------------


def cpu_split(args: argparse.Namespace) -> tuple[list[int] | None, set[int] | None, set[int] | None]:
    """(the CPUs, the servers' CPU, the clients' CPUs) when pinned: the servers on the last CPU,
    the rest on the others; (None, None, None) with ``--no-pin`` or a single CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if args.no_pin or len(cpus) < 2:
        return None, None, None
    return cpus, {cpus[-1]}, set(cpus[:-1])


def announce_command() -> str:
    """This process's command line, printed as the report's first line."""
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    print(f"$ {command}\n", flush=True)
    return command


@contextlib.contextmanager
def load_bench(args: argparse.Namespace, server_cpus: set[int] | None, client_cpus: set[int] | None,
               per_uid: int | None) -> Iterator[Bench]:
    """A :class:`Bench` in a fresh work directory holding ``cannon.js`` (readable by the load
    generator's other uids); every process it started is stopped at the end."""
    from bench.engines.serve.processes import BENCH_DIR, Bench, workdir

    with workdir() as wd:
        bench = Bench(args, wd, server_cpus, client_cpus, per_uid)
        shutil.copy(BENCH_DIR / "cannon.js", wd / "cannon.js")
        (wd / "cannon.js").chmod(0o644)
        try:
            yield bench
        finally:
            bench.stop_all()


def versions() -> dict[str, str]:
    """tokend's, Python's and aiohttp's versions."""
    import aiohttp

    import tokend

    return {"tokend": tokend.__version__, "python": platform.python_version(),
            "aiohttp": aiohttp.__version__}


def load_rounds(args: argparse.Namespace, names: Sequence[str],
                run_one: Callable[[str, int], LoadResult],
                ) -> tuple[dict[tuple[str, int], list[LoadResult]], list[LoadResult]]:
    """``args.rounds`` sweeps: for each connection count, ``run_one(name, conns)`` for every name
    back to back. Every round of each cell, and each cell's best round by req/s."""
    rounds: dict[tuple[str, int], list[LoadResult]] = {}
    for round_no in range(args.rounds):
        for conns in args.conn_list:
            for name in names:
                print(f"load: round {round_no + 1}/{args.rounds}, {name}, {conns} connections,"
                      f" {args.duration:g} s ...", file=sys.stderr, flush=True)
                rounds.setdefault((name, conns), []).append(run_one(name, conns))
    results = [max(rounds[(name, conns)], key=lambda r: r.rps)
               for conns in args.conn_list for name in names]
    return rounds, results


# -- the report -----------------------------------------------------------------------------------


def report_head(title: str, started: str, machine: str, versions: dict[str, str]) -> list[str]:
    """The report's first lines: its title, when it started, on what, with which versions."""
    return [f"# {title}", "", f"- started {started}; {machine}",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())]


def publish(report: str, raw: dict[str, Any], json_path: Path | None) -> None:
    """Print the report; with ``--json``, write the raw figures to that file as well."""
    print(report, flush=True)
    if json_path:
        json_path.write_text(json.dumps(raw, indent=2))


def ms(us: float | None) -> str:
    return "n/a" if us is None else f"{us / 1000.0:.2f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def ratio_rows(t: LoadResult, ref: LoadResult, ref_name: str, conns: int,
               rps_goal: float, p99_goal: float) -> list[str]:
    """The goal rows comparing tokend's req/s and p99 with the reference's at ``conns``."""
    rows = []
    if ref.rps > 0:
        ratio = t.rps / ref.rps
        rows.append(f"| req/s tokend / {ref_name}, {conns} conns | {ratio:.2f} ({t.rps:,.0f} /"
                    f" {ref.rps:,.0f}) | >= {rps_goal} | {verdict(ratio >= rps_goal)} |")
    if t.p99_us and ref.p99_us:
        ratio = t.p99_us / ref.p99_us
        rows.append(f"| p99 tokend / {ref_name}, {conns} conns | {ratio:.2f} ({ms(t.p99_us)} /"
                    f" {ms(ref.p99_us)} ms) | <= {p99_goal} | {verdict(ratio <= p99_goal)} |")
    return rows


def cpu_ratios(find: Callable[[str, int], LoadResult | None], conn_list: Sequence[int],
               tokend: str, ref: str) -> list[str]:
    """``conns: ratio`` of tokend's CPU per request to the reference's, where both are known."""
    return [f"{c}: {t.cpu_us_per_req / r.cpu_us_per_req:.2f}" for c in conn_list
            if (t := find(tokend, c)) and (r := find(ref, c))
            and t.cpu_us_per_req and r.cpu_us_per_req]


def over_rounds(rounds: dict[tuple[str, int], list[LoadResult]], r: LoadResult) -> str:
    """The 'req/s over rounds' cell of ``r``'s row."""
    return " " + ", ".join(f"{x.rps:,.0f}" for x in rounds[(r.server, r.connections)]) + " |"


def json_head(versions: dict[str, str],
              rounds: dict[tuple[str, int], list[LoadResult]]) -> dict[str, Any]:
    """What every ``--json`` starts with: the command line, the versions, every round's figures."""
    return {
        "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
        "versions": versions,
        "results": [r.__dict__ for rs in rounds.values() for r in rs],
    }
