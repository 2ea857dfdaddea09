"""A stand-in for systemd's ``$NOTIFY_SOCKET``: records what the daemon notifies, and when."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path


class NotifyListener:
    """A datagram socket at ``path``, read by this event loop; each line kept with its arrival
    time in seconds since the listener was made. :meth:`close` before the loop ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []
        self.started = time.monotonic()
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic() - self.started, line))

    def first(self, prefix: str) -> float | None:
        """When the first line starting with ``prefix`` arrived, or None."""
        return next((t for t, line in self.messages if line.startswith(prefix)), None)

    def lines(self, prefix: str) -> list[tuple[float, str]]:
        """Every line starting with ``prefix``, with its arrival time."""
        return [(t, line) for t, line in self.messages if line.startswith(prefix)]

    def close(self) -> None:
        """Stop reading and close the socket."""
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
