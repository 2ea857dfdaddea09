"""Generated TLS material for a proxy's TCP listener, checked with Python's ssl over real sockets (SPEC §9.7).

A client trusting only ``<state_dir>/proxy-ca.pem`` connects to a local TLS server using the
generated leaf. The CA's name constraints are enforced by OpenSSL's chain verification (which
Python's ssl uses): a leaf the CA signed for a name outside them is refused.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tokend.errors import ConfigError
from tokend.proxy.tlsgen import (
    LIFETIME,
    RENEW_BEFORE,
    CertReloader,
    TlsFiles,
    _make_ca,
    _make_leaf,
    ensure_material,
    generate,
    server_context,
    wanted_names,
)

NAMES = ["tokend.automation.svc"]


@asynccontextmanager
async def tls_server(context: ssl.SSLContext, host: str = "127.0.0.1") -> AsyncIterator[int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, host, 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def fetch(port: int, ca_file: Path, server_hostname: str, host: str = "127.0.0.1") -> bytes:
    """The peer certificate (DER) after a verified handshake; raises SSLCertVerificationError."""
    client = ssl.create_default_context(cafile=ca_file)
    reader, writer = await asyncio.open_connection(host, port, ssl=client,
                                                   server_hostname=server_hostname)
    try:
        assert await reader.read() == b"ok"
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert der is not None
        return bytes(der)
    finally:
        writer.close()


def made(tmp_path: Path, names: list[str] = NAMES, now: float | None = None) -> TlsFiles:
    return ensure_material(tmp_path, names, now=time.time() if now is None else now,
                           config_key="server.state_dir", names_key="proxies[0].tls_names")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


# --- What is made, and where -------------------------------------------------------------------


def test_material_is_made_under_state_dir_with_private_modes(tmp_path: Path) -> None:
    files = made(tmp_path)
    assert files.generated
    assert files.ca_file == tmp_path / "proxy-ca.pem" and mode(files.ca_file) == 0o644
    assert files.key_file.parent == tmp_path / "tokend" and mode(tmp_path / "tokend") == 0o700
    assert mode(files.key_file) == 0o600 and mode(files.cert_file) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proxy-ca.pem", "tokend"]
    assert sorted(p.name for p in (tmp_path / "tokend").iterdir()) == ["proxy.crt", "proxy.key"]


def test_ca_is_constrained_to_the_names_and_its_key_is_not_kept(tmp_path: Path) -> None:
    files = made(tmp_path)
    ca = x509.load_pem_x509_certificate(files.ca_file.read_bytes())
    ext = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert ext.critical
    assert {str(n.value) for n in ext.value.permitted_subtrees or ()} == {
        "localhost", "127.0.0.1/32", "::1/128", "tokend.automation.svc"}
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    for path in [files.ca_file, *(tmp_path / "tokend").iterdir()]:
        if b"PRIVATE KEY" in path.read_bytes():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            assert key.public_key() != ca.public_key()
            assert path == files.key_file


async def test_client_trusting_proxy_ca_connects_by_each_loopback_name(tmp_path: Path) -> None:
    files = made(tmp_path)
    async with tls_server(server_context(files.cert_file, files.key_file)) as port:
        for name in ("localhost", "127.0.0.1", "tokend.automation.svc"):
            await fetch(port, files.ca_file, name)


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_client_connects_over_ipv6_loopback(tmp_path: Path) -> None:
    files = made(tmp_path)
    async with tls_server(server_context(files.cert_file, files.key_file), host="::1") as port:
        await fetch(port, files.ca_file, "::1", host="::1")


async def test_name_not_on_the_certificate_is_refused(tmp_path: Path) -> None:
    files = made(tmp_path)
    async with tls_server(server_context(files.cert_file, files.key_file)) as port:
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            await fetch(port, files.ca_file, "other.automation.svc")


@pytest.mark.parametrize("leaf_names", [("evil.example",), ("localhost", "evil.example"),
                                        ("localhost", "10.0.0.1")])
async def test_leaf_for_a_name_outside_the_constraints_is_refused_even_if_the_ca_signed_it(
        tmp_path: Path, leaf_names: tuple[str, ...]) -> None:
    now = time.time()
    ca, ca_key = _make_ca(wanted_names(NAMES, "k"), now)
    leaf, key = _make_leaf(leaf_names, ca, ca_key, now)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "leaf.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = server_context(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    async with tls_server(context) as port:
        for name in leaf_names:
            with pytest.raises(ssl.SSLCertVerificationError, match="permitted subtree violation"):
                await fetch(port, tmp_path / "ca.pem", name)


def test_server_context_requires_tls_1_2(tmp_path: Path) -> None:
    files = made(tmp_path)
    assert server_context(files.cert_file, files.key_file).minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_client_limited_to_tls_1_1_cannot_connect(tmp_path: Path) -> None:
    files = made(tmp_path)
    client = ssl.create_default_context(cafile=files.ca_file)
    client.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    client.maximum_version = ssl.TLSVersion.TLSv1_1
    async with tls_server(server_context(files.cert_file, files.key_file)) as port:
        with pytest.raises(ssl.SSLError):
            await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="localhost")


# --- Reuse on restart --------------------------------------------------------------------------


def snapshot(tmp_path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in [tmp_path / "proxy-ca.pem", *(tmp_path / "tokend").iterdir()]}


def test_valid_material_is_reused_on_restart(tmp_path: Path) -> None:
    now = time.time()
    made(tmp_path, now=now)
    before = snapshot(tmp_path)
    again = made(tmp_path, ["Tokend.Automation.SVC."], now=now + LIFETIME - RENEW_BEFORE - 3600)
    assert not again.generated
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("names", [[], ["tokend.automation.svc", "10.1.2.3"], ["other.svc"]])
def test_changed_names_make_everything_anew(tmp_path: Path, names: list[str]) -> None:
    made(tmp_path)
    before = snapshot(tmp_path)
    assert made(tmp_path, names).generated
    after = snapshot(tmp_path)
    assert all(after[name] != before[name] for name in before)


def test_material_near_expiry_is_made_anew(tmp_path: Path) -> None:
    now = time.time()
    made(tmp_path, now=now)
    assert made(tmp_path, now=now + LIFETIME - RENEW_BEFORE + 1).generated


@pytest.mark.parametrize("damage", ["ca", "key", "cert", "swap-ca"])
def test_damaged_or_mismatched_material_is_made_anew(tmp_path: Path, damage: str) -> None:
    files = made(tmp_path)
    if damage == "ca":
        files.ca_file.unlink()
    elif damage == "key":
        files.key_file.write_bytes(generate(wanted_names(NAMES, "k"), now=time.time())[2])
    elif damage == "cert":
        files.cert_file.write_text("not a certificate")
    else:
        files.ca_file.write_bytes(generate(wanted_names(NAMES, "k"), now=time.time())[0])
    assert made(tmp_path).generated
    assert not made(tmp_path).generated


def test_without_cryptography_installed_the_extra_is_named(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography", None)
    with pytest.raises(ConfigError, match=r"pip install 'tokend\[tls\]', or set tls_cert_file"):
        made(tmp_path)
    assert not (tmp_path / "tokend").exists()


def test_private_folder_writable_by_others_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tokend").mkdir()
    os.chmod(tmp_path / "tokend", 0o757)
    with pytest.raises(ConfigError, match=r"^server.state_dir: .*writable by other users"):
        made(tmp_path)


def test_names_are_normalised_and_duplicates_dropped() -> None:
    assert wanted_names(["LOCALHOST", "0:0:0:0:0:0:0:1", "a.example.", "a.example", "10.0.0.1"],
                        "k") == ("localhost", "127.0.0.1", "::1", "a.example", "10.0.0.1")


@pytest.mark.parametrize("name", ["*.example", "bad_name", "", "-a.example", "a..example", "a" * 64])
def test_name_that_is_no_host_name_or_ip_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=r"^proxies\[0\].tls_names: .* is not a host name"):
        wanted_names([name], "proxies[0].tls_names")


# --- Certificates and keys re-read when they change ----------------------------------------------


def test_mismatched_certificate_and_key_are_refused(tmp_path: Path) -> None:
    files = made(tmp_path)
    other_key = tmp_path / "other.key"
    other_key.write_bytes(generate(wanted_names([], "k"), now=time.time())[2])
    with pytest.raises(ConfigError, match=r"^proxies\[0\].tls_cert_file: cannot load the certificate"):
        server_context(files.cert_file, other_key, config_key="proxies[0].tls_cert_file")


def replace_files(files: TlsFiles, names: list[str], stamp: int) -> bytes:
    """Write a new CA, leaf and key over ``files``; return the new leaf as DER."""
    ca_pem, cert_pem, key_pem = generate(wanted_names(names, "k"), now=time.time())
    for path, data in ((files.ca_file, ca_pem), (files.cert_file, cert_pem), (files.key_file, key_pem)):
        path.write_bytes(data)
        os.utime(path, ns=(10**18 + stamp, 10**18 + stamp))
    return x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)


async def test_new_handshakes_get_the_new_certificate_after_a_reload(tmp_path: Path) -> None:
    files = made(tmp_path)
    reloader = CertReloader(files.cert_file, files.key_file)
    (tmp_path / "old-ca.pem").write_bytes(files.ca_file.read_bytes())
    async with tls_server(reloader.context) as port:
        first = await fetch(port, files.ca_file, "localhost")
        assert reloader.reload_if_changed() is False
        new = replace_files(files, ["second.svc"], 1)
        assert await fetch(port, tmp_path / "old-ca.pem", "localhost") == first  # until reloaded
        assert reloader.reload_if_changed() is True
        # With and without SNI (Python sends none for an IP address).
        assert await fetch(port, files.ca_file, "second.svc") == new
        assert await fetch(port, files.ca_file, "127.0.0.1") == new


async def test_broken_certificate_change_keeps_the_old_one_serving_and_is_reported_once(
        tmp_path: Path) -> None:
    files = made(tmp_path)
    reloader = CertReloader(files.cert_file, files.key_file, config_key="proxies[0].tls_cert_file")
    (tmp_path / "old-ca.pem").write_bytes(files.ca_file.read_bytes())
    async with tls_server(reloader.context) as port:
        first = await fetch(port, tmp_path / "old-ca.pem", "localhost")
        # The certificate is replaced before its key: they do not match yet.
        files.cert_file.write_bytes(generate(wanted_names([], "k"), now=time.time())[1])
        with pytest.raises(ConfigError, match=r"^proxies\[0\].tls_cert_file: cannot load"):
            reloader.reload_if_changed()
        assert reloader.reload_if_changed() is False
        assert await fetch(port, tmp_path / "old-ca.pem", "localhost") == first
        new = replace_files(files, [], 2)
        assert reloader.reload_if_changed() is True
        assert await fetch(port, files.ca_file, "localhost") == new


def test_importing_the_module_loads_no_more_of_cryptography_than_pyjwt_does() -> None:
    # pyjwt imports parts of cryptography whenever it is installed (SPEC §9); tlsgen adds none.
    code = ("import sys, jwt; before = set(sys.modules); import tokend.proxy.tlsgen; "
            "assert not [m for m in set(sys.modules) - before if m.startswith('cryptography')]")
    subprocess.run([sys.executable, "-c", code], check=True)
