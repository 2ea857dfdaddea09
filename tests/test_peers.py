"""Who is on the other end of the socket, and whether the allow-lists admit them (SPEC §5.6).

Pure checks of ``admits`` and ``denial_message``, and ``peer_of`` on a real socket pair, so the
rules are tested without starting the daemon (tests/e2e/test_socket_api.py does that).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterable

import pytest

from tokend.config import ServerConfig
from tokend.peers import Peer, admits, denial_message, peer_of


def server(uids: Iterable[int] = (), gids: Iterable[int] = ()) -> ServerConfig:
    return ServerConfig(allowed_uids=frozenset(uids), allowed_gids=frozenset(gids))


def peer(uid: int = 1000, gid: int = 1000, groups: set[int] | None = None) -> Peer:
    return Peer(pid=4242, uid=uid, gid=gid, groups=frozenset({gid} if groups is None else groups))


def test_empty_allow_lists_admit_everyone_who_can_open_the_socket() -> None:
    assert admits(server(), peer(uid=0, gid=0))
    assert admits(server(), peer(uid=65534, gid=65534))


@pytest.mark.parametrize(("uids", "gids", "who", "admitted"), [
    ({1000}, set(), peer(uid=1000), True),
    ({1000}, set(), peer(uid=1001, gid=1000), False),  # a gid equal to a listed uid is no uid
    (set(), {2000}, peer(uid=1000, gid=2000), True),  # the primary group
    (set(), {2000}, peer(uid=1000, gid=1000, groups={1000, 2000}), True),  # a supplementary one
    (set(), {2000}, peer(uid=2000, gid=1000), False),  # a uid equal to a listed gid is no gid
    ({1000}, {2000}, peer(uid=1001, gid=1001, groups={1001, 3000}), False),
    ({1000}, {2000}, peer(uid=1001, gid=1001, groups={1001, 2000}), True),
    (set(), {2000}, peer(uid=1000, gid=2000, groups=set()), False),  # groups are what counts
], ids=["uid", "not-uid", "primary-group", "supplementary-group", "uid-is-not-a-gid",
        "neither", "group-of-both-lists", "groups-decide"])
def test_a_listed_uid_or_any_listed_group_admits(
        uids: set[int], gids: set[int], who: Peer, admitted: bool) -> None:
    assert admits(server(uids, gids), who) is admitted


def test_denial_names_the_uid_and_every_group_and_how_to_admit_it() -> None:
    message, remediation = denial_message(peer(uid=1001, gid=1001, groups={3000, 1001, 20}))

    assert message == "uid 1001 (groups 20,1001,3000) is not allowed to use this socket"
    assert remediation == ("Add 1001 to server.allowed_uids, or one of its groups to"
                           " server.allowed_gids, then reload tokend (SIGHUP)")


def test_denial_without_groups_names_the_primary_gid() -> None:
    message, _ = denial_message(peer(uid=1001, gid=1005, groups=set()))

    assert message == "uid 1001 (groups 1005) is not allowed to use this socket"


def test_peer_of_a_socket_pair_is_this_process_with_its_groups() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        seen = peer_of(left)

    assert (seen.pid, seen.uid, seen.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert seen.groups == frozenset({os.getgid(), *os.getgroups()})


def test_peer_of_another_process_reads_its_own_ids_and_supplementary_groups() -> None:
    # A child with other ids and supplementary groups than ours when we may give it some (root).
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"\0tokend-test-peers-{os.getpid()}")
    listener.listen(1)
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import os, socket, sys\n"
         "if os.getuid() == 0:\n"
         "    os.setgroups([7001, 7002]); os.setgid(7003); os.setuid(7004)\n"
         "print(os.getpid(), os.getuid(), os.getgid(), *os.getgroups(), flush=True)\n"
         "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
         f"s.connect({listener.getsockname()!r}); sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        pid, uid, gid, *groups = (int(n) for n in child.stdout.readline().split())
        conn, _ = listener.accept()
        with conn:
            seen = peer_of(conn)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)
        listener.close()

    assert (seen.pid, seen.uid, seen.gid) == (child.pid, uid, gid) and pid == child.pid
    assert seen.groups == frozenset({gid, *groups})
    if os.getuid() == 0:
        assert seen.groups == frozenset({7001, 7002, 7003}) and seen.uid != os.getuid()


def test_a_peer_that_has_exited_has_only_its_primary_group() -> None:
    from tokend.peers import _supplementary_groups

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    assert _supplementary_groups(int(done.stdout)) == frozenset()


def connect_child(setup: str) -> tuple[Peer, subprocess.Popen[str]]:
    """``peer_of`` a child that runs ``setup`` (Python) before it connects; the child still runs."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"\0tokend-test-peers-{os.getpid()}-{id(setup)}")
    listener.listen(1)
    child = subprocess.Popen(
        [sys.executable, "-c",
         f"import os, socket, sys\n{setup}\n"
         "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
         f"s.connect({listener.getsockname()!r}); sys.stdin.read()\n"],
        stdin=subprocess.PIPE, text=True)
    try:
        conn, _ = listener.accept()
        with conn:
            return peer_of(conn), child
    finally:
        listener.close()


def finish(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    child.wait(timeout=10)


@pytest.mark.skipif(os.getuid() != 0, reason="only root can take a uid above 2**31")
def test_a_uid_and_gid_above_2_to_the_31_are_read_as_the_ids_the_allow_lists_name() -> None:
    # uid_t and gid_t are unsigned: 3000000000 is a uid the config accepts (below 2**32 - 1).
    seen, child = connect_child("os.setgroups([]); os.setgid(3000000001); os.setuid(3000000000)")
    finish(child)

    assert (seen.uid, seen.gid) == (3_000_000_000, 3_000_000_001)
    assert admits(server(uids={3_000_000_000}), seen)
    assert admits(server(gids={3_000_000_001}), seen)


def test_a_peer_whose_name_is_not_ascii_still_has_its_groups_read() -> None:
    # The Name: line of /proc/<pid>/status is the peer's own choice of bytes.
    seen, child = connect_child("open('/proc/self/comm', 'wb').write(b'w\\xffrk\\xe9r')")
    try:
        with open(f"/proc/{child.pid}/status", "rb") as status:
            assert status.readline() == b"Name:\tw\xffrk\xe9r\n"
    finally:
        finish(child)

    assert seen.groups == frozenset({os.getgid(), *os.getgroups()})
