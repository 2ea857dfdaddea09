"""Who is on the other end of a Unix-socket connection, and whether the allow-lists let them in."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Protocol

_UCRED = "iII"


@dataclass(frozen=True)
class Peer:
    """The credentials of a connected process, read once at accept."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]


def peer_of(sock: socket.socket) -> Peer:
    """SO_PEERCRED, plus supplementary groups from ``/proc/<pid>/status``."""
    # struct ucred: pid_t is signed, uid_t and gid_t are not (ids up to 2**32 - 2 exist).
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(_UCRED))
    pid, uid, gid = struct.unpack(_UCRED, raw)
    return Peer(pid, uid, gid, frozenset({gid}) | _supplementary_groups(pid))


def _supplementary_groups(pid: int) -> frozenset[int]:
    # The peer's groups at accept time; a process that exits at once leaves none to read.
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:] if g.isdigit())
    except OSError:
        pass
    return frozenset()


class AllowLists(Protocol):
    """The allow-lists of a socket: ``[server]``'s, or a proxy's."""

    @property
    def allowed_uids(self) -> frozenset[int]:
        """Uids let in."""

    @property
    def allowed_gids(self) -> frozenset[int]:
        """Groups (primary or supplementary) let in."""


def admits(lists: AllowLists, peer: Peer) -> bool:
    """Listed uid OR any listed group; both lists empty admits everyone who can open the socket."""
    if not lists.allowed_uids and not lists.allowed_gids:
        return True
    return peer.uid in lists.allowed_uids or bool(peer.groups & lists.allowed_gids)


def denial_message(peer: Peer, where: str = "server") -> tuple[str, str]:
    """The message and remediation of the 403 a denied peer gets; ``where`` holds the lists."""
    groups = ",".join(str(g) for g in sorted(peer.groups)) or str(peer.gid)
    return (f"uid {peer.uid} (groups {groups}) is not allowed to use this socket",
            f"Add {peer.uid} to {where}.allowed_uids, or one of its groups to {where}.allowed_gids,"
            " then reload tokend (SIGHUP)")
