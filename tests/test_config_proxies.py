"""The ``[[proxies]]`` tables and the new ``[server]`` keys (SPEC §8, §9): defaults, and every
refusal naming its key path and the fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import write_secret
from tokend.config import PROXY_KEYS, Config, describe, load_config, parse_config
from tokend.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def pw_file(tmp_path: Path) -> Path:
    return write_secret(tmp_path / "pw", "VMware1!")


def config_text(pw_file: Path, proxies: str = "", server: str = "") -> str:
    top = ""
    if proxies.startswith("proxies = "):  # a top-level key: before the first table
        top, proxies = proxies, ""
    return f"""{top}
[server]
socket = "/run/tokend/tokend.sock"
default_target = "a"
{server}

[[targets]]
name = "a"
url = "https://a.example"
username = "u"
password_file = "{pw_file}"

[[targets]]
name = "b"
url = "https://b.example/prefix"
username = "u"
password_file = "{pw_file}"
file_sink = {{ path = "/run/tokend/b.token" }}

{proxies}
"""


def load(tmp_path: Path, pw_file: Path, proxies: str = "", server: str = "") -> Config:
    path = tmp_path / "config.toml"
    path.write_text(config_text(pw_file, proxies, server))
    path.chmod(0o600)
    return load_config(path)


def refused(tmp_path: Path, pw_file: Path, proxies: str, server: str = "") -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, pw_file, proxies, server)
    assert str(exc.value).startswith(exc.value.key + ": "), str(exc.value)
    assert exc.value.fix, "every refusal says how to fix it"
    return exc.value


def test_no_proxies_by_default(tmp_path: Path, pw_file: Path) -> None:
    config = load(tmp_path, pw_file)
    assert config.proxies == ()
    assert "proxies: none" in describe(config)


def test_a_minimal_proxy_gets_the_documented_defaults(tmp_path: Path, pw_file: Path) -> None:
    config = load(tmp_path, pw_file, '[[proxies]]\ntarget = "a"\nsocket = "/run/tokend/a.api.sock"',
                  server="allowed_uids = [7]\nallowed_gids = [8]")
    (p,) = config.proxies
    assert (p.index, p.target, p.socket) == (0, "a", Path("/run/tokend/a.api.sock"))
    assert p.socket_mode == 0o660 and p.socket_group is None and not p.socket_mode_set
    # Absent allow-lists are the [server] ones.
    assert (p.allowed_uids, p.allowed_gids) == ({7}, {8})
    assert p.listen is None and p.tls_cert_file is None and p.tls_key_file is None
    assert p.tls_names == () and p.users_file is None and p.session_key_file is None
    assert p.local_token_lifetime == 3600.0
    assert p.max_upstream_connections == 64
    assert p.response_timeout == 300.0
    assert p.key("socket") == "proxies[0].socket"


def test_a_full_proxy_is_read(tmp_path: Path, pw_file: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("tokend.example")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    config = load(tmp_path, pw_file, f"""
[[proxies]]
target = "b"
socket = "/run/tokend/b.api.sock"
socket_mode = "0600"
socket_group = "0"
allowed_uids = [1000]
allowed_gids = []
listen = "0.0.0.0:9443"
tls_cert_file = "{cert_file}"
tls_key_file = "{key_file}"
users_file = "/etc/tokend/b.htpasswd"
session_key_file = "/etc/tokend/facade.key"
local_token_lifetime = "30m"
max_upstream_connections = 8
response_timeout = "90s"

