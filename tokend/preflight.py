"""Everything ``tokend run`` refuses to start with, asked before anything is opened.

One function, :func:`preflight`, called by ``tokend check-config``, by the daemon at start, by
``tokend run --once`` and by every SIGHUP, so they cannot disagree: when ``check-config`` exits 0,
``run`` starts with that config, and a reload it would pass is not refused. It asks what the
daemon's own code asks, in the order the daemon opens things, and creates nothing:

1. every secret source reads (:func:`tokend.secrets.read_secret`);
2. the state folder is not one others could plant records in (:mod:`tokend.statefiles`);
3. each Unix socket, the API's and each proxy's, could be bound with its group
   (:func:`tokend.listen.check_socket_path`): the directory exists and is writable, no other
   file is in the way, the group exists and tokend's user may give the socket to it;
4. the metrics address, and each proxy's ``listen`` address, can be listened on;
5. each proxy's facade files load: ``session_key_file`` and ``users_file``, or the state folder
   for a generated key, and what a generated TLS certificate needs;
6. each file sink's directory is tokend's alone and its group can be given
   (:meth:`tokend.filesink.TokenFile.check`).

Some findings are not refusals, and come back as notes for ``check-config`` to print: a state
folder that cannot be created (the lockout records are then kept in memory, with a warning); a
socket a running tokend holds now (``run`` would refuse a second one; a SIGHUP to the running one
applies the config instead); and, for ``check-config`` run as root, a state folder of another
user (the service's, most likely, which may use it). For ``run``, a running tokend ends the checks
of the sockets: taking the lock then refuses, naming it, which says more than the metrics port it
also holds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tokend.config import Config, ProxyConfig, check_secrets
from tokend.filesink import TokenFile
from tokend.listen import METRICS_FIX, bind_tcp, check_socket_path, lock_is_held
from tokend.statefiles import InsecureStateDir, check_private_dir


@dataclass
class Findings:
    """What a preflight found that is not a refusal, one line each, for ``check-config``."""

    notes: list[str] = field(default_factory=list)
    live: bool = False  # a running tokend holds the API socket


def preflight(config: Config, *, start: bool = True, held: Collection[Path] = (),
              activated: Collection[str] = (), look_for_live: bool = False,
              sockets: bool = True) -> Findings:
    """Raise the ConfigError the daemon would raise with ``config``; else return the findings.

    ``start``: a fresh start (the API socket, the state folder and the metrics listener count);
    a reload leaves them out, since it keeps them as they are. ``held``: socket paths this
    daemon serves already (a reload keeps them). ``activated``: the ``FileDescriptorName=`` of
    each socket systemd passes (``""`` for the API socket's): systemd made those, not tokend.
    ``look_for_live``: ``check-config`` asks whether a tokend serves the config's sockets now
    (then the metrics address is that tokend's too, and is not tried). ``sockets``: False for
    ``run --once``, which opens no socket.
    """
    found = Findings()
    check_secrets(config)
    if start:
        reason = _private_dir(config.server.state_dir, found, look_for_live)
        if reason is not None:
            found.notes.append(f"state directory: {reason}; tokend will keep the lockout records"
                               " in memory only (a warning at start), so a restart forgets them")
    if sockets:
        _check_sockets(config, found, start=start, held=held, activated=activated,
                       look_for_live=look_for_live)
        # A reload re-reads the facade's files its own way: one that broke keeps the last good
        # version (logged), a new one is read when the reload prepares its proxy.
        for proxy in config.proxies if start else ():
            _check_facade(proxy, config.server.state_dir, found)
    for target in config.targets:
        if target.file_sink is not None:
            TokenFile(target.file_sink, target.key("file_sink")).check()
    return found


def _check_sockets(config: Config, found: Findings, *, start: bool, held: Collection[Path],
                   activated: Collection[str], look_for_live: bool) -> None:
    server = config.server
    api_activated = any(name not in {p.target for p in config.proxies} for name in activated)
    if start and not api_activated:
        found.live = lock_is_held(server.socket)
        if found.live and not look_for_live:
            return  # run: taking the lock refuses, naming the running tokend, before anything else
        if found.live:
            found.notes.append(f"socket: a running tokend serves {server.socket} now: `tokend"
                               " run` would refuse to start a second one (exit 2); send the"
                               " running one SIGHUP (systemctl reload tokend) to apply this config")
        else:
            check_socket_path(server.socket, server.socket_group, "server.socket")
    for proxy in config.proxies:
        if proxy.socket is None or proxy.socket in held or proxy.target in activated:
            continue
        if look_for_live and lock_is_held(proxy.socket):
            found.notes.append(f"{proxy.key('socket')}: a running tokend serves {proxy.socket}"
                               " now")
            continue
        check_socket_path(proxy.socket, proxy.socket_group, proxy.key("socket"))
    metrics = config.metrics
    if start and metrics.host is not None:
        if found.live:
            found.notes.append("metrics: not tried, the running tokend listens there")
        else:
            bind_tcp(metrics.host, metrics.port, "metrics.listen", fix=METRICS_FIX).close()


def _check_facade(proxy: ProxyConfig, state_dir: Path, found: Findings) -> None:
    """The files a proxy's facade reads at start, read as it reads them; its TCP address."""
    # Imported here, as the daemon does: pyjwt and bcrypt only for a config with proxies.
    from tokend.proxy.localtoken import SessionKeys
    from tokend.proxy.tlsgen import check_material
    from tokend.proxy.users import UsersFile

    if proxy.session_key_file is not None:
        SessionKeys.load(proxy.session_key_file, proxy.key("session_key_file"))
    else:
        reason = _private_dir(state_dir, found, look_for_live=True)
        if reason is not None:
            found.notes.append(f"{proxy.key('session_key_file')}: not set, and {reason}: local"
                               " tokens will be signed with a key kept in memory (a warning at"
                               " start), so a restart voids them")
    if proxy.users_file is not None:
        UsersFile.load(proxy.users_file, proxy.key("users_file"))
    if proxy.listen is None:
        return
    if proxy.tls_cert_file is None:
        with _as_root_notes(found):
            check_material(state_dir, proxy.tls_names, names_key=proxy.key("tls_names"))
    if not found.live:
        bind_tcp(*proxy.listen, proxy.key("listen")).close()


def _private_dir(state_dir: Path, found: Findings, look_for_live: bool) -> str | None:
    """:func:`check_private_dir`; for ``check-config`` run as root, a folder of another user is a
    note (it is the service's user's, most likely), not the refusal a daemon run as root meets."""
    if not look_for_live:
        return check_private_dir(state_dir)
    with _as_root_notes(found):
        return check_private_dir(state_dir)
    return None


@contextlib.contextmanager
def _as_root_notes(found: Findings) -> Iterator[None]:
    try:
        yield
    except InsecureStateDir as exc:
        if os.geteuid() != 0 or exc.owner is None or exc.owner == 0:
            raise
        found.notes.append(f"{exc.key}: {exc.problem}: checked as root; a tokend running as uid"
                           f" {exc.owner} uses it, one running as another user (root too) would"
                           " refuse it (exit 2)")


def activated_names() -> list[str]:
    """The ``FileDescriptorName=`` of each socket systemd passes this process (none: ``[]``),
    read without taking the sockets."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count_text = os.environ.get("LISTEN_FDS", "0")
    count = int(count_text) if count_text.isdigit() else 0
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    return [names[i] if i < len(names) else "" for i in range(count)]
