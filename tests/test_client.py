"""The consumer client reads an answer given at accept, even when its own write fails."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from tokend.client import request
from tokend.errbody import error_body, raw_http_error


def test_client_reads_a_403_sent_at_accept_even_if_its_request_hits_a_closed_socket(
        tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    answer = raw_http_error(403, "Forbidden", error_body("FORBIDDEN", "uid 1 is not allowed"))

    def serve() -> None:
        for _ in range(20):
            conn, _ = server.accept()
            conn.sendall(answer)
            conn.close()  # before reading: the client's write then fails with EPIPE or ECONNRESET

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    for _ in range(20):
        got = request("/v1/token", method="POST", body=b"x" * 256 * 1024, sock=path, timeout=5)
        assert got.status == 403
        assert got.error.startswith("FORBIDDEN: uid 1 is not allowed")
    thread.join(5)
    server.close()
