"""Real clients, unmodified, through tokend (SPEC §9, issue 11 "Must show"):

- the vendor's Python bindings (``vmware-sddc-manager`` from PyPI) log in to the HTTPS facade, list
  domains, refresh their token and list again, as their own samples do; however many sessions run,
  the fake SDDC Manager sees one login, and nothing the bindings received holds the upstream's
  access token or refresh id;
- ansible-core's ``uri`` module with ``unix_socket`` through the proxy's Unix socket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.facade_fixtures import (
    LOCAL_PASSWORD,
    LOCAL_USER,
    Facaded,
    facaded,
    make_facaded,
)
from tests.e2e.proxy_fixtures import assert_catalogued
from tests.support import clean_env
from tokend.proxy.localtoken import verify

__all__ = ["facaded", "make_facaded"]

SDK_SESSIONS = 3


# One session of the vendor's bindings, as their samples write it: create a token, list the
# domains with it, refresh the access token with the refresh id, list the domains again. It runs
# in a process of its own that trusts tokend's CA the way a consumer does (REQUESTS_CA_BUNDLE),
# and prints what it saw, with every byte of every answer the bindings got (status, headers and
# body, captured by a response hook of the requests session handed to them).
SDK_SESSION = r"""
import base64, json, sys
import requests
from vmware.sddc_manager.model_client import TokenCreationSpec
from vmware.sddc_manager.v1.tokens.access_token_client import Refresh
from vmware.sddc_manager.v1_client import Domains, Tokens
from vmware.vapi.lib.connect import get_requests_connector
from vmware.vapi.security.oauth import create_oauth_security_context
from vmware.vapi.stdlib.client.factories import StubConfigurationFactory

url, user, password = sys.argv[1], sys.argv[2], sys.stdin.read()
received = []

def capture(response, *args, **kwargs):
    head = f"{response.status_code} {response.reason}\n" + "".join(
        f"{name}: {value}\n" for name, value in response.headers.items())
    received.append(base64.b64encode(head.encode() + response.content).decode())

session = requests.Session()
session.hooks["response"].append(capture)

def config(access_token=None):
    connector = get_requests_connector(session=session, msg_protocol="rest", url=url)
    if access_token is not None:
        connector.set_security_context(create_oauth_security_context(access_token))
    return StubConfigurationFactory.new_std_configuration(connector)

pair = Tokens(config()).create_token(
    token_creation_spec=TokenCreationSpec(username=user, password=password))
first = Domains(config(pair.access_token)).get_domains()
refreshed = Refresh(config()).refresh_access_token(pair.refresh_token.id)
second = Domains(config(refreshed)).get_domains()
print(json.dumps({
    "access_token": pair.access_token, "refresh_id": pair.refresh_token.id,
    "refreshed": refreshed,
    "domains": [[d.name for d in page.elements] for page in (first, second)],
    "received": received,
}))
"""


def sdk_session(url: str, ca_file: Path, user: str, password: str) -> dict[str, Any]:
    """Run :data:`SDK_SESSION`; what it printed, ``received`` decoded to bytes."""
    env = clean_env(REQUESTS_CA_BUNDLE=str(ca_file))
    env.pop("CURL_CA_BUNDLE", None)  # requests would take it too
    done = subprocess.run([sys.executable, "-c", SDK_SESSION, url, user], input=password,
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    seen: dict[str, Any] = json.loads(done.stdout)
    seen["received"] = [base64.b64decode(b) for b in seen["received"]]
    return seen


@pytest.mark.skipif(shutil.which("htpasswd") is None, reason="htpasswd (apache2-utils) is missing")
async def test_the_vendor_python_bindings_work_through_the_facade_with_one_upstream_login(
        facaded: Facaded) -> None:
    pytest.importorskip("vmware.sddc_manager", reason="the test extra installs vmware-sddc-manager")
    fake = facaded.fake
    sessions = await asyncio.gather(*(
        asyncio.to_thread(sdk_session, facaded.url, facaded.ca_file, LOCAL_USER, LOCAL_PASSWORD)
        for _ in range(SDK_SESSIONS)))

    for seen in sessions:
        assert seen["domains"] == [["sfo-m01"], ["sfo-m01"]], seen["domains"]
        # What the bindings hold are tokend's local tokens for this target, issued on TCP.
        keys = facaded.keys()
        for token, typ in ((seen["access_token"], "access"), (seen["refreshed"], "access"),
                           (seen["refresh_id"], "refresh")):
            claims = verify(keys, token, target="t1", typ=typ, via="tcp", now=_now())
            assert claims.sub == LOCAL_USER
        assert seen["refreshed"] != seen["access_token"]
    # One upstream session however many SDK sessions ran; the fake saw every forwarded call.
    assert fake.count("login") == 1
    assert fake.count("domains") == 2 * SDK_SESSIONS
    # Byte for byte, nothing the bindings received holds the upstream's secrets.
    received = b"".join(b for seen in sessions for b in seen["received"])
    assert len(received) > 1000
    upstream_secrets = [*fake.issued_access_tokens, *fake.issued_refresh_ids]
    assert upstream_secrets
    for secret in upstream_secrets:
        assert secret.encode() not in received
    # And the local password is nowhere in what tokend wrote.
    assert LOCAL_PASSWORD not in facaded.tokend.stdout() + facaded.tokend.stderr()
    logins = facaded.tokend.events("proxy.request")
    assert [e["status"] for e in logins if e["path"] == "/v1/tokens"] == [201] * SDK_SESSIONS
    print(f"\nvendor bindings: {SDK_SESSIONS} sessions, domains {sessions[0]['domains']},"
          f" upstream logins {fake.count('login')}, upstream secrets checked"
          f" {len(upstream_secrets)} against {len(received)} bytes received")
    assert_catalogued(facaded.tokend)


def _now() -> float:
    import time

    return time.time()


@pytest.mark.skipif(shutil.which("htpasswd") is None, reason="htpasswd (apache2-utils) is missing")
async def test_ansible_uri_module_with_unix_socket_gets_the_fakes_answer(
        facaded: Facaded, workdir: Path) -> None:
    ansible = Path(sys.executable).with_name("ansible")
    if not ansible.exists():
        pytest.skip("the test extra installs ansible-core")
    home = workdir / "ansible"
    home.mkdir()
    (home / "ansible.cfg").write_text("[defaults]\n")
    env = {
        "PATH": f"{ansible.parent}:/usr/bin:/bin",
        "HOME": str(home),
        "LC_ALL": "C.UTF-8",
        # Offline and local: no config file, no collections, no inventory but localhost.
        "ANSIBLE_CONFIG": str(home / "ansible.cfg"),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_COLLECTIONS_PATH": str(home / "collections"),
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.minimal",  # HOST | STATUS => {result JSON}
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "0",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [str(ansible), "localhost", "-i", "localhost,", "-c", "local", "-m", "ansible.builtin.uri",
         "-a", f"url=http://localhost/v1/domains unix_socket={facaded.socket} return_content=yes"],
        capture_output=True, text=True, timeout=120, env=env, cwd=home, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    head, _, result_json = done.stdout.partition(" => ")
    assert head.strip() == "localhost | SUCCESS", done.stdout[-3000:]
    result = json.loads(result_json)
    assert result["status"] == 200, result
    assert result["json"]["elements"][0]["name"] == "sfo-m01"
    assert facaded.fake.count("domains") == 1 and facaded.fake.count("login") == 1
    token = facaded.fake.issued_access_tokens[-1]
    assert token not in done.stdout, "the Unix proxy injects the token; ansible never holds it"
    print(f"\nansible uri: status {result['status']}, content {result['content'][:120]}")
