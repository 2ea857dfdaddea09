"""Local tokens (SPEC §9.3): issued, verified against an injected clock, refused for every broken rule.

No test sleeps: ``now`` is a number chosen by the test. Tokens that tokend would never issue are
forged with pyjwt and a known session key.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import jwt
import pytest

from tokend.errors import ConfigError
from tokend.proxy.localtoken import (
    CLAIMS,
    LEEWAY,
    MAX_TOKEN_BYTES,
    REFRESH_LIFETIME,
    LocalClaims,
    LocalTokenRejected,
    RevokedIds,
    SessionKey,
    SessionKeys,
    issue,
    private_dir,
    verify,
    write_atomically,
)

NOW = 1_795_845_600
SECRET = bytes(range(32))
OTHER = bytes(range(100, 132))
KEY = SessionKey.from_secret(SECRET)
KEYS = SessionKeys([KEY])
TARGET = "sfo-vcf01"


def b64(secret: bytes) -> str:
    return base64.b64encode(secret).decode()


_rewrites = [0]


def rewrite(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace the file (new inode, distinct mtime), as an operator or a Secret volume would."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    _rewrites[0] += 1
    os.utime(path, ns=(NOW * 10**9 + _rewrites[0],) * 2)


def key_file(tmp_path: Path, *lines: str, mode: int = 0o600) -> Path:
    path = tmp_path / "facade.key"
    rewrite(path, "".join(line + "\n" for line in lines), mode)
    return path


def claims(**changes: Any) -> dict[str, Any]:
    base = {"iss": "tokend", "aud": TARGET, "sub": "alice", "iat": NOW, "exp": NOW + 3600,
            "jti": "j1", "kid": KEY.kid, "typ": "access", "via": "tcp", "uh": "ab" * 16}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def forge(payload: dict[str, Any], *, secret: bytes | str = SECRET, alg: str = "HS256",
          kid: str | None = KEY.kid) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, secret, algorithm=alg, headers=headers)


def rejected(token: str, *, typ: Any = "access", via: Any = "tcp", now: float = NOW,
             keys: SessionKeys = KEYS) -> str:
    with pytest.raises(LocalTokenRejected) as info:
        verify(keys, token, target=TARGET, typ=typ, via=via, now=now)
    return info.value.reason


def tcp_access(**kwargs: Any) -> str:
    args: dict[str, Any] = {"target": TARGET, "sub": "alice", "via": "tcp", "typ": "access",
                            "uh": "ab" * 16, "lifetime": 3600, "now": NOW + 0.7}
    args.update(kwargs)
    return issue(KEYS, **args)


# --- Issuing and verifying ---------------------------------------------------------------------


def test_issued_access_token_verifies_with_every_claim() -> None:
    token = tcp_access()
    got = verify(KEYS, token, target=TARGET, typ="access", via="tcp", now=NOW + 10)
    assert got == LocalClaims(sub="alice", aud=TARGET, iat=NOW, exp=NOW + 3600, jti=got.jti,
                              kid=KEY.kid, typ="access", via="tcp", uh="ab" * 16)
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) == set(CLAIMS)
    assert payload["iss"] == "tokend"
    assert type(payload["exp"]) is int and type(payload["iat"]) is int
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT", "kid": KEY.kid}


def test_every_token_has_its_own_jti() -> None:
    assert len({verify(KEYS, tcp_access(), target=TARGET, typ="access", via="tcp", now=NOW).jti
                for _ in range(20)}) == 20


def test_refresh_id_lives_a_day_and_carries_the_unix_peer() -> None:
    token = issue(KEYS, target=TARGET, sub="uid:1000", via="unix", typ="refresh", uh="",
                  lifetime=REFRESH_LIFETIME, now=NOW)
    got = verify(KEYS, token, target=TARGET, typ="refresh", via="unix", now=NOW + REFRESH_LIFETIME)
    assert (got.sub, got.exp - got.iat, got.uh) == ("uid:1000", 86400, "")


def test_each_endpoint_accepts_only_its_own_token_type() -> None:
    refresh = tcp_access(typ="refresh")
    assert rejected(refresh, typ="access") == "not an access token"
    assert rejected(tcp_access(), typ="refresh") == "not a refresh token"


def test_tcp_listener_refuses_tokens_issued_on_a_unix_socket_and_back() -> None:
    assert "another listener" in rejected(tcp_access(via="unix"), via="tcp")
    assert "another listener" in rejected(tcp_access(via="tcp"), via="unix")


def test_token_for_another_target_is_refused() -> None:
    assert rejected(tcp_access(target="lax-vcf01")) == "wrong audience"


def test_audience_given_as_a_list_is_refused_even_if_it_names_the_target() -> None:
    assert rejected(forge(claims(aud=[TARGET]))) == "claim aud is not a string"


def test_token_from_another_issuer_is_refused() -> None:
    assert rejected(forge(claims(iss="sddc-manager"))) == "wrong issuer"


def test_expiry_allows_sixty_seconds_of_clock_slack_and_no_more() -> None:
    token = tcp_access(lifetime=1500)
    verify(KEYS, token, target=TARGET, typ="access", via="tcp", now=NOW + 1500 + LEEWAY)
    assert rejected(token, now=NOW + 1500 + LEEWAY + 1) == "expired"


def test_token_issued_in_the_future_beyond_the_slack_is_refused() -> None:
    verify(KEYS, tcp_access(now=NOW + LEEWAY), target=TARGET, typ="access", via="tcp", now=NOW)
    assert rejected(tcp_access(now=NOW + LEEWAY + 1)) == "issued in the future"


@pytest.mark.parametrize("claim", CLAIMS)
def test_token_missing_any_claim_is_refused(claim: str) -> None:
    assert rejected(forge(claims(**{claim: ...}))) == f"missing claim {claim}"


@pytest.mark.parametrize(("claim", "value"), [
    ("exp", float(NOW + 3600)), ("exp", str(NOW + 3600)), ("exp", True), ("iat", "now"),
    ("sub", 7), ("jti", 1), ("typ", ["access"]), ("uh", 1), ("kid", 0),
])
def test_claim_of_the_wrong_type_is_refused(claim: str, value: Any) -> None:
    assert rejected(forge(claims(**{claim: value}))).startswith(f"claim {claim} is not")


@pytest.mark.parametrize("claim", ["iat", "jti", "kid", "uh"])
def test_null_claim_counts_as_missing(claim: str) -> None:
    assert rejected(forge(claims(**{claim: None}))) == f"missing claim {claim}"


def test_empty_subject_is_refused() -> None:
    assert rejected(forge(claims(sub=""))) == "empty sub or jti"


def test_unsigned_token_is_refused() -> None:
    assert rejected(forge(claims(), alg="none", secret="")) == "wrong algorithm"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_token_signed_with_another_algorithm_is_refused_even_with_the_right_key(alg: str) -> None:
    assert rejected(forge(claims(), alg=alg)) == "wrong algorithm"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_header_claiming_hs256_over_another_signature_is_refused() -> None:
    header, payload, _ = forge(claims()).split(".")
    _, _, signature = forge(claims(), alg="HS512").split(".")
    assert rejected(f"{header}.{payload}.{signature}") == "bad signature"


def test_changed_payload_breaks_the_signature() -> None:
    header, _, signature = tcp_access().split(".")
    _, payload, _ = forge(claims(sub="admin")).split(".")
    assert rejected(f"{header}.{payload}.{signature}") == "bad signature"


def test_token_signed_with_an_unknown_key_is_refused() -> None:
    assert rejected(forge(claims(), secret=OTHER)) == "bad signature"
    assert rejected(forge(claims(), kid="0123456789abcdef")) == "unknown key id"
    assert rejected(forge(claims(), kid=None)) == "unknown key id"


def test_key_id_in_the_claims_must_match_the_header() -> None:
    other = SessionKey.from_secret(OTHER)
    keys = SessionKeys([KEY, other])
    assert rejected(forge(claims(kid=other.kid)), keys=keys) == "key id differs from the header's"


def test_token_over_four_kib_is_refused_before_parsing() -> None:
    token = forge(claims(sub="a" * MAX_TOKEN_BYTES))
    assert rejected(token) == "too long or not ASCII"
    assert rejected("é" + tcp_access()[1:]) == "too long or not ASCII"


@pytest.mark.parametrize("junk", ["", "abc", "a.b.c", "eyJhbGciOiJIUzI1NiJ9..", "...."])
def test_text_that_is_no_jwt_is_refused(junk: str) -> None:
    with pytest.raises(LocalTokenRejected):
        verify(KEYS, junk, target=TARGET, typ="access", via="tcp", now=NOW)


def test_issuing_refuses_what_could_never_verify() -> None:
    with pytest.raises(ValueError, match="longer than"):
        tcp_access(sub="a" * MAX_TOKEN_BYTES)
    with pytest.raises(ValueError, match="unknown via"):
        tcp_access(via="http")
    with pytest.raises(ValueError, match="at least one second"):
        tcp_access(lifetime=0.5)


# --- Session keys ------------------------------------------------------------------------------


def test_first_key_signs_and_every_key_verifies(tmp_path: Path) -> None:
    old = key_file(tmp_path, b64(SECRET))
    keys = SessionKeys.load(old, "proxies[0].session_key_file")
    before = issue(keys, target=TARGET, sub="alice", via="tcp", typ="access", uh="", lifetime=3600,
                   now=NOW)
    rewrite(old, f"# rotation under way\n\n{b64(OTHER)}\n{b64(SECRET)}\n")
    assert keys.reload_if_changed() is True
    assert keys.kids == (SessionKey.from_secret(OTHER).kid, KEY.kid)
    after = issue(keys, target=TARGET, sub="alice", via="tcp", typ="access", uh="", lifetime=3600,
                  now=NOW)
    assert jwt.get_unverified_header(after)["kid"] == SessionKey.from_secret(OTHER).kid
    for token in (before, after):
        verify(keys, token, target=TARGET, typ="access", via="tcp", now=NOW)
    rewrite(old, b64(OTHER))
    assert keys.reload_if_changed() is True
    assert rejected(before, keys=keys) == "unknown key id"


def test_unchanged_key_file_is_not_read_again(tmp_path: Path) -> None:
    keys = SessionKeys.load(key_file(tmp_path, b64(SECRET)), "k")
    assert keys.reload_if_changed() is False


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_key_file_readable_or_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = key_file(tmp_path, b64(SECRET), mode=mode)
    with pytest.raises(ConfigError, match=f"accessible to other users .mode {mode:04o}") as info:
        SessionKeys.load(path, "proxies[0].session_key_file")
    assert str(info.value).startswith("proxies[0].session_key_file: ")
    assert f"chmod 600 {path}" in str(info.value)


def test_key_file_mode_0400_is_accepted(tmp_path: Path) -> None:
    assert SessionKeys.load(key_file(tmp_path, b64(SECRET), mode=0o400), "k").signing == KEY


def test_key_shorter_than_32_bytes_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = key_file(tmp_path, b64(SECRET), "", b64(SECRET[:31]))
    with pytest.raises(ConfigError, match=r"line 3: the key is 31 bytes, at least 32") as info:
        SessionKeys.load(path, "k")
    assert b64(SECRET[:31]) not in str(info.value)


@pytest.mark.parametrize("line", ["not base64!", "-_" * 22, SECRET.hex()[:63]])
def test_key_that_is_not_standard_base64_is_refused(tmp_path: Path, line: str) -> None:
    with pytest.raises(ConfigError, match="line 1: not standard base64"):
        SessionKeys.load(key_file(tmp_path, line), "k")


def test_key_file_without_a_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no session key"):
        SessionKeys.load(key_file(tmp_path, "# nothing yet", ""), "k")


def test_missing_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read session key file"):
        SessionKeys.load(tmp_path / "absent", "k")


def test_broken_key_file_keeps_the_old_keys_and_is_reported_once(tmp_path: Path) -> None:
    path = key_file(tmp_path, b64(SECRET))
    keys = SessionKeys.load(path, "k")
    rewrite(path, b64(OTHER), mode=0o644)
    with pytest.raises(ConfigError, match="accessible to other users"):
        keys.reload_if_changed()
    assert keys.reload_if_changed() is False
    assert keys.signing == KEY
    rewrite(path, b64(OTHER))
    assert keys.reload_if_changed() is True
    assert keys.signing == SessionKey.from_secret(OTHER)


def test_key_file_removed_then_restored_is_reported_then_read(tmp_path: Path) -> None:
    path = key_file(tmp_path, b64(SECRET))
    keys = SessionKeys.load(path, "k")
    path.unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        keys.reload_if_changed()
    assert keys.reload_if_changed() is False
    rewrite(path, b64(OTHER))
    assert keys.reload_if_changed() is True


def test_generated_key_is_private_and_kept_across_restarts(tmp_path: Path) -> None:
    first = SessionKeys.generate(tmp_path)
    folder = tmp_path / "tokend"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    path = folder / "facade.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.b64decode(path.read_text().strip())) == 32
    assert SessionKeys.generate(tmp_path).signing == first.signing
    assert sorted(p.name for p in folder.iterdir()) == ["facade.key"]


def test_generated_key_goes_into_a_folder_not_writable_by_others(tmp_path: Path) -> None:
    folder = tmp_path / "tokend"
    folder.mkdir()
    os.chmod(folder, 0o777)
    with pytest.raises(ConfigError, match=r"server.state_dir: .* is writable by other users"):
        SessionKeys.generate(tmp_path)


def test_private_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "tokend"
    folder.mkdir(mode=0o700)
    os.chown(folder, os.geteuid() + 1, -1)
    with pytest.raises(ConfigError, match="belongs to another user"):
        private_dir(tmp_path)


def test_group_writable_private_folder_is_accepted(tmp_path: Path) -> None:
    # An emptyDir with fsGroup makes folders group-writable; SPEC §9 refuses only "others".
    folder = tmp_path / "tokend"
    folder.mkdir()
    os.chmod(folder, 0o2770)
    assert private_dir(tmp_path) == folder


def test_missing_state_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot create .*tokend"):
        SessionKeys.generate(tmp_path / "absent", "server.state_dir")


def test_world_writable_state_dir_is_fine_because_the_private_folder_is_ours(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o1777)
    SessionKeys.generate(tmp_path)
    assert stat.S_IMODE((tmp_path / "tokend").stat().st_mode) == 0o700


def test_exclusive_write_keeps_the_file_another_process_wrote(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert write_atomically(path, b"mine", 0o600, exclusive=True) is True
    assert write_atomically(path, b"theirs", 0o600, exclusive=True) is False
    assert path.read_bytes() == b"mine"
    assert write_atomically(path, b"new", 0o644) is True
    assert (path.read_bytes(), stat.S_IMODE(path.stat().st_mode)) == (b"new", 0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


# --- Revoked refresh ids -----------------------------------------------------------------------


def refresh_claims(jti: str, exp: int) -> LocalClaims:
    return LocalClaims(sub="alice", aud=TARGET, iat=exp - REFRESH_LIFETIME, exp=exp, jti=jti,
                       kid=KEY.kid, typ="refresh", via="tcp", uh="")


def test_revoked_id_stays_revoked_until_its_token_could_no_longer_verify() -> None:
    revoked = RevokedIds()
    revoked.revoke(refresh_claims("r1", NOW + 100), now=NOW)
    assert revoked.is_revoked("r1", now=NOW + 100 + LEEWAY)
    assert not revoked.is_revoked("r2", now=NOW)
    assert not revoked.is_revoked("r1", now=NOW + 100 + LEEWAY + 1)
    assert len(revoked) == 0


def test_revoking_an_expired_id_remembers_nothing() -> None:
    revoked = RevokedIds()
    revoked.revoke(refresh_claims("r1", NOW - LEEWAY - 1), now=NOW)
    assert len(revoked) == 0


def test_revoked_ids_are_bounded_dropping_the_soonest_to_expire() -> None:
    revoked = RevokedIds(max_entries=3)
    for n, exp in enumerate([NOW + 500, NOW + 100, NOW + 300, NOW + 400]):
        revoked.revoke(refresh_claims(f"r{n}", exp), now=NOW)
    assert len(revoked) == 3
    assert [revoked.is_revoked(f"r{n}", now=NOW) for n in range(4)] == [True, False, True, True]


def test_revoking_twice_keeps_one_entry() -> None:
    revoked = RevokedIds()
    for _ in range(3):
        revoked.revoke(refresh_claims("r1", NOW + 100), now=NOW)
    assert len(revoked) == 1


def test_key_file_on_a_kubernetes_secret_volume_gets_the_copy_fix(tmp_path: Path) -> None:
    """A Secret volume with fsGroup is group-readable whatever defaultMode says: chmod cannot fix
    it, an init container's copy can."""
    stamp = tmp_path / "..2026_11_28_09_00_00.1"
    stamp.mkdir()
    real = key_file(stamp, b64(SECRET), mode=0o440)
    (tmp_path / "..data").symlink_to(stamp.name)
    (tmp_path / "facade.key").symlink_to(f"..data/{real.name}")
    with pytest.raises(ConfigError) as info:
        SessionKeys.load(tmp_path / "facade.key", "proxies[0].session_key_file")
    assert "on a Kubernetes Secret volume" in str(info.value)
    assert "install -m 0600" in info.value.fix and "chmod" not in info.value.fix