[[proxies]]
target = "a"
listen = "[::1]:9444"
users_file = "/etc/tokend/a.htpasswd"
session_key_file = "/etc/tokend/facade.key"
tls_names = ["Tokend.Automation.svc", "*.example"]
""")
    b, a = config.proxies
    assert (b.socket_mode, b.socket_group, b.socket_mode_set) == (0o600, "0", True)
    assert (b.allowed_uids, b.allowed_gids) == ({1000}, frozenset())
    assert b.listen == ("0.0.0.0", 9443)
    assert (b.tls_cert_file, b.tls_key_file) == (cert_file, key_file)
    assert b.users_file == Path("/etc/tokend/b.htpasswd")
    assert b.session_key_file == Path("/etc/tokend/facade.key")
    assert (b.local_token_lifetime, b.max_upstream_connections, b.response_timeout) == (
        1800.0, 8, 90.0)
    assert a.socket is None and a.listen == ("::1", 9444) and a.index == 1
    assert a.tls_names == ("tokend.automation.svc", "*.example")
    text = "\n".join(describe(config))
    assert "proxy for target b:" in text and "/run/tokend/b.api.sock (mode 0600, group 0)" in text
    assert "https://0.0.0.0:9443" in text and "https://[::1]:9444" in text
    assert "at most 8 connections" in text and "30m" in text


def test_server_state_dir_and_connection_limits(tmp_path: Path, pw_file: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    server = load(tmp_path, pw_file).server
    assert server.state_dir == Path("/var/lib/tokend")
    assert (server.max_connections, server.max_connections_per_uid) == (4096, 1024)
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/tokend-unit:/var/lib/other")
    assert load(tmp_path, pw_file).server.state_dir == Path("/var/lib/tokend-unit")
    server = load(tmp_path, pw_file, server='state_dir = "/srv/tokend"\nmax_connections = 50\n'
                                            "max_connections_per_uid = 5").server
    assert server.state_dir == Path("/srv/tokend")  # the file wins over the unit
    assert (server.max_connections, server.max_connections_per_uid) == (50, 5)
    text = "\n".join(describe(load(tmp_path, pw_file)))
    assert "state directory: /var/lib/tokend-unit" in text
    assert "at most 4096 on the Unix sockets together, 1024 per uid" in text


@pytest.mark.parametrize(("server", "key", "message"), [
    ("max_connections = 0", "server.max_connections", "between 1 and"),
    ('max_connections = "10"', "server.max_connections", "expected an integer"),
    ("max_connections_per_uid = -1", "server.max_connections_per_uid", "between 1 and"),
    ("max_connections = 10\nmax_connections_per_uid = 11", "server.max_connections_per_uid",
     "more than server.max_connections"),
    ('state_dir = "var/lib"', "server.state_dir", "not an absolute path"),
    ("state_dir = 1", "server.state_dir", "expected a string"),
])
def test_bad_server_settings(tmp_path: Path, pw_file: Path, server: str, key: str,
                             message: str) -> None:
    error = refused(tmp_path, pw_file, "", server)
    assert error.key == key and message in str(error), str(error)


BAD_PROXIES = [
    # (the [[proxies]] tables, the key path named, part of the message)
    ('[proxies]\ntarget = "a"', "proxies", "array of tables"),
    ("proxies = 3", "proxies", "array of tables"),
    ("proxies = [1]", "proxies[0]", "expected a table"),
    ('[[proxies]]\nsocket = "/run/a.sock"', "proxies[0].target", "missing"),
    ('[[proxies]]\ntarget = "zz"\nsocket = "/run/a.sock"', "proxies[0].target",
     "no target is named 'zz'"),
    ('[[proxies]]\ntarget = "a"\nsocket = "/run/a.sock"\n[[proxies]]\ntarget = "a"\n'
     'socket = "/run/b.sock"', "proxies[1].target", "already has a proxy (proxies[0])"),
    ('[[proxies]]\ntarget = "a"', "proxies[0].socket", "needs a socket or a listen"),
    ('[[proxies]]\ntarget = "a"\nsocket = "/run/a.sock"\n[[proxies]]\ntarget = "b"\n'
     'socket = "/run/a.sock"', "proxies[1].socket", "already proxies[0].socket"),
    ('[[proxies]]\ntarget = "a"\nsocket = "/run/tokend/tokend.sock"', "proxies[0].socket",
     "already server.socket"),
    ('[[proxies]]\ntarget = "a"\nsocket = "/run/tokend/b.token"', "proxies[0].socket",
     "already targets[1].file_sink.path"),
    ('[[proxies]]\ntarget = "a"\nsocket = "relative.sock"', "proxies[0].socket",
     "not an absolute path"),
    (f'[[proxies]]\ntarget = "a"\nsocket = "/{"x" * 120}"', "proxies[0].socket",
     "longer than 107 bytes"),
    ('[[proxies]]\ntarget = "a"\nsocket = "/run/a.sock"\nsocket_mode = "999"',
     "proxies[0].socket_mode", "octal"),
    ('[[proxies]]\ntarget = "a"\nsocket = "/run/a.sock"\nallowed_uids = ["no-such-user-x"]',
     "proxies[0].allowed_uids[0]", "no user named"),
    ('[[proxies]]\ntarget = "a"\nsocket = "/run/a.sock"\nlisten_on = "x"',
     'proxies[0].listen_on', "unknown key"),
    ('[[proxies]]\ntarget = "a"\nsocket = "/run/a.sock"\nlisten = "9443"', "proxies[0].listen",
     "not HOST:PORT"),
    ('[[proxies]]\ntarget = "a"\nlisten = "127.0.0.1:9443"\nsession_key_file = "/k"',
     "proxies[0].users_file", "required with listen"),
    ('[[proxies]]\ntarget = "a"\nlisten = "127.0.0.1:9443"\nusers_file = "/u"',
     "proxies[0].session_key_file", "required with listen"),
    ('[[proxies]]\ntarget = "a"\nlisten = "0.0.0.0:9443"\nusers_file = "/u"\n'
     'session_key_file = "/k"', "proxies[0].tls_cert_file", "not loopback (0.0.0.0)"),
    ('[[proxies]]\ntarget = "a"\nlisten = "tokend.example:9443"\nusers_file = "/u"\n'
     'session_key_file = "/k"', "proxies[0].tls_cert_file", "not loopback"),
    ('[[proxies]]\ntarget = "a"\nlisten = "127.0.0.1:9443"\nusers_file = "/u"\n'
     'session_key_file = "/k"\ntls_cert_file = "/c"', "proxies[0].tls_key_file",
     "required with tls_cert_file"),
    ('[[proxies]]\ntarget = "a"\nlisten = "127.0.0.1:9443"\nusers_file = "/u"\n'
     'session_key_file = "/k"\ntls_cert_file = "/nonexistent/c"\ntls_key_file = "/nonexistent/k"',
     "proxies[0].tls_cert_file", "no such file"),
    ('[[proxies]]\ntarget = "a"\nsocket = "/run/a.sock"\nusers_file = "/u"',
     "proxies[0].users_file", "only used with listen"),
    ('[[proxies]]\ntarget = "a"\nsocket = "/run/a.sock"\ntls_cert_file = "/c"',
     "proxies[0].tls_cert_file", "only used with listen"),
    ('[[proxies]]\ntarget = "a"\nlisten = "127.0.0.1:9443"\nusers_file = "/u"\n'
     'session_key_file = "/k"\nsocket_mode = "0600"', "proxies[0].socket_mode",
     "only used with socket"),
    ('[[proxies]]\ntarget = "a"\nlisten = "127.0.0.1:9443"\nusers_file = "/u"\n'
     'session_key_file = "/k"\ntls_names = ["bad name"]', "proxies[0].tls_names[0]",
     "not a DNS name"),
    ('[[proxies]]\ntarget = "a"\nsocket = "/run/a.sock"\nlocal_token_lifetime = "20m"',
     "proxies[0].local_token_lifetime", "at least 25m"),
    ('[[proxies]]\ntarget = "a"\nsocket = "/run/a.sock"\nlocal_token_lifetime = "48h"',
     "proxies[0].local_token_lifetime", "longer than 24h"),
    ('[[proxies]]\ntarget = "a"\nsocket = "/run/a.sock"\nmax_upstream_connections = 0',
     "proxies[0].max_upstream_connections", "between 1 and"),
    ('[[proxies]]\ntarget = "a"\nsocket = "/run/a.sock"\nmax_upstream_connections = true',
     "proxies[0].max_upstream_connections", "expected an integer"),
    ('[[proxies]]\ntarget = "a"\nsocket = "/run/a.sock"\nresponse_timeout = "0s"',
     "proxies[0].response_timeout", "longer than zero"),
    ('[[proxies]]\ntarget = "a"\nsocket = "/run/a.sock"\nresponse_timeout = "soon"',
     "proxies[0].response_timeout", "not a duration"),
]


@pytest.mark.parametrize(("proxies", "key", "message"), BAD_PROXIES)
def test_bad_proxies_name_the_key_and_the_fix(tmp_path: Path, pw_file: Path, proxies: str,
                                              key: str, message: str) -> None:
    error = refused(tmp_path, pw_file, proxies)
    assert error.key == key, str(error)
    assert message in str(error), str(error)


def test_a_non_loopback_listen_with_a_certificate_is_accepted(tmp_path: Path,
                                                              pw_file: Path) -> None:
    cert = trustme.CA().issue_cert("tokend.example")
    cert_file, key_file = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    key_file.write_text("not a key")
    error = refused(tmp_path, pw_file, f"""[[proxies]]
