"""How tokend's upstream connections trust a server, and what a failed TLS handshake says.

:func:`tls_setting` turns a target's ``tls_fingerprint``, ``verify_tls`` and ``ca_file`` into what
aiohttp's ``ssl=`` takes; :class:`PinnedFingerprints` accepts a leaf certificate by its pins;
:func:`presented_fingerprint` reads the certificate a server presents, for the operator's message.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from urllib.parse import urlsplit

import aiohttp

from tokend.config import TargetConfig
from tokend.errors import UpstreamDetail
from tokend.trust import ca_context, read_ca_file
from tokend.values import format_pin, pin_digest


class PinnedFingerprints(aiohttp.Fingerprint):
    """Accept a server whose leaf certificate matches any pin (a list stages a rotation)."""

    def __init__(self, pins: tuple[str, ...]) -> None:
        digests = {pin_digest(p) for p in pins}
        super().__init__(next(iter(digests)))
        self._digests = digests

    def check(self, transport: asyncio.Transport) -> None:
        """Raise ServerFingerprintMismatch unless the presented leaf is pinned."""
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is None:
            return
        der = sslobj.getpeercert(binary_form=True)
        got = hashlib.sha256(der).digest()
        if got not in self._digests:
            host, port, *_ = transport.get_extra_info("peername")
            raise aiohttp.ServerFingerprintMismatch(self.fingerprint, got, host, port)


def tls_setting(target: TargetConfig,
                ca_pem: bytes | None = None) -> ssl.SSLContext | aiohttp.Fingerprint | bool:
    """What aiohttp's ``ssl=`` gets: pins, no verification, or system CAs plus ``ca_file``.

    ``ca_pem`` is the ``ca_file`` content when the caller has read it already (read here if not).
    Raises ConfigError naming the target's ``ca_file`` key if that cannot be read or loaded.
    """
    if target.tls_fingerprint:
        return PinnedFingerprints(target.tls_fingerprint)
    if not target.verify_tls:
        return False
    if target.ca_file is None:
        return ssl.create_default_context()
    key = target.key("ca_file")
    if ca_pem is None:
        ca_pem = read_ca_file(target.ca_file, key)
    return ca_context(ca_pem, target.ca_file, key)


async def presented_fingerprint(url: str, timeout: float) -> str | None:
    """The pin (``sha256:AB:CD:...``) of the leaf certificate the server at ``url`` presents, or None.

    Connects without verification just to read it, within ``timeout`` seconds; None when the
    connection, the handshake or the certificate cannot be had. Raises nothing else.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, parts.port or 443, ssl=context, server_hostname=host),
            timeout,
        )
    except (OSError, TimeoutError, ssl.SSLError):
        return None
    try:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        return format_pin(hashlib.sha256(der).digest()) if der else None
    finally:
        writer.close()


def tls_reason(exc: BaseException) -> str:
    """Why a handshake failed, e.g. ``certificate verify failed: unable to get local issuer certificate``.

    aiohttp wraps the ``ssl`` error (``certificate_error`` for a verification failure, ``os_error``
    otherwise) and has no ``reason`` of its own.
    """
    cause = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None) or exc
    verify_message = getattr(cause, "verify_message", None)
    if verify_message:
        return f"certificate verify failed: {verify_message}"
    return str(getattr(cause, "reason", None) or type(exc).__name__)


def one_line(text: str) -> str:
    """``text`` on one line, whitespace runs collapsed, at most 300 characters."""
    return " ".join(text.split())[:300]


def tls_detail(presented: str | None) -> UpstreamDetail:
    """The Error detail of a TLS failure: how to trust the server that presented ``presented``."""
    fix = ("Trust the issuing CA with ca_file, or pin the certificate with"
           f" tls_fingerprint = \"{presented}\" once you have verified it out of band"
           if presented else "Check ca_file / tls_fingerprint and the server's certificate")
    return UpstreamDetail(error_code="TLS_ERROR", remediation_message=fix)
