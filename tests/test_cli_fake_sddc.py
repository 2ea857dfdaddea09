"""``tokend fake-sddc``: the fake alone, as people testing their own automation run it."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path


def test_fake_sddc_serves_https_with_users_from_a_file(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:Alice-pw-1\nbob:Bob-pw-2\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokend", "fake-sddc", "--listen", "127.0.0.1:0",
         "--users-file", str(users), "--tls-dir", str(tmp_path / "tls"), "--access-ttl", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("https://127.0.0.1:") and not url.endswith(":0"), url
        context = ssl.create_default_context(cafile=str(tmp_path / "tls" / "ca.pem"))
        request = urllib.request.Request(
            url + "/v1/tokens", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"username": "bob", "password": "Bob-pw-2"}).encode())
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:
            assert answer.status == 201
            pair = json.load(answer)
        assert pair["accessToken"].count(".") == 2 and pair["refreshToken"]["id"]
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert "Bob-pw-2" not in out + err and "Alice-pw-1" not in out + err


def test_fake_sddc_refuses_a_malformed_user(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "tokend", "fake-sddc", "--user", "nopassword"],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 2
    assert "expected USER:PASSWORD" in done.stderr and "Traceback" not in done.stderr
