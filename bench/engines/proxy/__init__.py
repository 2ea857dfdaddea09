"""The proxy benchmark engine: tokend's ``[[proxies]]`` socket against a bare aiohttp reverse proxy
and against no proxy at all, in one run, on one machine. ``bench/proxy.py`` is its command line.

What runs (all on loopback and Unix sockets, in a temp dir that is removed at the end):

- the fake SDDC Manager, ``tokend fake-sddc --listen 127.0.0.1:0 --access-ttl 43200`` (plain HTTP,
  tokens that outlive the run, so no refresh happens while it is measured), as for the socket
  benchmark (``bench/engines/serve``);
- ``tokend run`` against it, one target, one ``[[proxies]]`` Unix socket (mode 0666) with the
  default pool of 64 upstream connections, log level info (so no line per GET);
- reference: ``bare_proxy.py`` here, an aiohttp reverse proxy of about 30 lines on a Unix socket,
  injecting the same token (read once from tokend's API socket), streaming bodies both ways in the
  same 64 KiB chunks, with a pool of the same size: the floor the framework sets for a proxy.

Measured: ``GET /v1/domains`` through tokend's proxy, through the bare proxy, and straight to the
fake over TCP (the load generator sends the token itself), at each connection count, the three
back to back: req/s, p50, p99 (autocannon through ``bench/cannon.js``, keep-alive, latencies in
microseconds), and each server's CPU per request. Then a ``PUT /v1/sink`` and a
``GET /v1/stream?bytes=N`` of ``--stream-bytes`` (1 GiB) through each path: MB/s, sha256 checked
at the other end, and the proxy's RSS sampled every 5 ms during each. Goals are printed with
PASS/FAIL; nothing asserts. See bench/README.md.
"""

from bench.engines.proxy.run import run_benchmark

__all__ = ["run_benchmark"]
