"""The deployment files: systemd units, Kubernetes manifests, Dockerfile.

Tool checks run the real linters (``systemd-analyze``, ``kubernetes-validate``, ``hadolint``); each
is skipped only when its tool is not installed (``bash .ci/deploy-setup .venv`` installs them).
Structural checks pin the decisions that keep features working: exit 2 does not restart-loop, no
``PrivateUsers=`` (it would hide every peer's uid), probes that can restart tokend never ask for
readiness, the sidecar is a native one, and the allow-lists admit the identities the pod uses.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokend.config import DEFAULT_SOCKET, Config, load_config

REPO = Path(__file__).resolve().parent.parent
SYSTEMD_DIR = REPO / "deploy" / "systemd"
SERVICE = SYSTEMD_DIR / "tokend.service"
SOCKET_UNIT = SYSTEMD_DIR / "tokend.socket"
PROXY_SOCKET_UNIT = SYSTEMD_DIR / "tokend-proxy@.socket"
SIDECAR = REPO / "deploy" / "kubernetes" / "tokend-sidecar.yaml"
FACADE = REPO / "deploy" / "kubernetes" / "tokend-facade.yaml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"

# The exposure that `systemd-analyze security --offline=yes deploy/systemd/tokend.service` reported
# (systemd 252); README.md quotes it. A change to the unit may lower it, never raise it.
EXPOSURE_CLAIMED = 1.5

INSTALLED_EXEC_START = "/opt/tokend/venv/bin/tokend"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def find_tool(name: str) -> str:
    """The tool from this venv's bin directory or PATH; skip the test when it is not installed."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (bash .ci/deploy-setup .venv installs it)")
    return found


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "NO_COLOR": "1"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd, env=env,
                          check=False)


# -- systemd ----------------------------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values in order]}}``; comments and blank lines dropped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"{path.name}: line continuations are not expected: {raw}"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: setting outside a section: {raw}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a KEY=VALUE line: {raw}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(section: dict[str, list[str]], key: str) -> str:
    values = section.get(key)
    assert values, f"{key}= is missing"
    return values[-1]


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(SERVICE)["Service"]


@pytest.fixture(scope="module")
def socket_unit() -> dict[str, list[str]]:
    return parse_unit(SOCKET_UNIT)["Socket"]


def systemd_analyze() -> str:
    return find_tool("systemd-analyze")


def test_units_verify_clean(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    # `systemd-analyze verify` fails when ExecStart's program does not exist. The units name
    # /opt/tokend/venv/bin/tokend, where the install section puts tokend and which a test machine
    # does not have, so the copies verified here point ExecStart at this venv's tokend instead.
    # That path is the only change; everything else is verified as shipped.
    tokend = Path(sys.executable).parent / "tokend"
    assert tokend.is_file(), f"{tokend} is missing: install tokend into this venv (pip install -e .)"
    text = SERVICE.read_text()
    assert f"ExecStart={INSTALLED_EXEC_START} " in text
    (tmp_path / SERVICE.name).write_text(
        text.replace(f"ExecStart={INSTALLED_EXEC_START} ", f"ExecStart={tokend} "))
    shutil.copy(SOCKET_UNIT, tmp_path / SOCKET_UNIT.name)
    shutil.copy(PROXY_SOCKET_UNIT, tmp_path / PROXY_SOCKET_UNIT.name)
    # An instance of the proxy socket template is loaded from the template beside it.
    result = run(analyze, "verify", str(tmp_path / SERVICE.name), str(tmp_path / SOCKET_UNIT.name),
                 str(tmp_path / "tokend-proxy@sfo-vcf01.socket"))
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines() if "tokend" in line]
    assert result.returncode == 0 and not ours, f"systemd-analyze verify:\n{output}"


