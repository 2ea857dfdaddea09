"""``tokend check-config --online``: try each target's connection as tokend would, step by step.

Per target: resolve the host, connect, verify TLS exactly as the keeper's client will, log in once
with the configured credentials, and revoke the session that login opened. Each step prints one
line, ``ok`` or ``FAILED`` with what was found and what to do. The login is a real one: it counts
against the lockout guard like any of tokend's (a rejection is recorded under ``state_dir`` for the
daemon to see, and a secret already locked out is not tried), which is said before it is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp

from tokend.config import Config, TargetConfig
from tokend.errors import ConfigError, CredentialsRejected, UpstreamError
from tokend.ledger import Ledger
from tokend.logs import REDACTOR
from tokend.secrets import read_secret
from tokend.upstream import UpstreamClient
from tokend.upstream_tls import PinnedFingerprints, tls_setting
from tokend.values import format_duration, format_pin

Say = Callable[[str], None]


async def check_online(config: Config, say: Say) -> bool:
    """Run the steps for every target, printing each with ``say``; True when all passed.

    Whatever the upstream answers passes the redaction of the logs before it is printed.
    """
    ledger = Ledger.open(config.server.state_dir, time.time())
    ok = True
    for target in config.targets:
        say(f"target {target.name}:")
        ok = await _check_target(target, ledger,
                                 lambda line: say(f"  {REDACTOR.text(line)}")) and ok
    return ok


async def _check_target(target: TargetConfig, ledger: Ledger, say: Say) -> bool:
    parts = urlsplit(target.url)
    host = parts.hostname or ""
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    timeout = target.request_timeout

    try:
        infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM), timeout)
    except (OSError, TimeoutError) as exc:
        say(f"resolve {host}: FAILED: {_reason(exc)} (check the host name in url and the DNS"
            " servers of this host)")
        return False
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    say(f"resolve {host}: ok, {', '.join(addresses)}")

    started = time.monotonic()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        say(f"connect {host}:{port}: FAILED: {_reason(exc)} (a firewall or proxy between this host"
            f" and the SDDC Manager, or a wrong port; tokend gives up after request_timeout,"
            f" {format_duration(timeout)})")
        return False
    writer.close()
    say(f"connect {host}:{port}: ok, {(time.monotonic() - started) * 1000:.0f} ms")

    if tls:
        if not await _check_tls(target, host, port, say):
            return False
    else:
        say("tls: none, plain HTTP (allowed for a loopback host only)")

    return await _check_login(target, ledger, say)


async def _check_tls(target: TargetConfig, host: str, port: int, say: Say) -> bool:
    """Handshake as the keeper's client will: pins, no verification, or the CAs."""
    try:
        setting = tls_setting(target)
    except ConfigError as exc:
        say(f"tls: FAILED: {exc}")
        return False
    if isinstance(setting, ssl.SSLContext):
        context, what = setting, ("the system CAs" + (f" and {target.ca_file}" if target.ca_file
                                                     else "") + ", with host name check")
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        what = "the pins" if isinstance(setting, PinnedFingerprints) else "nothing"
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=host),
            target.request_timeout)
    except ssl.SSLCertVerificationError as exc:
        presented = await _presented(target)
        say(f"tls: FAILED: the certificate does not verify against {what}:"
            f" {exc.verify_message or exc.reason}; the server presented {presented} (if that is"
            f" the SDDC Manager's certificate: add its CA to ca_file, or pin it with"
            f' tls_fingerprint = "{presented}")')
        return False
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        say(f"tls: FAILED: handshake: {_reason(exc)}")
        return False
    sslobj = writer.get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    writer.close()
    pin = format_pin(hashlib.sha256(der).digest()) if der else "unknown"
    if isinstance(setting, PinnedFingerprints):
        if pin not in target.tls_fingerprint:
            say(f"tls: FAILED: the server presented {pin}, which is not pinned in tls_fingerprint"
                " (add it, if it is the SDDC Manager's new certificate)")
            return False
        say(f"tls: ok, leaf certificate {pin} is pinned (no chain or host name check)")
    elif setting is False:
        say(f"tls: NOT VERIFIED (verify_tls = false): the server presented {pin}; pin it with"
            f' tls_fingerprint = "{pin}"')
    else:
        say(f"tls: ok, verified against {what}; certificate {pin}")
    return True


async def _presented(target: TargetConfig) -> str:
    from tokend.upstream_tls import presented_fingerprint

    return await presented_fingerprint(target.url, target.request_timeout) or "an unreadable one"


async def _check_login(target: TargetConfig, ledger: Ledger, say: Say) -> bool:
    """One login with the configured secret, counted by the lockout guard; then revoke."""
    try:
        secret = read_secret(target.secret)
    except ConfigError as exc:
        say(f"login: FAILED: {exc}")
        return False
    REDACTOR.register(secret.reveal())
    secret_id = ledger.secret_id(secret)
    record = ledger.lookup(target.name, secret_id, time.time())
    rejections = record.rejections if record is not None else 0
    if rejections >= target.max_login_failures:
        assert record is not None
        say(f"login: not tried: this secret was rejected {rejections} time(s) (max_login_failures"
            f" is {target.max_login_failures}); the record expires at"
            f" {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(record.expires_at()))}: fix the"
            " secret first")
        return False
    who = f"user {target.username}" if target.username is not None else "the API key"
    client = UpstreamClient(target)
    try:
        try:
            issued = await client.login(target.username, secret)
            if issued.refresh_id is not None:
                REDACTOR.register(issued.refresh_id)
        except CredentialsRejected as exc:
            ledger.rejected(target.name, secret_id, rejections + 1, time.time())
            say(f"login as {who}: FAILED: rejected: {_upstream(exc)}; that is rejection"
                f" {rejections + 1} of {target.max_login_failures} for this secret before tokend"
                " stops logging in (fix the password or API key)")
            return False
        except UpstreamError as exc:
            say(f"login as {who}: FAILED: {_upstream(exc)}")
            if exc.issued_refresh_id is not None:  # the upstream took the credentials: no session
                REDACTOR.register(exc.issued_refresh_id)  # is left behind
                with contextlib.suppress(UpstreamError):
                    await client.revoke(exc.issued_refresh_id)
            return False
        ledger.clear(target.name, time.time())
        lifetime = issued.claims.exp - issued.claims.iat if issued.claims.iat is not None \
            else None
        life = f", the token lives {format_duration(max(lifetime, 0))}" if lifetime else ""
        say(f"login as {who}: ok{life}")
        if issued.refresh_id is None:
            say("revoke: nothing to revoke (the answer carried no refresh token)")
            return True
        try:
            await client.revoke(issued.refresh_id)
        except UpstreamError as exc:
            say(f"revoke the session: FAILED: {_upstream(exc)} (it expires on its own)")
            return True  # the connection and the credentials work: that is what was asked
        say("revoke the session: ok")
        return True
    finally:
        await client.close()


def _upstream(exc: UpstreamError) -> str:
    detail = exc.detail
    text = exc.message
    if detail.error_code:
        text += f": {detail.error_code}"
    if detail.message:
        text += f" {detail.message}"
    if detail.remediation_message:
        text += f" ({detail.remediation_message})"
    return text


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, aiohttp.ClientError | ssl.SSLError):
        return str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
