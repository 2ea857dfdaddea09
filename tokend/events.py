"""The log event catalogue: every event tokend logs, its level and the fields it always carries.

Every line also has ``timestamp``, ``level`` and ``event``; per-target lines have ``target``. The
README's event table is this catalogue, and a test holds the logs of a full fault scenario to it.
"""

from __future__ import annotations

from typing import NamedTuple


class Event(NamedTuple):
    """One catalogue entry."""

    levels: tuple[str, ...]
    fields: tuple[str, ...]
    meaning: str


UPSTREAM_ERROR_FIELDS = ("operation", "outcome", "errorCode", "message", "consecutive_failures",
                         "token_valid_for", "next")

CATALOGUE: dict[str, Event] = {
    "daemon.started": Event(("info",), ("version", "socket", "metrics", "targets", "proxies"),
                            "listening; keepers started. `metrics` is the address listened on,"
                            " with the port the kernel picked for port 0; `proxies` the targets"
                            " with a proxy"),
    "daemon.stopping": Event(("info",), (), "SIGTERM/SIGINT: shutting down (only after"
                             " daemon.started: a start refused by its checks logs nothing)"),
    "daemon.stopped": Event(("info",), (), "socket removed; about to exit"),
    "token.acquired": Event(("info",), ("target", "operation", "fingerprint", "expires_at",
                                        "expires_in", "next_refresh_in", "duration"),
                            "a login gave a new token"),
    "token.refreshed": Event(("info",), ("target", "operation", "fingerprint", "expires_at",
                                         "expires_in", "next_refresh_in", "duration"),
                             "the refresh token gave a new access token"),
    "token.refresh_failed": Event(("warning",), ("target", *UPSTREAM_ERROR_FIELDS),
                                  "a login or refresh failed; `next` says what tokend does next"),
    "token.refresh_requested": Event(("info",), ("target", "reason"),
                                     "a consumer's invalidate or min_ttl brought a refresh forward"),
    "token.revoked": Event(("info",), ("target", "reason"),
                           "a refresh token was revoked: at exit, or an unused session (a login"
                           " answer tokend refused)"),
    "token.refresh_deferred": Event(("info",), ("target", "reason", "in"),
                                    "a consumer's refresh waits `in` seconds for the rate limits"),
    "token.rejected_by_consumers": Event(("warning",), ("target", "reason"),
                                         "3 brand-new tokens in a row reported refused: reports"
                                         " no longer refresh until the next scheduled refresh or"
                                         " SIGHUP"),
    "token.lifetime_capped": Event(("warning",), ("target", "fingerprint", "claimed_lifetime",
                                                  "used_lifetime"),
                                   "a token claims a lifetime over max_token_lifetime: served and"
                                   " refreshed on the capped one"),
    "token.revoke_failed": Event(("warning",), ("target", "errorCode", "message"),
                                 "revoking the refresh token failed"),
    "login.rejected": Event(("error",), ("target", *UPSTREAM_ERROR_FIELDS, "rejections",
                                         "max_login_failures"),
                            "the upstream rejected the credentials (counted by the lockout guard)"),
    "target.state_changed": Event(("debug", "info", "warning"), ("target", "old", "new"),
                                  "state transition; warning into degraded, expired or"
                                  " credentials_rejected, debug for a healthy refresh"),
    "lockout.restored": Event(("info", "warning"), ("target", "rejections", "max_login_failures",
                                                    "expires_at", "action"),
                              "rejections of this secret recorded before a restart still count;"
                              " warning when they stop logins"),
    "lockout.ledger_unavailable": Event(("warning",), ("state_dir", "error", "action"),
                                        "the lockout ledger cannot be kept on disk: rejections are"
                                        " counted in memory only"),
    "lockout.ledger_replaced": Event(("warning",), ("path", "error", "action"),
                                     "a lockout ledger that cannot be read is started afresh"),
    "secret.unavailable": Event(("warning",), ("target", "key", "error", "action"),
                                "the secret source changed but cannot be read (once per change):"
                                " the secret in use is kept"),
    "secret.changed": Event(("info",), ("target", "action"),
                            "a changed secret lifted the lockout guard"),
    "consumer.denied": Event(("warning",), ("uid", "gid", "pid", "groups", "message",
                                            "remediation"),
                             "a peer outside the allow-lists (at most once per uid per minute)"),
    "consumer.connection_limit": Event(("warning",), ("uid", "pid", "message"),
                                       "a peer over the connection limits (once per uid per"
                                       " minute)"),
    "config.reloaded": Event(("info",), ("kept", "restarted", "removed"),
                             "SIGHUP applied; targets kept keep their tokens"),
    "config.reload_failed": Event(("error",), ("key", "error", "action"),
                                  "SIGHUP with a config that does not load: the old one is kept"),
    "config.restart_needed": Event(("warning",), ("reason",),
                                   "a setting changed that applies only at a restart"),
    "config.ignored": Event(("warning",), ("key", "reason"),
                            "a setting that does not apply (socket mode under socket activation)"),
    "tls.verification_disabled": Event(("warning",), ("target", "remediation"),
                                       "verify_tls = false, logged at every start"),
    "file_sink.write_failed": Event(("error",), ("target", "path", "error", "remediation"),
                                    "the token file could not be written"),
    "file_sink.remove_failed": Event(("error",), ("target", "path", "error"),
                                     "the token file could not be removed"),
    "request.malformed": Event(("debug",), ("status", "error"),
                               "a consumer's request that HTTP parsing refused (answered 4xx)"),
    "request.failed": Event(("error",), ("path",),
                            "a bug while answering a request: logged with its traceback, answered"
                            " 500"),
    "keeper.crashed": Event(("error",), ("target", "error_type"),
                            "a bug in tokend: logged with its traceback (no locals), counted as"
                            " outcome internal_error, retried after a backoff"),
    "tls.trust_reloaded": Event(("info",), ("target", "ca_file"),
                                "ca_file changed: the next upstream call uses the new trust store"),
    "daemon.open_files_limit": Event(("warning",), ("wanted", "soft", "hard"),
                                     "RLIMIT_NOFILE could not be raised to fit the connection"
                                     " limits and the proxies' pools: connections beyond it fail"),
    "proxy.started": Event(("info",), ("target", "socket"),
                           "a proxy listens (at start, or a SIGHUP added it or moved its socket)"),
    "proxy.stopped": Event(("info",), ("target", "socket"),
                           "a proxy stopped listening; its requests in flight had up to"
                           " shutdown_timeout"),
    "proxy.start_failed": Event(("error",), ("target", "key", "error"),
                                "a proxy a SIGHUP moved to a socket could not take it: it is not"
                                " served until the next SIGHUP"),
    "proxy.request": Event(("debug", "info"), ("target", "method", "path", "status", "outcome",
                                               "who", "duration"),
                           "a request on a proxy: debug, POST/PUT/PATCH/DELETE at info; `path`"
                           " is canonical, without the query; `who` is uid:N or the local user"),
    "proxy.token_refused": Event(("info",), ("target", "fingerprint", "retry"),
                                 "the upstream answered 401 Unauthorized to tokend's token: one"
                                 " refresh, however many requests saw it; `retry` if the request"
                                 " is sent again"),
    "proxy.upstream_failed": Event(("warning",), ("target", "outcome", "error"),
                                   "a forwarded request got no answer (502 or 504), at most once"
                                   " a minute per target; `suppressed` counts the others"),
    "proxy.error_withheld": Event(("warning",), ("target", "status", "reason"),
                                  "an upstream error answer tokend could not check for secrets"
                                  " (over 64 KiB, or encoded unreadably): its status is passed on"
                                  " with an Error body of tokend's"),
    "proxy.login_rejected": Event(("warning",), ("target", "address", "reason"),
                                  "a local login on a proxy's TCP listener was refused (`reason`:"
                                  " wrong_password, unknown_user, malformed); `user` is named only"
                                  " if it exists; at most once a minute per (user, address)"),
    "proxy.local_token_rejected": Event(("debug",), ("target", "typ", "reason"),
                                        "a local access or refresh token did not verify"
                                        " (`reason` in a few words, never the token)"),
    "proxy.connection_limit": Event(("warning",), ("target", "address", "message"),
                                    "a TCP peer over the connection limits (once per address per"
                                    " minute)"),
    "proxy.files_reloaded": Event(("info",), ("target", "key"),
                                  "a proxy's session key file, users file or listener certificate"
                                  " changed and is in force"),
    "proxy.files_reload_failed": Event(("error",), ("target", "key", "error", "action"),
                                       "a proxy's session key file, users file or certificate"
                                       " changed but cannot be used (once per change): the last"
                                       " good one stays"),
    "proxy.session_key_unsaved": Event(("warning",), ("target", "error", "action"),
                                       "state_dir cannot hold the generated session key: local"
                                       " tokens are signed with a key in memory, void after a"
                                       " restart"),
    "proxy.tls_generated": Event(("warning",), ("target", "ca_file", "action"),
                                 "tokend made a new CA and certificate for a proxy's TCP listener:"
                                 " consumers must trust the new proxy-ca.pem"),
    "tls.trust_reload_failed": Event(("error",), ("target", "key", "error", "action"),
                                     "ca_file changed but cannot be used: the old trust store is"
                                     " kept"),
}
