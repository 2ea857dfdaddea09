"""The benchmark engine: tokend's socket API against two references, in one run, on one machine.

``bench/serve.py`` is its command line.

What runs (all on loopback and Unix sockets, in a temp dir that is removed at the end):

- a fake SDDC Manager, ``tokend fake-sddc --listen 127.0.0.1:0 --access-ttl 43200`` (plain HTTP,
  long-lived tokens, so no refresh happens during the run; its default user, whose password is
  written to a 0600 file that the config names);
- ``tokend run`` against it, one target, the metrics listener on a free loopback port;
- reference (a): a bare aiohttp app on a Unix socket (``web.UnixSite``) answering the same token
  JSON bytes from memory, in a separate process (``bare_aiohttp.py`` here): the floor that the
  framework sets;
- reference (b): nginx serving the same bytes as a static file on a Unix socket, for context.

The load generator is autocannon (Node), over the Unix socket, with keep-alive connections. By
default it is driven through ``bench/cannon.js`` (the same engine, every response time kept in
microseconds, since the CLI's histogram has whole milliseconds); ``--load-generator cli`` runs the
plain CLI, ``autocannon -c N -d S -j -n -S SOCKET http://localhost/v1/token``, instead.

tokend admits a limited number of connections per uid; a run with more connections than that is
spread over several load-generator processes, each under its own uid, for all three servers alike
(so the sockets are made connectable for other uids: mode 0666 in a 0711 temp dir). Each row also
gives the server's CPU time per request, from schedstat, which moves much less than req/s when
other processes share the machine.

Also measured: ``tokend token`` wall time, idle CPU, peak RSS, start-to-ready. Goals are printed
with PASS/FAIL; nothing here asserts. See bench/README.md.
"""

from bench.engines.serve.run import run_benchmark

__all__ = ["run_benchmark"]
