"""sd_notify over ``$NOTIFY_SOCKET`` (READY, STATUS, STOPPING, WATCHDOG), in a few lines."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends notifications to systemd; does nothing when not run under it."""

    def __init__(self) -> None:
        address = os.environ.pop("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # the abstract namespace
        self._address = address or None
        self.watchdog_interval = _watchdog_interval()

    @property
    def enabled(self) -> bool:
        """Whether a notification socket was given."""
        return self._address is not None

    def send(self, *lines: str) -> None:
        """Send ``KEY=VALUE`` lines in one datagram; failures are ignored (best effort)."""
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self._address)
        except OSError:
            pass


def _watchdog_interval() -> float | None:
    """Half of ``WATCHDOG_USEC``, when the watchdog is meant for this process."""
    usec = os.environ.pop("WATCHDOG_USEC", "")
    pid = os.environ.pop("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
