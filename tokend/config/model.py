"""The validated configuration: frozen dataclasses, and the one place each default is written.

The loader reads a default back as a class attribute (``TargetConfig.request_timeout``) when a
key is absent, and the refresh policy gets its settings as a :class:`PolicyConfig`, whose defaults
the target's are; so changing a default here changes it everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from tokend import DEFAULT_SOCKET, DEFAULT_STATE_DIR
from tokend.secrets import SecretSource

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["json", "console", "auto"]
SinkFormat = Literal["raw", "json"]

LOG_LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)
LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)
SINK_FORMATS: tuple[SinkFormat, ...] = get_args(SinkFormat)


@dataclass(frozen=True)
class FileSink:
    """Where a target's token is also written, atomically, for consumers that only read files."""

    path: Path
    mode: int = 0o600
    group: str | None = None
    format: SinkFormat = "raw"
    keep_on_exit: bool = False


@dataclass(frozen=True)
class PolicyConfig:
    """The settings of a target that the refresh policy needs (SPEC §3, §8.1), with their defaults."""

    refresh_at: float = 0.7
    jitter: float = 0.05
    max_backoff: float = 300.0
    max_login_failures: int = 3
    login_retry_interval: float = 60.0


@dataclass(frozen=True)
class TargetConfig:
    """One SDDC Manager and how tokend keeps its token."""

    name: str
    url: str  # normalised: no trailing slash
    username: str | None
    password: SecretSource | None  # exactly one of password / api_key
    api_key: SecretSource | None
    ca_file: Path | None = None
    tls_fingerprint: tuple[str, ...] = ()  # normalised "sha256:AB:CD:..." upper-case hex
    verify_tls: bool = True
    refresh_at: float = PolicyConfig.refresh_at
    jitter: float = PolicyConfig.jitter
    request_timeout: float = 15.0
    max_backoff: float = PolicyConfig.max_backoff
    max_login_failures: int = PolicyConfig.max_login_failures
    login_retry_interval: float = PolicyConfig.login_retry_interval
    revoke_on_exit: bool = False
    file_sink: FileSink | None = None
    max_token_lifetime: float = 7200.0  # seconds; a longer tracked lifetime is cut to it (SPEC §8.1)

    @property
    def secret(self) -> SecretSource:
        """The one secret source of this target."""
        src = self.password if self.password is not None else self.api_key
        assert src is not None
        return src

    def key(self, name: str) -> str:
        """The config key path of this target's ``name``, e.g. ``targets[1].ca_file``, for errors."""
        return f"{self.secret.key.rpartition('.')[0]}.{name}"

    def connection_key(self) -> tuple[object, ...]:
        """What must stay equal on reload for the target to keep its token and session."""
        return (self.url, self.username, self.ca_file, self.tls_fingerprint, self.verify_tls,
                self.request_timeout)

    def policy(self) -> PolicyConfig:
        """The refresh policy's view of this target's settings."""
        return PolicyConfig(refresh_at=self.refresh_at, jitter=self.jitter,
                            max_backoff=self.max_backoff,
                            max_login_failures=self.max_login_failures,
                            login_retry_interval=self.login_retry_interval)


@dataclass(frozen=True)
class ServerConfig:
    """The Unix socket consumers connect to, and who may."""

    socket: Path = Path(DEFAULT_SOCKET)
    socket_mode: int = 0o660
    socket_group: str | None = None
    allowed_uids: frozenset[int] = frozenset()
    allowed_gids: frozenset[int] = frozenset()
    default_target: str | None = None
    socket_mode_set: bool = False  # whether the file set it (a warning under socket activation)
    state_dir: Path = Path(DEFAULT_STATE_DIR)  # or $STATE_DIRECTORY under systemd (SPEC §9)
    # Open connections on all Unix sockets together, and of one uid (SPEC §8): one uid cannot starve
    # another, nor tokend of descriptors; RLIMIT_NOFILE is raised to fit them at start.
    max_connections: int = 4096
    max_connections_per_uid: int = 1024


@dataclass(frozen=True)
class ProxyConfig:
    """One ``[[proxies]]`` table: a Unix socket (and later a TCP listener) forwarding to a target.

    The allow-lists are resolved at load: absent ones are the ``[server]`` lists.
    """

    index: int  # the position in the file, for key paths (``proxies[0].socket``)
    target: str
    socket: Path | None = None
    socket_mode: int = ServerConfig.socket_mode
    socket_group: str | None = None
    allowed_uids: frozenset[int] = frozenset()
    allowed_gids: frozenset[int] = frozenset()
    listen: tuple[str, int] | None = None  # HTTPS over TCP (host, port), wired by the facade
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_names: tuple[str, ...] = ()
    users_file: Path | None = None
    session_key_file: Path | None = None
    local_token_lifetime: float = 3600.0  # at least 25 minutes
    max_upstream_connections: int = 64
    response_timeout: float = 300.0
    socket_mode_set: bool = False  # whether the file set it (a warning under socket activation)

    def key(self, name: str) -> str:
        """The config key path of this proxy's ``name``, e.g. ``proxies[0].socket``, for errors."""
        return f"proxies[{self.index}].{name}"


@dataclass(frozen=True)
class MetricsConfig:
    """The TCP listener for /metrics, /healthz and /readyz; ``None`` host means disabled."""

    host: str | None = "127.0.0.1"
    port: int = 9464


@dataclass(frozen=True)
class LogConfig:
    """Log level and rendering."""

    level: LogLevel = "info"
    format: LogFormat = "auto"


@dataclass(frozen=True)
class Config:
    """The whole, validated configuration."""

    path: Path
    targets: tuple[TargetConfig, ...]
    server: ServerConfig = field(default_factory=ServerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    proxies: tuple[ProxyConfig, ...] = ()

    @property
    def default_target(self) -> str:
        """The target `GET /v1/token` serves."""
        return self.server.default_target or self.targets[0].name

    def target(self, name: str) -> TargetConfig | None:
        """The target called ``name``, if configured."""
        return next((t for t in self.targets if t.name == name), None)
