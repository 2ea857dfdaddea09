"""``tokend check-config`` and ``tokend run`` give the same verdict on a config: when check-config
exits 0, run starts; when it exits 2, run exits 2 with the same one line, before it opens or logs
anything (so no ``daemon.stopping`` without ``daemon.started``).

The broken configs are every refusal ``run`` has: the config file itself, the secrets, the state
folder, the API socket, each proxy's socket, the metrics listener, the file sinks. Refusals that
only a user other than root can meet (a directory root may write anyway, a group root may give
files anyway) are tested in tests/test_preflight.py.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.facade_fixtures import htpasswd, write_session_key
from tests.support import (
    PASSWORD,
    Tokend,
    assert_one_line_error,
    free_port,
    run_cli,
    tokend_argv,
    write_config,
)
from tests.support.daemon import clean_env

# Nothing listens there: a daemon with this target starts, listens, and keeps retrying.
UNREACHABLE_URL = "https://127.0.0.1:1"


@dataclass
class Case:
    """A broken config: its overrides, the key both commands must name, and what else to do to
    the work directory once the config is written."""

    overrides: dict[str, Any]
    key: str
    after: Callable[[Path], None] | None = None


def _dir(path: Path, mode: int) -> Path:
    path.mkdir()
    path.chmod(mode)  # mkdir's mode is masked by the umask
    return path


def _sink(path: Path, **extra: Any) -> dict[str, Any]:
    return {"target": {"file_sink": {"path": str(path), "mode": "0640", **extra}}}


def _facade(w: Path, stack: contextlib.ExitStack | None = None, *, key_mode: int = 0o600,
            users: str | None = None, state_dir: Path | None = None) -> dict[str, Any]:
    """A proxy with the facade's HTTPS listener on loopback (its certificate generated), with a
    session key file of ``key_mode``, a users file (valid unless ``users`` is given), on a port
    another process holds when ``stack`` is given."""
    key = write_session_key(w / "facade.key")
    key.chmod(key_mode)
    users_file = w / "users.htpasswd"
    if users is None:
        htpasswd(users_file, "automation", "Local-passw0rd")
    else:
        users_file.write_text(users)
    port = _listening(stack) if stack is not None else free_port()
    proxy = {"target": "t1", "socket": str(w / "api.sock"), "listen": f"127.0.0.1:{port}",
             "users_file": str(users_file), "session_key_file": str(key)}
    overrides: dict[str, Any] = {"proxies": [proxy]}
    if state_dir is not None:
        overrides["server"] = {"state_dir": str(state_dir)}
    return overrides


def _listening(stack: contextlib.ExitStack) -> int:
    """A port another process holds for the whole test."""
    sock = stack.enter_context(socket.socket())
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    port: int = sock.getsockname()[1]
    return port


CASES: dict[str, Callable[[Path, contextlib.ExitStack], Case]] = {
    # -- the file and its secrets
    "unknown key": lambda w, _: Case({"target": {"colour": "blue"}}, "targets[0].colour"),
    "TOML syntax error": lambda w, _: Case(
        {}, "config.toml", lambda path: path.write_text(path.read_text() + "\n[server\n")),
    "secret file missing": lambda w, _: Case(
        {"target": {"password_file": str(w / "absent")}}, "targets[0].password_file"),
    "secret file readable by others": lambda w, _: Case(
        {}, "targets[0].password_file", lambda _: (w / "password").chmod(0o644)),
    "literal password in a config others can read": lambda w, _: Case(
        {"target": {"password_file": None, "password": PASSWORD}}, "targets[0].password",
        lambda path: path.chmod(0o644)),
    # -- the API socket
    "socket directory missing (the README's minimal config)": lambda w, _: Case(
        {"server": {"socket": str(w / "absent" / "tokend.sock")}}, "server.socket"),
    "socket path is a regular file": lambda w, _: Case(
        {}, "server.socket", lambda _: (w / "tokend.sock").write_text("someone's data\n")),
    "socket_group that does not exist": lambda w, _: Case(
        {"server": {"socket_group": "nosuchgroup"}}, "server.socket_group"),
    # -- the state folder
    "state folder writable by others": lambda w, _: Case(
        {}, "server.state_dir", lambda _: _dir(w / "state" / "tokend", 0o777)),
    # -- a proxy's socket
    "proxy socket directory missing": lambda w, _: Case(
        {"proxies": [{"target": "t1", "socket": str(w / "absent" / "api.sock")}]},
        "proxies[0].socket"),
    "proxy socket path is a regular file": lambda w, _: Case(
        {"proxies": [{"target": "t1", "socket": str(w / "api.sock")}]}, "proxies[0].socket",
        lambda _: (w / "api.sock").write_text("x")),
    "proxy socket_group that does not exist": lambda w, _: Case(
        {"proxies": [{"target": "t1", "socket": str(w / "api.sock"),
                      "socket_group": "nosuchgroup"}]}, "proxies[0].socket_group"),
    # -- a proxy's facade: its files and its HTTPS listener
    "facade session key readable by others": lambda w, _: Case(
        _facade(w, key_mode=0o644), "proxies[0].session_key_file"),
    "facade users file with a password that is not bcrypt": lambda w, _: Case(
        _facade(w, users="automation:plain-text\n"), "proxies[0].users_file"),
    "facade listen port in use": lambda w, stack: Case(_facade(w, stack), "proxies[0].listen"),
    "facade certificate to generate without a state folder": lambda w, _: Case(
        _facade(w, state_dir=w / "absent"), "server.state_dir"),
    # -- the metrics listener
    "metrics port in use": lambda w, stack: Case(
        {"metrics": {"listen": f"127.0.0.1:{_listening(stack)}"}}, "metrics.listen"),
    "metrics address not on this host": lambda w, _: Case(
        {"metrics": {"listen": "192.0.2.1:9464"}}, "metrics.listen"),
    # -- file sinks
    "file_sink directory missing": lambda w, _: Case(
        _sink(w / "absent" / "t1.token"), "targets[0].file_sink.path"),
    "file_sink directory mode 0777": lambda w, _: Case(
        _sink(_dir(w / "tokens", 0o777) / "t1.token"), "targets[0].file_sink.path"),
    "file_sink directory mode 1777 (an emptyDir, /tmp)": lambda w, _: Case(
        _sink(_dir(w / "tokens", 0o1777) / "t1.token"), "targets[0].file_sink.path"),
    "file_sink group that does not exist": lambda w, _: Case(
        _sink(_dir(w / "tokens", 0o750) / "t1.token", group="nosuchgroup"),
        "targets[0].file_sink.group"),
}


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as held:
        yield held


def run_until_exit(path: Path, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """``tokend run``; fails if it is still running after ``timeout`` (it started)."""
    proc = subprocess.Popen(tokend_argv("run", "--config", str(path)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=clean_env(),
                            cwd=path.parent)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"run started with a config check-config refuses:\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("case", list(CASES))
def test_check_config_and_run_refuse_the_same_configs_with_the_same_line(
        case: str, workdir: Path, stack: contextlib.ExitStack) -> None:
    broken = CASES[case](workdir, stack)
    path = write_config(workdir, UNREACHABLE_URL, **broken.overrides)
    if broken.after is not None:
        broken.after(path)
    key = str(path) if broken.key == "config.toml" else broken.key
    files_before = sorted(p.name for p in workdir.iterdir())

    checked = run_cli("check-config", "--config", str(path))
    started = run_until_exit(path)

    assert checked.returncode == 2, (checked.stdout, checked.stderr)
    assert_one_line_error(checked.stderr, key)
    assert checked.stderr.startswith(f"tokend: {key}: "), checked.stderr
    assert (started.returncode, started.stderr) == (2, checked.stderr), started
    # Refused before anything was opened or logged.
    assert started.stdout == "", started.stdout
    assert sorted(p.name for p in workdir.iterdir()) == files_before
    assert PASSWORD not in checked.stdout + checked.stderr + started.stderr


OK_CASES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "allow-lists and socket group by name": lambda w: {"server": {
        "socket_group": _group(), "allowed_gids": [_group()], "allowed_uids": [0]}},
    "file sink in a 0750 directory, with a group": lambda w: _sink(
        _dir(w / "tokens", 0o750) / "t1.token", group=_group()),
    "metrics on a port the kernel picks": lambda w: {"metrics": {"listen": "127.0.0.1:0"}},
    "state_dir that does not exist (memory-only lockout records)": lambda w: {
        "server": {"state_dir": str(w / "absent")}},
    "a proxy socket": lambda w: {"proxies": [{"target": "t1", "socket": str(w / "api.sock")}]},
    "the facade's HTTPS listener, its certificate generated": lambda w: _facade(w),
}


def _group() -> str:
    import grp

    return grp.getgrgid(os.getgid()).gr_name


@pytest.mark.parametrize("case", list(OK_CASES))
async def test_a_config_check_config_passes_is_one_run_starts_with(
        case: str, workdir: Path, make_tokend: Callable[..., Any]) -> None:
    overrides = OK_CASES[case](workdir)
    path = write_config(workdir, UNREACHABLE_URL, **overrides)
    checked = run_cli("check-config", "--config", str(path))
    assert checked.returncode == 0, checked.stderr
    tokend: Tokend = await make_tokend(UNREACHABLE_URL, None, wait="listening", **overrides)
    started = tokend.events("daemon.started")
    assert len(started) == 1
    if case.startswith("metrics"):
        host, _, port = started[0]["metrics"].rpartition(":")
        assert host == "127.0.0.1" and port.isdigit() and int(port) > 0, started[0]
    if case.startswith("state_dir"):
        assert "in memory only" in checked.stdout
        assert tokend.events("lockout.ledger_unavailable")
    assert await tokend.stop() == 0
    stopping = [e["event"] for e in tokend.events() if e["event"].startswith("daemon.")]
    assert stopping == ["daemon.started", "daemon.stopping", "daemon.stopped"]
    # A clean exit leaves neither the socket nor its lock file.
    assert not tokend.socket.exists()
    assert not Path(f"{tokend.socket}.lock").exists()


async def test_a_live_daemon_is_the_one_difference_and_check_config_says_so(
        workdir: Path, make_tokend: Callable[..., Any]) -> None:
    """A config a running tokend serves: run refuses a second daemon, check-config (used before a
    reload) passes it and says why run would refuse."""
    port = free_port()
    tokend: Tokend = await make_tokend(UNREACHABLE_URL, None, wait="listening",
                                       metrics={"listen": f"127.0.0.1:{port}"})
    checked = run_cli("check-config", "--config", str(tokend.config_path))
    assert checked.returncode == 0, checked.stderr
    assert f"a running tokend serves {tokend.socket} now" in checked.stdout
    assert "SIGHUP" in checked.stdout
    second = run_until_exit(tokend.config_path)
    assert second.returncode == 2
    assert_one_line_error(second.stderr, "server.socket", "another tokend")
    tokend.assert_running()


def test_as_root_a_state_folder_of_another_user_is_a_note_not_a_refusal(workdir: Path) -> None:
    """The second difference, named in its note: ``sudo tokend check-config`` on a host where the
    service (user tokend) has run finds the state folder tokend's. A daemon run as root would
    refuse it; the service, as its owner, uses it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a folder to another user")
    path = write_config(workdir, UNREACHABLE_URL)
    os.chown(_dir(workdir / "state" / "tokend", 0o700), 65534, -1)
    checked = run_cli("check-config", "--config", str(path))
    assert checked.returncode == 0, checked.stderr
    assert "note: server.state_dir:" in checked.stdout and "uid 65534" in checked.stdout
    assert "checked as root" in checked.stdout
    started = run_until_exit(path)
    assert started.returncode == 2
    assert_one_line_error(started.stderr, "server.state_dir", "belongs to another user")
