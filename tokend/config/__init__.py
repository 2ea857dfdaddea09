"""TOML configuration into frozen, typed objects. Every error names its key path and the fix.

One job a module: :mod:`~tokend.config.model` (the dataclasses and their defaults),
:mod:`~tokend.config.keys` (which keys each table may hold), :mod:`~tokend.config.load` (the file
and its top-level tables), :mod:`~tokend.config.target` (one ``[[targets]]`` table),
:mod:`~tokend.config.proxy` (the ``[[proxies]]`` tables) and
:mod:`~tokend.config.describe` (what ``tokend check-config`` prints). The typed values they read
(durations, modes, paths, pins) are in :mod:`tokend.values`, which the command line shares without
importing this package. The names below are the public ones.
"""

from tokend import DEFAULT_SOCKET
from tokend.config.describe import describe
from tokend.config.keys import (
    API_KEY_KEYS,
    FILE_SINK_KEYS,
    LOG_KEYS,
    METRICS_KEYS,
    PASSWORD_KEYS,
    PROXY_KEYS,
    SECRET_KEYS,
    SERVER_KEYS,
    TARGET_KEYS,
    TOP_KEYS,
)
from tokend.config.load import check_secrets, load_config, parse_config
from tokend.config.model import (
    LOG_FORMATS,
    LOG_LEVELS,
    SINK_FORMATS,
    Config,
    FileSink,
    LogConfig,
    MetricsConfig,
    PolicyConfig,
    ProxyConfig,
    ServerConfig,
    TargetConfig,
)
from tokend.values import format_duration, normalise_fingerprint, parse_duration

__all__ = [
    "API_KEY_KEYS",
    "DEFAULT_SOCKET",
    "FILE_SINK_KEYS",
    "LOG_FORMATS",
    "LOG_KEYS",
    "LOG_LEVELS",
    "METRICS_KEYS",
    "PASSWORD_KEYS",
    "PROXY_KEYS",
    "SECRET_KEYS",
    "SERVER_KEYS",
    "SINK_FORMATS",
    "TARGET_KEYS",
    "TOP_KEYS",
    "Config",
    "FileSink",
    "LogConfig",
    "MetricsConfig",
    "PolicyConfig",
    "ProxyConfig",
    "ServerConfig",
    "TargetConfig",
    "check_secrets",
    "describe",
    "format_duration",
    "load_config",
    "normalise_fingerprint",
    "parse_config",
    "parse_duration",
]
