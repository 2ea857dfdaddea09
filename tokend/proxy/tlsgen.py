"""TLS for a proxy's TCP listener: generated material when none is configured, and the server context.

When a proxy has ``listen`` but no ``tls_cert_file``/``tls_key_file`` (allowed for a loopback
address only), tokend makes (SPEC §9, §9.7):

- a CA whose certificate is name-constrained (critical) to ``localhost``, ``127.0.0.1``, ``::1``
  and the proxy's ``tls_names``; its private key signs one certificate and is then dropped, never
  written, so the CA can vouch for nothing else;
- a leaf certificate for exactly those names, with its P-256 key, in ``<state_dir>/tokend/``
  (:data:`LEAF_CERT_NAME` and :data:`LEAF_KEY_NAME`, both 0600, in the 0700 folder);
- ``<state_dir>/proxy-ca.pem`` (0644): the CA certificate, which consumers trust.

Material is reused across restarts while the leaf verifies against ``proxy-ca.pem``, matches its
key, covers exactly the wanted names under a CA constrained to exactly them, and has more than
:data:`RENEW_BEFORE` seconds left; otherwise all three are made anew (the new CA must be trusted
again). Generating needs ``cryptography`` (the optional ``tokend[tls]`` extra), imported only here.

:func:`server_context` builds the listener's context (TLS 1.2 or later) from any certificate and key
files; :class:`CertReloader` keeps one context whose certificate follows the files as they change.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import secrets
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tokend.errors import ConfigError
from tokend.statefiles import Watched, check_private_dir, private_dir, write_atomically

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

#: Names every generated certificate covers, besides ``tls_names``.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: Validity of the generated CA and leaf, in seconds (one year).
LIFETIME = 365 * 86400
#: Material with less than this many seconds left is made anew at the next start or reload.
RENEW_BEFORE = 30 * 86400
#: The certificates are valid from this many seconds before they are made (clock skew).
BACKDATE = 3600

CA_FILE_NAME = "proxy-ca.pem"
LEAF_CERT_NAME = "proxy.crt"
LEAF_KEY_NAME = "proxy.key"

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class TlsFiles:
    """Where a listener's certificate and key are, the CA consumers trust, and whether it was just made."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    generated: bool


def wanted_names(tls_names: Iterable[str], config_key: str) -> tuple[str, ...]:
    """The loopback names plus ``tls_names``, normalised (lower case, IPs compressed), no duplicates.

    Raises ConfigError naming ``config_key`` for a name that is neither a DNS host name (no
    wildcards) nor an IP address.
    """
    names: list[str] = []
    for raw in (*LOOPBACK_NAMES, *tls_names):
        name = _normalise(raw, config_key)
        if name not in names:
            names.append(name)
    return tuple(names)


def _normalise(name: str, config_key: str) -> str:
    try:
        return ipaddress.ip_address(name).compressed
    except ValueError:
        pass
    host = name.lower().removesuffix(".")
    if not host or len(host) > 253 or not all(_LABEL.fullmatch(label) for label in host.split(".")):
        raise ConfigError(config_key, f"{name!r} is not a host name or an IP address",
                          "list DNS names (no wildcards) or IP addresses")
    return host


def ensure_material(state_dir: Path, tls_names: Iterable[str], *, now: float,
                    config_key: str = "server.state_dir",
                    names_key: str = "tls_names") -> TlsFiles:
    """The generated listener certificate under ``state_dir``, reused when still good, else made.

    ``now`` is seconds since the epoch. Raises ConfigError naming ``config_key`` when
    ``cryptography`` is missing or the state directory is unsafe or not writable, and naming
    ``names_key`` for a bad entry of ``tls_names``.
    """
    names = wanted_names(tls_names, names_key)
    _cryptography(config_key)
    directory = private_dir(state_dir, config_key)
    files = TlsFiles(cert_file=directory / LEAF_CERT_NAME, key_file=directory / LEAF_KEY_NAME,
                     ca_file=state_dir / CA_FILE_NAME, generated=False)
    if _reusable(files, names, now):
        return files
    ca_pem, cert_pem, key_pem = generate(names, now=now)
    try:
        # The leaf first: if tokend stops in between, the old CA does not verify the new leaf and
        # the next start makes everything anew.
        write_atomically(files.key_file, key_pem, 0o600)
        write_atomically(files.cert_file, cert_pem, 0o600)
        write_atomically(files.ca_file, ca_pem, 0o644)
    except OSError as exc:
        raise ConfigError(config_key, f"cannot write the proxy's TLS files in {state_dir}: "
                          f"{exc.strerror or exc}", "make it writable by tokend's user") from None
    return TlsFiles(files.cert_file, files.key_file, files.ca_file, generated=True)


def check_material(state_dir: Path, tls_names: Iterable[str], *,
                   config_key: str = "server.state_dir", names_key: str = "tls_names") -> None:
    """What :func:`ensure_material` would refuse, asked without making anything (check-config)."""
    wanted_names(tls_names, names_key)
    _cryptography(config_key)
    reason = check_private_dir(state_dir, config_key)
    if reason is not None:
        raise ConfigError(config_key, f"{reason}: the proxy's generated TLS certificate is kept"
                          " there", f"create {state_dir}, writable by tokend's user")


