"""TLS material for the fake SDDC Manager: a private CA and a server certificate, written to a folder.

The only user of ``cryptography`` in tokend (the ``fake`` extra); the daemon never imports it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def ensure_tls_dir(tls_dir: Path) -> ssl.SSLContext:
    """Create ``ca.pem``, ``cert.pem`` and ``key.pem`` in ``tls_dir`` unless all exist; a server context.

    The CA's private key is not kept: to issue a new certificate, delete the three files. The
    certificate names localhost, 127.0.0.1 and ::1. Raises ``OSError`` if the folder or the files
    cannot be written or read, ``ssl.SSLError`` if existing files are no matching certificate and key.
    """
    ca_path, cert_path, key_path = tls_dir / "ca.pem", tls_dir / "cert.pem", tls_dir / "key.pem"
    if not (ca_path.exists() and cert_path.exists() and key_path.exists()):
        tls_dir.mkdir(parents=True, exist_ok=True)
        ca_pem, cert_pem, key_pem = _make_tls_material()
        _write_file(key_path, key_pem, 0o600)
        _write_file(cert_path, cert_pem, 0o644)
        _write_file(ca_path, ca_pem, 0o644)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` atomically, with ``mode`` from creation (no window with wider permissions)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _make_tls_material() -> tuple[bytes, bytes, bytes]:
    """A fresh CA and a server certificate for localhost, 127.0.0.1 and ::1, as PEM bytes."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokend fake SDDC Manager CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = serialization.Encoding.PEM
    return ca_cert.public_bytes(pem), cert.public_bytes(pem), key_pem


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """``keyUsage``: a CA signs certificates and CRLs; a server's key only signs (ECDHE handshakes)."""
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )
