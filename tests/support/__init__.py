"""The test toolkit: tokend configs as data, the daemon process, its socket client, the fake
upstream, waiting with deadlines, the no-secrets check and log reading.

Tests and benchmarks import from here; ``tests/conftest.py`` holds only the fixtures built on it.

- ``config``: :func:`tokend_config` and :func:`write_config` (overrides merged by key), :func:`merge`
- ``toml``: the small TOML writer they use
- ``daemon``: :class:`Tokend`, the ``tokend run`` process (:func:`configured_tokend` writes its
  config); :func:`run_cli` for one-shot commands (:func:`cli` from async code, checked for the
  password)
  and :func:`assert_one_line_error` for how they fail
- ``client``: :class:`SocketClient` and its :class:`Answer`
- ``status``: :func:`state`, :func:`in_state` and :func:`last_error` of a running :class:`Tokend`
- ``upstream``: the fake SDDC Manager in this event loop (:func:`start_upstream`) or as a process
- ``wait``: :func:`eventually` and :func:`wait_until`
- ``leaks``: :func:`assert_no_secrets`
- ``logs``: :class:`LogFile`, a process's JSON log read as it grows
- ``net``, ``systemd``: :func:`free_port`, :class:`NotifyListener`
"""

from tests.support.client import Answer, Session, SocketClient
from tests.support.config import (
    PASSWORD,
    USER,
    merge,
    socket_of,
    tokend_config,
    write_config,
    write_secret,
    write_toml,
)
from tests.support.daemon import (
    MakeTokend,
    Tokend,
    assert_one_line_error,
    clean_env,
    cli,
    configured_tokend,
    run_cli,
    tokend_argv,
)
from tests.support.leaks import assert_no_secrets, secrets_of
from tests.support.logs import LogFile, parse_events
from tests.support.net import free_port
from tests.support.status import in_state, last_error, state
from tests.support.systemd import NotifyListener
from tests.support.upstream import (
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    TLS,
    FakeProcess,
    MakeUpstream,
    Upstream,
    start_fake_process,
    start_upstream,
)
from tests.support.wait import eventually, wait_until

__all__ = [
    "DEFAULT_PASSWORD",
    "DEFAULT_USER",
    "PASSWORD",
    "TLS",
    "USER",
    "Answer",
    "FakeProcess",
    "LogFile",
    "MakeTokend",
    "MakeUpstream",
    "NotifyListener",
    "Session",
    "SocketClient",
    "Tokend",
    "Upstream",
    "assert_no_secrets",
    "assert_one_line_error",
    "clean_env",
    "cli",
    "configured_tokend",
    "eventually",
    "free_port",
    "in_state",
    "last_error",
    "merge",
    "parse_events",
    "run_cli",
    "secrets_of",
    "socket_of",
    "start_fake_process",
    "start_upstream",
    "state",
    "tokend_argv",
    "tokend_config",
    "wait_until",
    "write_config",
    "write_secret",
    "write_toml",
]
