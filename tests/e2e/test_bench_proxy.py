"""The proxy benchmark's servers (bench/engines/proxy) start and answer alike, without autocannon:
the fake, tokend with its proxy socket, and the bare aiohttp reverse proxy; and a small transfer
each way through tokend comes out byte-identical, as the benchmark's 1 GiB ones must."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.engines.proxy.report import TOKEND
from bench.engines.proxy.servers import PATH, start_bare_proxy, start_tokend, token_files, write_config
from bench.engines.proxy.streams import expected_digest, transfer
from bench.engines.serve.processes import Bench
from bench.engines.serve.servers import probe, start_fake

MIB = 1024 * 1024


def test_tokend_and_the_bare_proxy_forward_the_same_answer_and_bytes(workdir: Path) -> None:
    bench = Bench(argparse.Namespace(), workdir, None, None)
    try:
        _fake, url = start_fake(bench)
        config, api_sock, proxy_sock = write_config(bench, url)
        tokend = start_tokend(bench, config, api_sock, proxy_sock)
        token_file, headers_file = token_files(bench, api_sock)
        _bare, bare_sock = start_bare_proxy(bench, url, token_file)
        through_tokend = probe(proxy_sock, PATH)
        assert through_tokend.status == 200, through_tokend.body
        assert probe(bare_sock, PATH).body == through_tokend.body
        # The files the references read are for other uids too, and hold the token tokend serves.
        assert token_file.stat().st_mode & 0o777 == 0o644
        assert token_file.read_text() in headers_file.read_text()
        size = 3 * MIB + 12345  # not a multiple of any chunk size
        expected = expected_digest(size)
        for direction in ("upload", "download"):
            result = transfer(TOKEND, direction, sock=proxy_sock, base="http://localhost",
                              headers={}, size=size, expected=expected, proxy_pid=tokend.pid)
            assert result.identical, direction
            assert result.rss_growth_mb is not None and result.rss_growth_mb < 30, result
        assert tokend.stop() == 0, tokend.tail()
    finally:
        bench.stop_all()