target = "a"
listen = "0.0.0.0:9443"
users_file = "/u"
session_key_file = "/k"
tls_cert_file = "{cert_file}"
tls_key_file = "{key_file}"
""")
    assert error.key == "proxies[0].tls_cert_file" and "do not load" in str(error)


def test_the_example_config_documents_every_proxy_key_and_its_table_loads(
        tmp_path: Path, pw_file: Path) -> None:
    text = (REPO / "config.example.toml").read_text()
    for key in PROXY_KEYS:
        assert re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", text), key
    for key in ("state_dir", "max_connections", "max_connections_per_uid"):
        assert re.search(rf"(?m)^#? ?{key} = ", text), key
    # Uncomment the example's [[proxies]] table: it is a valid proxy for the example's target.
    start = text.index("# [[proxies]]")
    block = []
    for line in text[start:].splitlines():
        if not line.startswith("# "):
            break
        block.append(line[2:])
    table = "\n".join(line for line in block if re.match(r"(\[\[proxies\]\]|[a-z_]+ = )", line))
    table = re.sub(r"(?m)^(listen|tls_\w+|users_file|session_key_file|local_token_lifetime) = .*$",
                   "", table)
    table = table.replace('target = "sfo-vcf01"', 'target = "a"')
    config = load(tmp_path, pw_file, table)
    assert config.proxies[0].target == "a" and config.proxies[0].socket is not None


# --- any table at all ---------------------------------------------------------------------------

proxy_keys = st.sampled_from([*PROXY_KEYS, "bogus"])
toml_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 100_000), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from(["a", "b", "/run/a.sock", "127.0.0.1:9443", "0.0.0.0:1",
                                           "30m", "0660", "/u", "[::1]:1"]),
    st.lists(st.integers(0, 10), max_size=3), st.lists(st.text(max_size=5), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(proxy_keys, toml_values, max_size=7))
def test_any_proxy_table_loads_or_names_a_proxies_key(table: dict[str, object]) -> None:
    table = {k: v for k, v in table.items() if v is not None}
    targets = [{"name": "a", "url": "https://a.example", "username": "u",
                "password_file": "/etc/tokend/pw"}]
    try:
        config = parse_config({"targets": targets, "proxies": [table]},
                              Path("/etc/tokend/config.toml"), file_mode=0o600)
    except ConfigError as exc:
        assert exc.key.startswith("proxies[0]"), str(exc)
        assert str(exc).startswith(exc.key + ": ")
        return
    (proxy,) = config.proxies
    assert proxy.target == "a" and (proxy.socket is not None or proxy.listen is not None)
