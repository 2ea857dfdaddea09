"""What ``tokend check-config`` prints: what tokend would do with a config, one line per fact."""

from __future__ import annotations

from tokend.config.model import Config, ProxyConfig, TargetConfig
from tokend.values import format_duration


def describe(config: Config) -> list[str]:
    """What tokend would do with ``config``, one line per fact, for ``tokend check-config``."""
    server = config.server
    lines = [f"config: {config.path}"]
    socket_line = f"socket: {server.socket} (mode {server.socket_mode:04o}"
    socket_line += f", group {server.socket_group})" if server.socket_group else ")"
    lines.append(socket_line)
    if server.allowed_uids or server.allowed_gids:
        uids = ", ".join(str(u) for u in sorted(server.allowed_uids)) or "none"
        gids = ", ".join(str(g) for g in sorted(server.allowed_gids)) or "none"
        lines.append(f"allowed peers: uids {uids}; gids {gids} (a peer in either list is let in)")
    else:
        lines.append("allowed peers: anyone who can open the socket (allow-lists are empty)")
    lines.append(f"connections: at most {server.max_connections} on the Unix sockets together,"
                 f" {server.max_connections_per_uid} per uid")
    lines.append(f"state directory: {server.state_dir}")
    if config.metrics.host is None:
        lines.append("metrics: disabled")
    else:
        lines.append(f"metrics: http://{_host_port(config.metrics.host, config.metrics.port)}"
                     "/metrics (also /healthz, /readyz)")
    lines.append(f"log: level {config.log.level}, format {config.log.format}")
    lines.append(f"default target: {config.default_target}")
    for t in config.targets:
        lines.append(f"target {t.name}:")
        lines.extend(f"  {line}" for line in _describe_target(t))
    if not config.proxies:
        lines.append("proxies: none")
    for proxy in config.proxies:
        lines.append(f"proxy for target {proxy.target}:")
        lines.extend(f"  {line}" for line in _describe_proxy(proxy, config))
    return lines


def _describe_proxy(p: ProxyConfig, config: Config) -> list[str]:
    lines = []
    if p.socket is not None:
        group = f", group {p.socket_group}" if p.socket_group else ""
        lines.append(f"socket: {p.socket} (mode {p.socket_mode:04o}{group}); forwards any"
                     " SDDC Manager API call with tokend's token")
        if (p.allowed_uids, p.allowed_gids) == (config.server.allowed_uids,
                                                config.server.allowed_gids):
            whose = " (the [server] lists)"
        else:
            whose = ""
        if p.allowed_uids or p.allowed_gids:
            uids = ", ".join(str(u) for u in sorted(p.allowed_uids)) or "none"
            gids = ", ".join(str(g) for g in sorted(p.allowed_gids)) or "none"
            lines.append(f"allowed peers: uids {uids}; gids {gids}{whose}")
        else:
            lines.append(f"allowed peers: anyone who can open the socket{whose}")
    if p.listen is not None:
        tls = (f"certificate {p.tls_cert_file}, key {p.tls_key_file}" if p.tls_cert_file
               else "a certificate tokend generates under the state directory"
               + (f" (also for {', '.join(p.tls_names)})" if p.tls_names else ""))
        lines.append(f"listen: https://{_host_port(*p.listen)} ({tls}); logins against"
                     f" {p.users_file}")
    key = p.session_key_file or "a key tokend generates under the state directory"
    lines.append(f"local tokens: signed with {key}, access tokens live"
                 f" {format_duration(p.local_token_lifetime)}")
    lines.append(f"upstream: at most {p.max_upstream_connections} connections; response headers"
                 f" within {format_duration(p.response_timeout)}")
    return lines


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _describe_target(t: TargetConfig) -> list[str]:
    lines = [f"url: {t.url}"]
    if t.password is not None:
        lines.append(f"auth: user {t.username} with the password from "
                     f"{t.password.describe()} ({t.password.key.rpartition('.')[2]})")
    else:
        src = t.secret
        lines.append(f"auth: API key from {src.describe()} ({src.key.rpartition('.')[2]})")
    lines.append(f"tls: {_describe_tls(t)}")
    lines.append(f"refresh: at {t.refresh_at * 100:g}% ± {t.jitter * 100:g}% of the token lifetime")
    lines.append(f"token lifetime: at most {format_duration(t.max_token_lifetime)} is trusted; a"
                 " longer one is cut to it (max_token_lifetime)")
    lines.append(
        f"timeouts: request {format_duration(t.request_timeout)}, "
        f"backoff up to {format_duration(t.max_backoff)}"
    )
    lines.append(
        f"lockout guard: logins stop after {t.max_login_failures} rejection(s) of the same "
        f"secret, at least {format_duration(t.login_retry_interval)} apart"
    )
    lines.append("on exit: " + ("revoke the refresh token" if t.revoke_on_exit
                                else "keep the refresh token (no revoke)"))
    if t.file_sink is None:
        lines.append("file sink: none")
    else:
        sink = t.file_sink
        group = f", group {sink.group}" if sink.group else ""
        keep = "kept" if sink.keep_on_exit else "removed"
        lines.append(f"file sink: {sink.path} (mode {sink.mode:04o}{group}, format {sink.format}, "
                     f"{keep} on exit)")
    return lines


def _describe_tls(t: TargetConfig) -> str:
    """Exactly what is verified on the connection to ``t``, in the order the client decides it."""
    if t.url.startswith("http://"):
        unused = [name for name, set_ in (("ca_file", t.ca_file is not None),
                                          ("tls_fingerprint", bool(t.tls_fingerprint)),
                                          ("verify_tls", not t.verify_tls)) if set_]
        note = f" ({', '.join(unused)} not used)" if unused else ""
        return f"plain HTTP, no TLS (loopback only){note}"
    if t.tls_fingerprint:
        # aiohttp checks a pin instead of the chain and the host name, never in addition.
        return (f"leaf certificate pinned to {', '.join(t.tls_fingerprint)}, no chain verification,"
                " no hostname check")
    if not t.verify_tls:
        return ("certificate verification OFF (verify_tls = false): any certificate is accepted,"
                " no hostname check")
    if t.ca_file is not None:
        return (f"verify against the system CAs and the CA file {t.ca_file} (re-read when it"
                " changes), with hostname check")
    return "verify against the system CAs, with hostname check"
