"""A target's trust store: the system CAs plus the certificates of its ``ca_file`` (SPEC §3, §8.8).

The file is read once into bytes, and the same bytes are both compared with what the current
context was built from and loaded into the new one, so a file rewritten in between cannot make
tokend trust something it did not compare. Every problem is a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

from tokend.errors import ConfigError
from tokend.statefiles import read_small_file

#: A CA bundle is a few hundred KiB at most (the whole Mozilla set is ~220 KiB).
MAX_CA_FILE_BYTES = 4 * 1024 * 1024

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_CERT_LABELS = (b"CERTIFICATE", b"X509 CERTIFICATE")
_FIX = "point it at a readable PEM file of CA certificates"


def read_ca_file(path: Path, key: str) -> bytes:
    """The bytes of the CA file at ``path``; ConfigError naming ``key`` if it cannot be read.

    Opened non-blocking and required to be a regular file, so a FIFO cannot hang the caller.
    """
    data, _ = read_small_file(path, key, max_bytes=MAX_CA_FILE_BYTES, what="", fix=_FIX)
    return data


def ca_context(pem: bytes, path: Path, key: str) -> ssl.SSLContext:
    """A client context trusting the system CAs plus the certificates in ``pem``, checking host names.

    Only ``CERTIFICATE`` blocks are loaded; text around them (bundle comments, in any encoding)
    is ignored. ``ssl.create_default_context(cafile=X)`` would trust only X, hence the two steps.
    Raises ConfigError naming ``key`` when ``pem`` holds no loadable certificate.
    """
    blocks: list[str] = []
    for match in _PEM_BLOCK.finditer(pem):
        label = match.group(1)
        if label == b"TRUSTED CERTIFICATE":
            # OpenSSL's trust settings cannot be loaded from memory; dropping them would widen trust.
            raise ConfigError(key, f"{path} holds a TRUSTED CERTIFICATE block",
                              f"convert it to a plain certificate: openssl x509 -in {path} -out ca.pem")
        if label in _CERT_LABELS and match.group(0).isascii():
            blocks.append(match.group(0).decode("ascii"))
    if not blocks:
        raise ConfigError(key, f"{path} holds no PEM certificate", _FIX)
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cadata="\n".join(blocks))
    except (ssl.SSLError, ValueError, TypeError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigError(key, f"{path} holds a certificate that cannot be loaded ({reason})",
                          _FIX) from None
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