def test_security_exposure_at_most_claimed() -> None:
    analyze = systemd_analyze()
    version = run(analyze, "--version").stdout.split()
    if len(version) < 2 or not version[1].isdigit() or int(version[1]) < 250:
        pytest.skip(f"systemd-analyze {version[1:2]} has no --offline (systemd 250 or later has)")
    result = run(analyze, "security", "--offline=yes", str(SERVICE))
    output = ANSI.sub("", result.stdout + result.stderr)
    match = re.search(r"Overall exposure level for tokend\.service: (\d+\.\d)", output)
    assert match, f"no exposure level in the output of systemd-analyze security:\n{output}"
    assert float(match.group(1)) <= EXPOSURE_CLAIMED, output


def test_service_is_notify_with_watchdog(service: dict[str, list[str]]) -> None:
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert one(service, "WatchdogSec") == "30s"
    assert one(service, "ExecStart").split() == [INSTALLED_EXEC_START, "run", "--config",
                                                  "/etc/tokend/config.toml"]
    assert one(service, "ExecReload") == "/bin/kill -HUP $MAINPID"


def test_bad_config_does_not_restart_loop(service: dict[str, list[str]]) -> None:
    # tokend exits 2 on a usage or configuration error (SPEC §2): restarting cannot fix that.
    assert one(service, "Restart") == "on-failure"
    prevented = " ".join(service["RestartPreventExitStatus"]).split()
    assert "2" in prevented


def test_sandbox_keeps_peer_identities(service: dict[str, list[str]]) -> None:
    # PrivateUsers= maps every peer outside the namespace to nobody: the allow-lists would break.
    assert "PrivateUsers" not in service
    # ProtectProc=invisible hides other users' /proc/<pid>/status, where supplementary groups are read.
    assert service.get("ProtectProc", ["default"])[-1] != "invisible"
    assert "AF_UNIX" in one(service, "RestrictAddressFamilies").split()


def test_sandbox_settings(service: dict[str, list[str]]) -> None:
    expected = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes",
        "ProtectClock": "yes", "ProtectHostname": "yes", "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes", "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "", "AmbientCapabilities": "", "UMask": "0077", "LimitCORE": "0",
        "User": "tokend", "Group": "tokend",
    }
    for key, value in expected.items():
        assert one(service, key) == value, key
    assert service["SystemCallFilter"][0] == "@system-service"


def test_credential_and_runtime_directory(service: dict[str, list[str]],
                                          socket_unit: dict[str, list[str]]) -> None:
    assert one(service, "LoadCredential") == (
        "sfo-vcf01.password:/etc/tokend/credentials/sfo-vcf01.password")
    # RuntimeDirectory=tokend would chown /run/tokend and the socket in it (dropping its group)
    # at each start and delete the socket at each stop: tokend's own directory is below it.
    socket_dir = Path(one(socket_unit, "ListenStream")).parent
    for entry in " ".join(service.get("RuntimeDirectory", [])).split():
        directory = Path("/run") / entry
        assert directory != socket_dir and socket_dir in directory.parents, entry


def test_socket_unit(socket_unit: dict[str, list[str]]) -> None:
    assert one(socket_unit, "ListenStream") == DEFAULT_SOCKET
    assert one(socket_unit, "SocketMode") == "0660"
    assert one(socket_unit, "SocketGroup") == "vcf-automation"
    assert one(socket_unit, "Service") == "tokend.service"
    install = parse_unit(SOCKET_UNIT)["Install"]
    assert one(install, "WantedBy") == "sockets.target"