def generate(names: tuple[str, ...], *, now: float) -> tuple[bytes, bytes, bytes]:
    """A new name-constrained CA and a leaf for ``names``: (CA cert, leaf cert, leaf key), all PEM.

    ``names`` come from :func:`wanted_names`; ``now`` is seconds since the epoch. The CA's key is
    dropped when this returns.
    """
    from cryptography.hazmat.primitives import serialization

    ca_cert, ca_key = _make_ca(names, now)
    cert, key = _make_leaf(names, ca_cert, ca_key, now)
    return (
        ca_cert.public_bytes(serialization.Encoding.PEM),
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    )


def _cryptography(config_key: str) -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise ConfigError(config_key, "making the proxy's TLS certificate needs the 'cryptography' "
                          "package, which is not installed",
                          "pip install 'tokend[tls]', or set tls_cert_file and tls_key_file") from None


def _general_names(names: Iterable[str]) -> list[x509.GeneralName]:
    from cryptography import x509

    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _subtrees(names: Iterable[str]) -> list[x509.GeneralName]:
    from cryptography import x509

    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_network(name)))  # one address: /32 or /128
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _validity(now: float) -> tuple[datetime.datetime, datetime.datetime]:
    start = datetime.datetime.fromtimestamp(int(now) - BACKDATE, tz=datetime.UTC)
    return start, start + datetime.timedelta(seconds=BACKDATE + LIFETIME)


def _make_ca(names: tuple[str, ...], now: float) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tokend"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"tokend proxy CA {secrets.token_hex(4)}"),
    ])
    start, end = _validity(now)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.NameConstraints(permitted_subtrees=_subtrees(names),
                                            excluded_subtrees=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(names: tuple[str, ...], ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
               now: float) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(now)
    cert = (
        x509.CertificateBuilder()
        # The common name is also checked against the CA's DNS constraints: use a permitted name.
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _reusable(files: TlsFiles, names: tuple[str, ...], now: float) -> bool:
    """True when the files on disk are a matching, still-valid set for exactly ``names``."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    try:
        ca = x509.load_pem_x509_certificate(files.ca_file.read_bytes())
        cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
        key = serialization.load_pem_private_key(files.key_file.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca)
        constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        # A missing file, one that does not parse, or a leaf this CA did not sign.
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    if key.public_key().public_bytes(pem, spki) != cert.public_key().public_bytes(pem, spki):
        return False
    wanted = set(_general_names(names))
    if set(san) != wanted or set(constraints.permitted_subtrees or ()) != set(_subtrees(names)):
        return False
    if constraints.excluded_subtrees:
        return False
    for c in (ca, cert):
        if not c.not_valid_before_utc.timestamp() <= now < c.not_valid_after_utc.timestamp() - RENEW_BEFORE:
            return False
    return True


def server_context(cert_file: Path, key_file: Path, *, config_key: str = "tls_cert_file") -> ssl.SSLContext:
    """A server context for a proxy's TCP listener: TLS 1.2 or later, the given certificate and key.

    Raises ConfigError naming ``config_key`` when the files cannot be read or do not match.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(config_key, f"cannot load the certificate {cert_file} with the key "
                          f"{key_file} ({reason})",
                          "point tls_cert_file and tls_key_file at a matching PEM certificate "
                          "and unencrypted key") from None
    return context


class CertReloader:
    """One listener's TLS context, whose certificate and key follow the files when they change.

    Give :attr:`context` to the listener once. Each new handshake is switched (through the SNI
    callback, which OpenSSL runs whether or not the client sends a name) to the context built
    from the files last read successfully, so a reload never touches a context in use and a
    failed one leaves the previous certificate serving.
    """

    def __init__(self, cert_file: Path, key_file: Path, *, config_key: str = "tls_cert_file") -> None:
        """Load both files now; raises ConfigError naming ``config_key`` if they cannot be used."""
        self.cert_file = cert_file
        self.key_file = key_file
        self.config_key = config_key
        self._watch: Watched[ssl.SSLContext] = Watched(cert_file, key_file)
        self._current_context = server_context(cert_file, key_file, config_key=config_key)
        self.context = server_context(cert_file, key_file, config_key=config_key)
        self.context.sni_callback = self._select

    def _select(self, sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                context: ssl.SSLContext) -> None:
        sock.context = self._current_context

    def reload_if_changed(self) -> bool:
        """Re-read the files if either changed; True when a new certificate serves new handshakes.

        Raises ConfigError when they changed but cannot be used (say, the certificate was
        replaced before its key): the previous certificate keeps serving, and that same pair of
        versions is not reported again.
        """
        cert_file, key_file, config_key = self.cert_file, self.key_file, self.config_key
        context = self._watch.reload(lambda: server_context(cert_file, key_file, config_key=config_key))
        if context is None:
            return False
        self._current_context = context
        return True
