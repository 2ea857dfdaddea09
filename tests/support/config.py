"""tokend configs for tests and benchmarks: built as data, overridden key by key, written as TOML.

:func:`tokend_config` is the base every end-to-end test starts from: one target ``t1`` logging in
as :data:`USER`, the socket and the password file in the work directory, debug JSON logs, a 3 s
``request_timeout`` and a 1 s ``login_retry_interval`` so failures show within a test's time.
Overrides are nested mappings merged by key (:func:`merge`), never TOML text: a test asks for
``target={"refresh_at": 0.3}`` or ``server={"allowed_uids": [0, 4242]}``, and ``None`` removes a
key (``target={"password_file": None, "password_env": "X"}``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tests.support.toml import render

USER = "administrator@vsphere.local"
PASSWORD = "Fake-Passw0rd-for-tests!"

Overrides = Mapping[str, Any]


def merge(base: Overrides, overrides: Overrides) -> dict[str, Any]:
    """``base`` with ``overrides`` applied key by key; neither argument is changed.

    A mapping merges into the mapping under the same key, recursively; ``None`` removes the key;
    anything else, lists included, replaces what was there.
    """
    out = copy.deepcopy(dict(base))
    for name, value in overrides.items():
        if value is None:
            out.pop(name, None)
        elif isinstance(value, Mapping) and isinstance(out.get(name), Mapping):
            out[name] = merge(out[name], value)
        else:
            out[name] = copy.deepcopy(value)
    return out


def tokend_config(workdir: Path, url: str, ca_pem: Path | None = None, *,
                  server: Overrides | None = None, metrics: Overrides | None = None,
                  log: Overrides | None = None, target: Overrides | None = None,
                  extra_targets: Iterable[Overrides] = (),
                  proxies: Iterable[Overrides] = ()) -> dict[str, Any]:
    """The base config for one target at ``url``, each section merged with its overrides.

    ``target`` applies to the first target, ``t1``; ``extra_targets`` are appended as given, and
    so are ``proxies`` (``[[proxies]]`` tables).
    """
    first: dict[str, Any] = {
        "name": "t1",
        "url": url,
        "username": USER,
        "password_file": str(workdir / "password"),
        "request_timeout": "3s",
        "login_retry_interval": "1s",
    }
    if ca_pem is not None:
        first["ca_file"] = str(ca_pem)
    return {
        # state_dir in the test's own folder: no test sees another's lockout records. Not the
        # folder itself: its "tokend" subfolder would shadow the package for `python -m tokend`.
        "server": merge({"socket": str(workdir / "tokend.sock"), "socket_mode": "0600",
                         "state_dir": str(state_dir(workdir))}, server or {}),
        "metrics": merge({"listen": ""}, metrics or {}),
        "log": merge({"level": "debug", "format": "json"}, log or {}),
        "targets": [merge(first, target or {}), *(dict(t) for t in extra_targets)],
        **({"proxies": [dict(p) for p in proxies]} if proxies else {}),
    }


def state_dir(workdir: Path) -> Path:
    """The test's ``[server] state_dir``, created on first use."""
    path = workdir / "state"
    path.mkdir(exist_ok=True)
    return path


def socket_of(config: Overrides) -> Path:
    """The socket path a config names."""
    return Path(config["server"]["socket"])


def write_toml(path: Path, document: Overrides, mode: int = 0o600) -> Path:
    """Write ``document`` to ``path`` as TOML and give the file ``mode``."""
    path.write_text(render(document))
    path.chmod(mode)
    return path


def write_secret(path: Path, value: str) -> Path:
    """A 0600 secret file holding ``value``, unless ``path`` exists (a test may have put its own)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return path


def write_config(workdir: Path, url: str, ca_pem: Path | None = None, *, password: str = PASSWORD,
                 mode: int = 0o600, **overrides: Any) -> Path:
    """Write ``workdir/config.toml`` (:func:`tokend_config` with ``overrides``) and the password file."""
    write_secret(workdir / "password", password)
    return write_toml(workdir / "config.toml", tokend_config(workdir, url, ca_pem, **overrides), mode)
