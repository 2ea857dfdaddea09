"""The benchmark's servers (bench/engines/serve) start and answer alike, without nginx or autocannon:
the fake, tokend under its benchmark config, and the bare aiohttp reference serving tokend's bytes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.engines.serve.processes import Bench
from bench.engines.serve.servers import (
    probe,
    start_bare_aiohttp,
    start_fake,
    start_tokend,
    write_tokend_config,
)


def test_tokend_and_the_bare_reference_serve_the_same_token_bytes(workdir: Path) -> None:
    bench = Bench(argparse.Namespace(), workdir, None, None)
    try:
        _fake, url = start_fake(bench)
        config, sock = write_tokend_config(bench, url)
        tokend, seconds = start_tokend(bench, config, sock)
        assert 0 < seconds < 60
        token = probe(sock, "/v1/token")
        assert token.status == 200, token.body
        assert json.loads(token.body)["target"] == "bench"
        body_file = workdir / "token.json"
        body_file.write_bytes(token.body)
        _bare, bare_sock = start_bare_aiohttp(bench, body_file)
        assert probe(bare_sock, "/v1/token").body == token.body
        assert sock.stat().st_mode & 0o777 == 0o666  # for load generators under other uids
        assert tokend.stop() == 0, tokend.tail()
    finally:
        bench.stop_all()