def test_state_directory_is_tokends_state_dir(service: dict[str, list[str]], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # systemd makes /var/lib/<StateDirectory>, writable by tokend under ProtectSystem=strict, and
    # passes it as $STATE_DIRECTORY, which tokend takes as server.state_dir when the config has none.
    assert one(service, "StateDirectory") == "tokend"
    # Consumers read <state_dir>/proxy-ca.pem; the private folder inside is tokend's own 0700.
    assert one(service, "StateDirectoryMode") == "0755"
    config = tmp_path / "config.toml"
    config.write_text('[[targets]]\nname = "t"\nurl = "https://sddc.example"\n'
                      'username = "u"\npassword_file = "/etc/tokend/t.password"\n')
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/tokend")
    assert load_config(config).server.state_dir == Path("/var/lib/tokend")


@pytest.fixture(scope="module")
def proxy_socket_unit() -> dict[str, list[str]]:
    return parse_unit(PROXY_SOCKET_UNIT)["Socket"]


def test_proxy_socket_unit_is_matched_by_its_target_name(proxy_socket_unit: dict[str, list[str]],
                                                         socket_unit: dict[str, list[str]],
                                                         tmp_path: Path) -> None:
    # tokend takes a passed socket whose FileDescriptorName= is a proxy's target as that proxy's
    # socket: the instance name is the target, and the socket path follows the README's convention.
    assert one(proxy_socket_unit, "FileDescriptorName") == "%i"
    listen = one(proxy_socket_unit, "ListenStream")
    assert listen == "/run/tokend/%i.api.sock"
    assert Path(listen).parent == Path(one(socket_unit, "ListenStream")).parent
    # Service= gives tokend.service the socket whenever the instance runs.
    assert one(proxy_socket_unit, "Service") == "tokend.service"
    for key in ("SocketMode", "SocketGroup", "SocketUser", "DirectoryMode"):
        assert one(proxy_socket_unit, key) == one(socket_unit, key), key
    assert one(parse_unit(PROXY_SOCKET_UNIT)["Install"], "WantedBy") == "sockets.target"
    # The config that goes with tokend-proxy@sfo-vcf01.socket loads, and names that path.
    config = tmp_path / "config.toml"
    config.write_text('[server]\nstate_dir = "/var/lib/tokend"\n'
                      '[[targets]]\nname = "sfo-vcf01"\nurl = "https://sddc.example"\n'
                      'username = "u"\npassword_file = "/etc/tokend/t.password"\n'
                      '[[proxies]]\ntarget = "sfo-vcf01"\n'
                      'socket = "/run/tokend/sfo-vcf01.api.sock"\n')
    proxy = load_config(config).proxies[0]
    assert str(proxy.socket) == listen.replace("%i", proxy.target)


# -- Kubernetes -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(SIDECAR.read_text()) if d]
    return {doc["kind"]: doc for doc in docs}


@pytest.fixture(scope="module")
def pod(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = manifests["Deployment"]["spec"]["template"]["spec"]
    return spec


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    for item in pod.get("initContainers", []) + pod["containers"]:
        if item["name"] == name:
            return dict(item)
    raise AssertionError(f"no container named {name}")


@pytest.fixture(scope="module")
def pod_config(manifests: dict[str, dict[str, Any]],
               tmp_path_factory: pytest.TempPathFactory) -> Config:
    path = tmp_path_factory.mktemp("k8s") / "config.toml"
    path.write_text(manifests["ConfigMap"]["data"]["config.toml"])
    return load_config(path)  # tokend's own parser: a config it would refuse fails here


def validated(path: Path, version: str) -> list[dict[str, Any]]:
    """The documents of ``path``, each passed by ``kubernetes-validate --strict`` for ``version``."""
    tool = find_tool("kubernetes-validate")
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    result = run(tool, "--strict", "-k", version, str(path))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "ERROR" not in output and output.count(" passed ") == len(documents), output
    return documents


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_manifests_validate(version: str) -> None:
    assert len(validated(SIDECAR, version)) == 2


def test_tokend_is_a_native_sidecar(pod: dict[str, Any]) -> None:
    names = [c["name"] for c in pod["initContainers"]]
    assert "tokend" in names and "tokend" not in [c["name"] for c in pod["containers"]]
    assert container(pod, "tokend")["restartPolicy"] == "Always"
    # The directory for the token file is made by a plain init container that runs before it.
    assert names.index("tokens-dir") < names.index("tokend")
    assert "restartPolicy" not in container(pod, "tokens-dir")


def test_first_token_init_step_runs_once_before_the_sidecar(pod: dict[str, Any],
                                                            pod_config: Config) -> None:
    """``tokend run --once`` fails the pod's start with the reason, before the worker starts."""
    names = [c["name"] for c in pod["initContainers"]]
    first = container(pod, "first-token")
    sidecar = container(pod, "tokend")
    assert names.index("tokens-dir") < names.index("first-token") < names.index("tokend")
    assert "restartPolicy" not in first  # a plain init container: it must finish first
    assert first["args"][:2] == ["run", "--once"]
    assert first["args"][2:] == sidecar["args"][1:] == ["--config", "/etc/tokend/config.toml"]
    assert first["image"] == sidecar["image"]
    assert first["securityContext"]["runAsUser"] == sidecar["securityContext"]["runAsUser"]
    mounts = {m["mountPath"]: m["name"] for m in first["volumeMounts"]}
    assert mounts == {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    # Its lockout record is on the shared volume, where the sidecar and its own restarts see it.
    socket_dir = pod_config.server.socket.parent
    assert pod_config.server.state_dir == socket_dir
    assert mounts[str(socket_dir)] == "run"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["run"]


def probe_command(probe: dict[str, Any]) -> list[str]:
    command: list[str] = probe["exec"]["command"]
    return command


def check_probes(tokend: dict[str, Any], socket: Path) -> None:
    """Liveness and startup run ``tokend health``, readiness ``tokend health --ready``, on ``socket``."""
    socket_arg = ["--socket", str(socket)]
    for kind in ("livenessProbe", "startupProbe"):
        command = probe_command(tokend[kind])
        assert command[:2] == ["tokend", "health"] and "--ready" not in command, kind
        assert command[-2:] == socket_arg, kind
    readiness = probe_command(tokend["readinessProbe"])
    assert readiness[:3] == ["tokend", "health", "--ready"] and readiness[-2:] == socket_arg


def test_probes(pod: dict[str, Any], pod_config: Config) -> None:
    # Liveness and startup failures restart the container; a wrong password or an upstream
    # outage makes tokend not ready, and a restart would not help.
    check_probes(container(pod, "tokend"), pod_config.server.socket)


def test_security_contexts(pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert isinstance(pod["securityContext"]["fsGroup"], int)
    assert pod["automountServiceAccountToken"] is False
    for item in pod["initContainers"] + pod["containers"]:
        context = item["securityContext"]
        assert context["runAsNonRoot"] is True, item["name"]
        assert context["runAsUser"] > 0, item["name"]
        assert context["readOnlyRootFilesystem"] is True, item["name"]
        assert context["allowPrivilegeEscalation"] is False, item["name"]
        assert context["capabilities"]["drop"] == ["ALL"], item["name"]
        assert context["seccompProfile"]["type"] == "RuntimeDefault", item["name"]
        assert {"requests", "limits"} <= set(item["resources"]), item["name"]


def test_allow_lists_admit_the_pod(pod: dict[str, Any], pod_config: Config) -> None:
    tokend = container(pod, "tokend")["securityContext"]
    worker = container(pod, "worker")["securityContext"]
    server = pod_config.server
    # The exec probes run inside the tokend container, as tokend's uid.
    assert tokend["runAsUser"] in server.allowed_uids or tokend["runAsGroup"] in server.allowed_gids
    # Containers do not share a process namespace: only the worker's uid and primary gid are
    # visible to tokend, so one of them must be listed.
    assert worker["runAsUser"] in server.allowed_uids or worker["runAsGroup"] in server.allowed_gids
    # The worker opens the 0660 socket through its group; tokend gives the socket that group.
    assert server.socket_mode == 0o660
    assert server.socket_group == str(pod["securityContext"]["fsGroup"])
    assert worker["runAsGroup"] == pod["securityContext"]["fsGroup"]
    assert worker["runAsUser"] != tokend["runAsUser"]


def test_shared_volume_and_secret(pod: dict[str, Any], pod_config: Config) -> None:
    volumes = {v["name"]: v for v in pod["volumes"]}
    socket_dir = str(pod_config.server.socket.parent)
    mounts = {c["name"]: {m["mountPath"]: m for m in c.get("volumeMounts", [])}
              for c in pod["initContainers"] + pod["containers"]}
    run_volume = mounts["tokend"][socket_dir]["name"]
    assert volumes[run_volume]["emptyDir"]["medium"] == "Memory"
    assert mounts["worker"][socket_dir]["name"] == run_volume
    assert mounts["tokens-dir"][socket_dir]["name"] == run_volume
    # The file sink lives in the directory the init container makes, inside the shared volume.
    target = pod_config.targets[0]
    assert target.file_sink is not None
    sink_dir = str(target.file_sink.path.parent)
    assert container(pod, "tokens-dir")["command"][-1] == sink_dir
    maker = container(pod, "tokens-dir")["securityContext"]
    assert maker["runAsUser"] == container(pod, "tokend")["securityContext"]["runAsUser"]  # writes
    assert maker["runAsGroup"] == pod["securityContext"]["fsGroup"]  # the worker's group reads
    assert Path(socket_dir) in target.file_sink.path.parents
    assert target.file_sink.group == str(pod["securityContext"]["fsGroup"])
    # The secret is a file in a Secret volume that only tokend mounts, without "other" bits
    # (tokend refuses a secret file other users can read).
    assert target.secret.kind == "file"
    secret_dir = str(Path(target.secret.ref).parent)
    secret_volume = volumes[mounts["tokend"][secret_dir]["name"]]["secret"]
    assert secret_volume["defaultMode"] & 0o007 == 0
    assert all(secret_dir not in m for name, m in mounts.items()
               if name not in ("tokend", "first-token"))


def test_metrics_scrape(manifests: dict[str, dict[str, Any]], pod: dict[str, Any],
                        pod_config: Config) -> None:
    metrics = pod_config.metrics
    assert metrics.host == "0.0.0.0"
    annotations = manifests["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics.port)
    ports = [p["containerPort"] for p in container(pod, "tokend")["ports"]]
    assert metrics.port in ports


def test_applying_the_manifest_never_replaces_the_secret(manifests: dict[str, dict[str, Any]],
                                                        pod: dict[str, Any]) -> None:
    """The Secret is made with kubectl create secret (README); a placeholder in the applied file
    would overwrite it at every kubectl apply."""
    assert "Secret" not in manifests
    secret = next(v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v)
    assert f"kubectl create secret generic {secret}" in SIDECAR.read_text()
    readme = (REPO / "README.md").read_text()
    assert f"kubectl create secret generic {secret}" in readme


# -- Kubernetes: the central facade -----------------------------------------------------------------

# vCenter SSO's default lockout policy: an account is locked after this many failed logins within
# three minutes (SPEC §5.5, §9.9).
SSO_MAX_FAILURES = 5
SSO_WINDOW = 180.0


@pytest.fixture(scope="module")
def facade() -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(FACADE.read_text()) if d]
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def of_kind(docs: dict[tuple[str, str], dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for (k, _), doc in docs.items() if k == kind]


@pytest.fixture(scope="module")
def facade_deployment(facade: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = of_kind(facade, "Deployment")
    return deployment


@pytest.fixture(scope="module")
def facade_pod(facade_deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = facade_deployment["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def facade_config(facade: dict[tuple[str, str], dict[str, Any]],
                  tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The ConfigMap's config.toml through tokend's own parser, its TLS files made by trustme.

    tokend loads the listener's certificate and key when it reads the config: the two paths are
    pointed at a real pair here, everything else is parsed as shipped."""
    trustme = pytest.importorskip("trustme")
    folder = tmp_path_factory.mktemp("facade")
    text = of_kind(facade, "ConfigMap")[0]["data"]["config.toml"]
    cert = trustme.CA().issue_cert("tokend-facade")
    cert.cert_chain_pems[0].write_to_path(str(folder / "tls.crt"))
    cert.private_key_pem.write_to_path(str(folder / "tls.key"))
    for name in ("tls.crt", "tls.key"):
        assert f'"/etc/tokend-tls/{name}"' in text
        text = text.replace(f'"/etc/tokend-tls/{name}"', f'"{folder / name}"')
    path = folder / "config.toml"
    path.write_text(text)
    return load_config(path)


def mount_of(item: dict[str, Any], path: Path) -> dict[str, Any]:
    """The volume mount of ``item`` that holds ``path``."""
    for mount in item.get("volumeMounts", []):
        if Path(mount["mountPath"]) in path.parents:
            return dict(mount)
    raise AssertionError(f"{item['name']} mounts nothing that holds {path}")


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_facade_manifests_validate(version: str) -> None:
    kinds = {d["kind"] for d in validated(FACADE, version)}
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"} <= kinds


def test_facade_runs_two_replicas_and_never_a_third(facade_deployment: dict[str, Any]) -> None:
    spec = facade_deployment["spec"]
    assert spec["replicas"] == 2
    # A surge replica would be a third lockout guard during a rollout.
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 1


def test_facade_lockout_arithmetic_stays_below_the_identity_store(
        facade_deployment: dict[str, Any], facade_config: Config) -> None:
    replicas = facade_deployment["spec"]["replicas"]
    (target,) = facade_config.targets
    assert target.max_login_failures == 2
    assert target.login_retry_interval >= 90.0
    # Each replica keeps its own count: all of them together, in one window, stay below the lock.
    assert replicas * target.max_login_failures < SSO_MAX_FAILURES
    # And one replica cannot spread its attempts so thin that the window never holds them all.
    assert (target.max_login_failures - 1) * target.login_retry_interval < SSO_WINDOW


def test_facade_listener_is_what_the_service_and_the_policy_open(
        facade: dict[tuple[str, str], dict[str, Any]], facade_pod: dict[str, Any],
        facade_config: Config) -> None:
    (proxy,) = facade_config.proxies
    assert proxy.listen is not None and proxy.socket is None
    host, port = proxy.listen
    assert host == "0.0.0.0"
    tokend = container(facade_pod, "tokend")
    ports = {p["name"]: p["containerPort"] for p in tokend["ports"]}
    assert ports["https"] == port
    (service,) = of_kind(facade, "Service")
    (https,) = service["spec"]["ports"]
    assert https["port"] == 443 and https["targetPort"] == "https"
    labels = facade_pod_labels(facade)
    assert service["spec"]["selector"].items() <= labels.items()
    (policy,) = of_kind(facade, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    opened = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert opened == {port, facade_config.metrics.port}
    # Egress: DNS and the SDDC Manager's HTTPS, nothing else.
    egress = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress == {53, 443}


def facade_pod_labels(facade: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    (deployment,) = of_kind(facade, "Deployment")
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def test_facade_disruption_budget_keeps_one_replica(
        facade: dict[tuple[str, str], dict[str, Any]]) -> None:
    (budget,) = of_kind(facade, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= facade_pod_labels(facade).items()


def test_facade_probes(facade_pod: dict[str, Any], facade_config: Config) -> None:
    tokend = container(facade_pod, "tokend")
    check_probes(tokend, facade_config.server.socket)
    # The probes connect as the container's uid: the allow-list admits it.
    uid = tokend["securityContext"]["runAsUser"]
    assert uid in facade_config.server.allowed_uids


def test_facade_shares_the_session_key_from_a_secret_at_mode_0600(
        facade: dict[tuple[str, str], dict[str, Any]], facade_pod: dict[str, Any],
        facade_config: Config) -> None:
    (proxy,) = facade_config.proxies
    assert proxy.session_key_file is not None and proxy.users_file is not None
    volumes = {v["name"]: v for v in facade_pod["volumes"]}
    tokend = container(facade_pod, "tokend")
    # tokend reads the key from a memory volume the init container filled from the Secret
    # (a Secret volume with fsGroup is group-readable, which tokend refuses for a session key).
    key_volume = volumes[mount_of(tokend, proxy.session_key_file)["name"]]
    assert key_volume["emptyDir"]["medium"] == "Memory"
    copier = container(facade_pod, "session-key")
    command = copier["command"]
    assert command[:3] == ["install", "-m", "0600"] and command[-1] == str(proxy.session_key_file)
    assert mount_of(copier, proxy.session_key_file)["name"] == mount_of(
        tokend, proxy.session_key_file)["name"]
    source = Path(command[-2])
    secret_name = volumes[mount_of(copier, source)["name"]]["secret"]["secretName"]
    assert (f"kubectl create secret generic {secret_name} --from-file={source.name}="
            in FACADE.read_text())
    # The same Secret for every replica: one pod template.
    assert copier["securityContext"]["runAsUser"] == tokend["securityContext"]["runAsUser"]
    # The password and the users file come from Secret volumes without "other" bits.
    for path in (Path(facade_config.targets[0].secret.ref), proxy.users_file):
        volume = volumes[mount_of(tokend, path)["name"]]
        assert volume["secret"]["defaultMode"] & 0o007 == 0, path
    for path in (proxy.tls_cert_file, proxy.tls_key_file):  # moved to a real pair for loading
        assert path is not None
        shipped = Path("/etc/tokend-tls") / path.name
        assert volumes[mount_of(tokend, shipped)["name"]]["secret"]["secretName"] == "tokend-facade-tls"
    assert "kubectl create secret tls tokend-facade-tls" in FACADE.read_text()


def test_facade_security_contexts(facade_pod: dict[str, Any]) -> None:
    assert facade_pod["securityContext"]["runAsNonRoot"] is True
    assert facade_pod["automountServiceAccountToken"] is False
    for item in facade_pod["initContainers"] + facade_pod["containers"]:
        context = item["securityContext"]
        assert context["runAsNonRoot"] is True, item["name"]
        assert context["readOnlyRootFilesystem"] is True, item["name"]
        assert context["allowPrivilegeEscalation"] is False, item["name"]
        assert context["capabilities"]["drop"] == ["ALL"], item["name"]
        assert context["seccompProfile"]["type"] == "RuntimeDefault", item["name"]
        assert {"requests", "limits"} <= set(item["resources"]), item["name"]


def test_facade_state_dir_and_metrics(facade: dict[tuple[str, str], dict[str, Any]],
                                      facade_pod: dict[str, Any], facade_config: Config) -> None:
    tokend = container(facade_pod, "tokend")
    volumes = {v["name"]: v for v in facade_pod["volumes"]}
    state = [m for m in tokend["volumeMounts"]
             if Path(m["mountPath"]) == facade_config.server.state_dir]
    assert state and "emptyDir" in volumes[state[0]["name"]] and not state[0].get("readOnly")
    annotations = facade[("Deployment", "tokend-facade")]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(facade_config.metrics.port)


def test_applying_the_facade_manifest_never_replaces_its_secrets(
        facade: dict[tuple[str, str], dict[str, Any]], facade_pod: dict[str, Any]) -> None:
    """Each Secret the pod mounts is made with kubectl (the file's header, the README); none is
    in the applied file, where a placeholder would overwrite it at every kubectl apply."""
    assert not of_kind(facade, "Secret")
    header, readme = FACADE.read_text(), (REPO / "README.md").read_text()
    for volume in facade_pod["volumes"]:
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            assert f" {name} " in header and f" {name} " in readme, name


# -- Dockerfile -------------------------------------------------------------------------------------


def test_dockerfile_lints_clean() -> None:
    hadolint = find_tool("hadolint")
    result = run(hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE), cwd=REPO)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and not output.strip(), output


def test_dockerfile_structure() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    froms = [line for line in lines if line.startswith("FROM ")]
    # Both stages share one base, a build argument whose default users get is the public image
    # (.ci/image passes a local Debian base instead).
    assert froms == ["FROM ${BASE} AS build", "FROM ${BASE}"]
    assert [line for line in lines if line.startswith("ARG BASE")] == ["ARG BASE=python:3.12-slim"]
    assert lines.index("ARG BASE=python:3.12-slim") < lines.index(froms[0])
    final = lines[lines.index(froms[-1]):]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert len(users) == 1 and all(part.isdigit() and int(part) > 0 for part in users[0].split(":"))
    assert 'ENTRYPOINT ["tokend"]' in final
    assert 'CMD ["run", "--config", "/etc/tokend/config.toml"]' in final
    assert any(line.startswith("HEALTHCHECK ") for line in final)
    # Only the venv comes from the build stage: no sources, wheels or build tools.
    copies = [line for line in final if line.startswith("COPY ")]
    assert copies == ["COPY --from=build /opt/tokend/venv /opt/tokend/venv"]
