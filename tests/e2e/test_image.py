"""The container image of deploy/Dockerfile, built by ``.ci/image`` and run with podman.

``localhost/tokend:ci`` is deploy/Dockerfile built the way users build it, with two build arguments
changed because this machine reaches no registry: the base (a Debian bookworm minbase made with
debootstrap) and pip's source (a wheelhouse made on the host). ``localhost/tokend:ci-fake`` is the
same with ``EXTRAS=fake``: it runs ``tokend demo`` and serves as the fake SDDC Manager the shipped
image logs in to. Every test runs ``.ci/image`` first (seconds when nothing changed), so what runs
is built from this tree.

Podman 4.3 (Debian 12) runs containers as root here with runc and cgroupfs, and only with explicit
ulimits (crun and the default ulimits are refused). ``CONTAINERS_CONF`` says so once for every call
below, ``podman kube play`` included, which has no ``--ulimit``.

The sidecar manifest under ``podman kube play``: what podman 4.3 cannot run as Kubernetes does, and
what the played copy changes for it (``sidecar_play``):

- Native sidecar (an init container with ``restartPolicy: Always``): podman runs init containers to
  completion before the containers, so tokend there never lets the worker start (tried: the worker
  stays "Created"). tokend is moved to ``containers``, beside the worker. Not covered: that
  Kubernetes starts tokend before the worker and stops it after; the worker's ``tokend token
  --wait`` covers either start order.
- The ``first-token`` init container (``tokend run --once``) is left out: podman runs init
  containers before any container, and the fake SDDC Manager is one, so it would find no upstream.
  Its place in the manifest is held by tests/test_deploy.py; ``run --once`` itself is run against
  the fake by tests/e2e/test_newcomer_commands.py.
- ``fsGroup`` is ignored: ``supplementalGroups: [10000]`` gives the containers the group fsGroup
  gives them. Not covered: the fsGroup ownership Kubernetes gives the emptyDir (podman gives it to
  the first container's uid; the tokens-dir init container's ``mkdir`` works either way).
- Secret volumes crash podman 4.3 (a nil dereference in VolumeFromSecret): the password is a
  hostPath directory holding the file as the Secret volume would (root:10000, mode 0440).
- ``containerPort`` needs a bridge network and the pod runs with ``--network none``: the metrics
  port is dropped (tests/e2e/test_prometheus.py scrapes metrics).
- Probes become podman health checks, which need systemd timers: each probe's command is run here
  with ``podman exec`` instead, as the kubelet would.
- The Deployment is played as its pod template, with podman's init-container type "always": its
  default, "once", waits 20 s for the init container's cleanup and then fails to remove it.
- ``emptyDir: {medium: Memory}`` is a disk volume in podman 4.3, not a tmpfs.
- Images, the target's URL and a ``ca_file``: the local images and the fake in the same pod.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import tokend
from tokend.jwtinfo import fingerprint
from tokend.testing.tls import ensure_tls_dir

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("TOKEND_IMAGE", "localhost/tokend:ci")
FAKE_IMAGE = f"{IMAGE}-fake"
SIDECAR = REPO / "deploy" / "kubernetes" / "tokend-sidecar.yaml"
USER = "administrator@vsphere.local"
TOKEND_UID = 10001
SHARED_GID = 10000
# The fake listens here inside each pod; the pods have no network but their own loopback.
FAKE_URL = "https://127.0.0.1:8443"
# What docker and Kubernetes give a read-only container: no tmpfs on /run or /tmp unless asked
# (podman's --read-only adds them by default).
HARDENED = ("--read-only", "--read-only-tmpfs=false", "--cap-drop=all",
            "--security-opt=no-new-privileges")
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""


@dataclass
class Podman:
    """podman with this machine's settings; every call fails the test with its output."""

    env: dict[str, str]

    def run(self, *args: str, check: bool = True, timeout: float = 120,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["podman", *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout, input=stdin, check=False)
        if check and done.returncode != 0:
            pytest.fail(f"podman {' '.join(args)} exited {done.returncode}:\n"
                        f"{done.stdout}\n{done.stderr}")
        return done

    def logs(self, container: str) -> str:
        done = self.run("logs", container, check=False)
        return done.stdout + done.stderr


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    """Images built from this tree by .ci/image (which installs podman when it can)."""
    started = time.monotonic()
    done = subprocess.run(["bash", str(REPO / ".ci" / "image"), sys.executable],
                          capture_output=True, text=True, timeout=900, check=False, cwd=REPO,
                          env={**os.environ, "TOKEND_IMAGE": IMAGE})
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed and .ci/image could not install it (it needs root and"
                    f" apt-get: apt-get install podman runc catatonit debootstrap):\n{done.stderr}")
    if done.returncode != 0:
        pytest.fail(f"bash .ci/image failed:\n{done.stdout}\n{done.stderr}")
    print(f"\n{done.stdout}image: built or checked in {time.monotonic() - started:.1f} s")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return Podman({**os.environ, "CONTAINERS_CONF": str(conf)})


def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """``check()`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


def status_fields(text: str) -> dict[str, str]:
    """``/proc/<pid>/status`` as a dict."""
    return {key: value.strip() for key, _, value in
            (line.partition(":") for line in text.splitlines())}


def own(path: Path, uid: int, gid: int, mode: int) -> Path:
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


@pytest.fixture
def upstream_files(tmp_path: Path) -> dict[str, Path]:
    """The fake's TLS folder (readable by the image's uid) and a users file with a random password."""
    tls = tmp_path / "tls"
    ensure_tls_dir(tls)
    own(tls, TOKEND_UID, TOKEND_UID, 0o755)
    for item in tls.iterdir():
        own(item, TOKEND_UID, TOKEND_UID, 0o600 if item.name == "key.pem" else 0o644)
    password = secrets.token_urlsafe(18)
    users = tmp_path / "users"
    users.mkdir()
    (users / "users").write_text(f"{USER}:{password}\n")
    own(users / "users", TOKEND_UID, TOKEND_UID, 0o400)
    own(users, TOKEND_UID, TOKEND_UID, 0o500)
    password_file = tmp_path / "password"
    password_file.write_text(password)
    return {"tls": tls, "users": users, "password": password_file}


def fake_args(tls: str, users: str) -> list[str]:
    return ["fake-sddc", "--listen", FAKE_URL.removeprefix("https://"), "--tls-dir", tls,
            "--users-file", users, "--access-ttl", "60"]


# -- the image alone ---------------------------------------------------------------------------------


def test_image_reports_the_version_of_the_tree_it_was_built_from(podman: Podman) -> None:
    done = podman.run("run", "--rm", "--network=none", *HARDENED, IMAGE, "--version")
    assert done.stdout.strip() == f"tokend {tokend.__version__}"


def test_image_ships_the_example_config(podman: Podman) -> None:
    """The config-not-found error points at it: it is in the image, not only in the repository."""
    done = podman.run("run", "--rm", "--network=none", *HARDENED, IMAGE, "example-config")
    assert done.stdout == (REPO / "config.example.toml").read_text()


def test_shipped_image_leaves_the_fake_out_and_names_the_extra(podman: Podman) -> None:
    done = podman.run("run", "--rm", "--network=none", *HARDENED, IMAGE, "demo", check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "pip install 'tokend[fake]'" in done.stderr


def test_demo_runs_in_the_image_with_the_fake_extra(podman: Podman) -> None:
    # The demo's temp dir needs a writable /tmp: the only tmpfs given.
    done = podman.run("run", "--rm", "--network=none", *HARDENED, "--tmpfs", "/tmp", FAKE_IMAGE,
                      "demo", "--duration", "5", timeout=60)
    output = done.stdout + done.stderr
    assert "token.acquired" in output and "daemon.stopped" in output, output


# -- the shipped image as `docker run` in the Dockerfile's header runs it ---------------------------------


@dataclass
class Running:
    """The shipped image running its default command in a pod, beside the fake upstream."""

    pod: str
    tokend: str
    run_dir: Path


@pytest.fixture
def running(podman: Podman, tmp_path: Path, upstream_files: dict[str, Path]) -> Iterator[Running]:
    name = f"tokend-image-{secrets.token_hex(4)}"
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "config.toml").write_text(f"""\
[[targets]]
name = "sddc"
url = "{FAKE_URL}"
username = "{USER}"
password_file = "/etc/tokend/password"
ca_file = "/etc/tokend-ca/ca.pem"
""")
    shutil.copy(upstream_files["password"], etc / "password")
    own(etc / "password", TOKEND_UID, TOKEND_UID, 0o400)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    own(run_dir, TOKEND_UID, TOKEND_UID, 0o755)
    podman.run("pod", "create", "--network=none", "--name", name)
    try:
        podman.run("run", "-d", "--pod", name, "--name", f"{name}-fake", *HARDENED,
                   "-v", f"{upstream_files['tls']}:/tls:ro", "-v", f"{upstream_files['users']}:/users:ro",
                   FAKE_IMAGE, *fake_args("/tls", "/users/users"))
        # The image's own USER, ENTRYPOINT and CMD: nothing but mounts and hardening is given.
        podman.run("run", "-d", "--pod", name, "--name", f"{name}-tokend", *HARDENED,
                   "-v", f"{etc}:/etc/tokend:ro", "-v", f"{upstream_files['tls']}:/etc/tokend-ca:ro",
                   "-v", f"{run_dir}:/run/tokend", IMAGE)
        yield Running(name, f"{name}-tokend", run_dir)
    finally:
        podman.run("pod", "rm", "--force", "--time", "0", name, check=False)


def ready(podman: Podman, container: str, socket: str = "/run/tokend/tokend.sock") -> bool:
    done = podman.run("exec", container, "tokend", "health", "--ready", "--socket", socket,
                      check=False)
    return done.returncode == 0


def test_daemon_in_the_image_runs_as_10001_on_a_read_only_root_without_capabilities(
        podman: Podman, running: Running) -> None:
    eventually(lambda: ready(podman, running.tokend), "tokend in the image to hold a token")
    status = status_fields(podman.run("exec", running.tokend, "cat", "/proc/1/status").stdout)
    assert status["Name"] == "tokend"
    assert status["Uid"].split() == [str(TOKEND_UID)] * 4
    assert status["Gid"].split() == [str(TOKEND_UID)] * 4
    for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[capabilities], 16) == 0, (capabilities, status[capabilities])
    assert status["NoNewPrivs"] == "1"
    # Neither tokend's own files nor any other place outside the mounted socket folder.
    for path in ("/opt/tokend/venv/bin/x", "/etc/x", "/tmp/x"):
        done = podman.run("exec", running.tokend, "touch", path, check=False)
        assert done.returncode != 0 and "Read-only file system" in done.stderr, (path, done.stderr)
    inspect = json.loads(podman.run("inspect", running.tokend).stdout)[0]
    assert inspect["HostConfig"]["ReadonlyRootfs"] is True
    assert inspect["Config"]["User"] == f"{TOKEND_UID}:{TOKEND_UID}"


def test_daemon_in_the_image_serves_the_token_it_got_from_the_fake(
        podman: Podman, running: Running) -> None:
    eventually(lambda: ready(podman, running.tokend), "tokend in the image to hold a token")
    # The socket is in a host folder: this process reads it as a consumer outside the container.
    from tokend.client import get_token

    data = get_token(sock=str(running.run_dir / "tokend.sock"), timeout=5.0)
    token = data["accessToken"]
    assert token.count(".") == 2
    logs = podman.logs(running.tokend)
    assert f'"fingerprint": "{fingerprint(token)}"' in logs, logs
    assert token not in logs


def test_healthcheck_passes_while_tokend_runs_and_fails_without_it(
        podman: Podman, running: Running) -> None:
    healthcheck = json.loads(podman.run("image", "inspect", IMAGE).stdout)[0]["Healthcheck"]
    assert healthcheck["Test"][0] == "CMD"
    command = healthcheck["Test"][1:]
    assert command[:2] == ["tokend", "health"]
    eventually(lambda: ready(podman, running.tokend), "tokend in the image to hold a token")
    # podman's own HEALTHCHECK machinery, which runs the image's command in the container.
    done = podman.run("healthcheck", "run", running.tokend, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert podman.run("exec", running.tokend, *command, check=False).returncode == 0
    # The same command where no tokend runs: the check would mark the container unhealthy.
    alone = podman.run("run", "--rm", "--network=none", *HARDENED, "--entrypoint", command[0],
                       IMAGE, *command[1:], check=False)
    assert alone.returncode == 1 and "tokend.sock" in alone.stderr, alone.stderr


# -- the sidecar manifest under podman kube play ------------------------------------------------------------


# The worker prints digests of what it read, never the token.
WORKER_SCRIPT = """\
set -e
digest() {
    python -c 'import sys, hashlib; print(hashlib.sha256(sys.stdin.read().strip().encode()).hexdigest())'
}
echo "socket: $(tokend token --wait 60s --socket /run/tokend/tokend.sock | digest)"
echo "file: $(digest < /run/tokend/tokens/sfo-vcf01.token)"
echo worker done
exec sleep 600
"""


def sidecar_play(name: str, upstream_files: dict[str, Path], credentials: Path) -> list[dict[str, Any]]:
    """The shipped manifest, changed only where podman 4.3 or this machine needs it (module docstring)."""
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all(SIDECAR.read_text()) if doc}
    config_map = copy.deepcopy(docs["ConfigMap"])
    text = config_map["data"]["config.toml"]
    for old, new in [('url = "https://sfo-vcf01.rainpole.io"', f'url = "{FAKE_URL}"'),
                     ('# ca_file = "/etc/tokend/vcf-ca.pem"', 'ca_file = "/etc/tokend-ca/ca.pem"')]:
        assert old in text, f"the manifest's config.toml no longer has {old!r}: update this test"
        text = text.replace(old, new)
    config_map["data"]["config.toml"] = text
    config_map["metadata"]["name"] = f"{name}-config"

    template = copy.deepcopy(docs["Deployment"]["spec"]["template"])
    spec = template["spec"]
    tokend_sidecar = next(c for c in spec["initContainers"] if c["name"] == "tokend")
    assert tokend_sidecar.pop("restartPolicy") == "Always"
    spec["initContainers"].remove(tokend_sidecar)
    # The first-token init container (`tokend run --once`) needs the SDDC Manager before the pod's
    # containers start; here the fake is one of those containers, so it cannot be reached yet.
    # `run --once` itself is tested against the fake in tests/e2e/test_newcomer_commands.py.
    first_token = next(c for c in spec["initContainers"] if c["name"] == "first-token")
    assert first_token["args"][:2] == ["run", "--once"]
    spec["initContainers"].remove(first_token)
    tokend_sidecar.pop("ports")
    tokend_sidecar["volumeMounts"].append(
        {"name": "ca", "mountPath": "/etc/tokend-ca", "readOnly": True})
    worker = spec["containers"][0]
    assert worker["name"] == "worker"
    worker["args"] = [WORKER_SCRIPT]
    fake = {"name": "fake-sddc", "image": FAKE_IMAGE, "args": fake_args("/tls", "/users/users"),
            "volumeMounts": [{"name": "ca", "mountPath": "/tls", "readOnly": True},
                             {"name": "users", "mountPath": "/users", "readOnly": True}]}
    spec["containers"] = [fake, tokend_sidecar, worker]
    for item in spec["initContainers"] + spec["containers"]:
        if item["image"].startswith("registry.example.com/"):
            item["image"] = IMAGE  # the worker too: it needs the tokend command and a shell
    spec["securityContext"]["supplementalGroups"] = [spec["securityContext"]["fsGroup"]]
    spec["restartPolicy"] = "Never"
    volumes = {v["name"]: v for v in spec["volumes"]}
    volumes["config"]["configMap"]["name"] = config_map["metadata"]["name"]
    assert volumes["credentials"]["secret"]["defaultMode"] == 0o440
    volumes["credentials"] = {"name": "credentials",
                              "hostPath": {"path": str(credentials), "type": "Directory"}}
    volumes["ca"] = {"name": "ca", "hostPath": {"path": str(upstream_files["tls"]), "type": "Directory"}}
    volumes["users"] = {"name": "users",
                        "hostPath": {"path": str(upstream_files["users"]), "type": "Directory"}}
    # podman names a pod's emptyDir volumes after them: unique names keep parallel runs apart.
    renamed = {volume: f"{name}-{volume}" for volume in volumes}
    spec["volumes"] = [{**v, "name": renamed[key]} for key, v in volumes.items()]
    for item in spec["initContainers"] + spec["containers"]:
        for mount in item.get("volumeMounts", []):
            mount["name"] = renamed[mount["name"]]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": template["metadata"]["labels"],
                        "annotations": {**template["metadata"]["annotations"],
                                        "io.podman.annotations.init.container.type": "always"}},
           "spec": spec}
    return [config_map, pod]


@pytest.fixture
def sidecar_pod(podman: Podman, tmp_path: Path,
                upstream_files: dict[str, Path]) -> Iterator[tuple[str, dict[str, Any]]]:
    name = f"tokend-sidecar-{secrets.token_hex(4)}"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    shutil.copy(upstream_files["password"], credentials / "sfo-vcf01.password")
    own(credentials / "sfo-vcf01.password", 0, SHARED_GID, 0o440)
    own(credentials, 0, SHARED_GID, 0o750)
    docs = sidecar_play(name, upstream_files, credentials)
    play = tmp_path / "play.yaml"
    play.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    try:
        podman.run("kube", "play", "--network", "none", str(play), timeout=120)
        yield name, docs[1]
    finally:
        podman.run("pod", "rm", "--force", "--time", "0", name, check=False)
        podman.run("volume", "rm", "--force", f"{name}-config", check=False)


def test_sidecar_manifest_worker_reads_the_token_over_the_shared_socket(
        podman: Podman, sidecar_pod: tuple[str, dict[str, Any]]) -> None:
    name, pod = sidecar_pod
    tokend_ctr, worker_ctr = f"{name}-tokend", f"{name}-worker"
    worker_logs = eventually(lambda: "worker done" in (logs := podman.logs(worker_ctr)) and logs,
                             "the worker to read the token", timeout=60)
    lines = dict(line.split(": ", 1) for line in worker_logs.splitlines() if ": " in line)
    tokend_logs = podman.logs(tokend_ctr)
    # The worker got, over the socket and from the file sink, the token tokend logged it holds.
    assert f'"fingerprint": "sha256:{lines["socket"]}"' in tokend_logs, (worker_logs, tokend_logs)
    assert lines["file"] == lines["socket"]
    # The init container made the token folder, and ran as the manifest says.
    init = json.loads(podman.run("inspect", f"{name}-tokens-dir").stdout)[0]
    assert init["State"]["ExitCode"] == 0
    listing = podman.run("exec", worker_ctr, "stat", "-c", "%a %u %g %n", "/run/tokend/tokend.sock",
                         "/run/tokend/tokens", "/run/tokend/tokens/sfo-vcf01.token").stdout.split("\n")
    assert listing[:3] == [f"660 {TOKEND_UID} {SHARED_GID} /run/tokend/tokend.sock",
                           f"750 {TOKEND_UID} {SHARED_GID} /run/tokend/tokens",
                           f"640 {TOKEND_UID} {SHARED_GID} /run/tokend/tokens/sfo-vcf01.token"]
    # Each container runs as its securityContext says, on a read-only root.
    for container in pod["spec"]["initContainers"] + pod["spec"]["containers"]:
        context = container.get("securityContext")
        if context is None:
            continue  # the fake upstream, not part of the manifest
        inspect = json.loads(podman.run("inspect", f"{name}-{container['name']}").stdout)[0]
        assert inspect["HostConfig"]["ReadonlyRootfs"] is True, container["name"]
        assert inspect["Config"]["User"].split(":") == [str(context["runAsUser"]),
                                                       str(context["runAsGroup"])], container["name"]
    status = status_fields(podman.run("exec", tokend_ctr, "cat", "/proc/1/status").stdout)
    assert status["Uid"].split()[0] == str(TOKEND_UID) and int(status["CapEff"], 16) == 0
    mounts = podman.run("exec", worker_ctr, "cat", "/proc/mounts").stdout
    run_mount = next(line for line in mounts.splitlines() if line.split()[1] == "/run/tokend")
    assert " ro," in f" {run_mount.split()[3]},"  # the worker's mount of the shared folder


def test_sidecar_manifest_probes_pass_and_outsiders_are_refused(
        podman: Podman, sidecar_pod: tuple[str, dict[str, Any]]) -> None:
    name, pod = sidecar_pod
    tokend_ctr = f"{name}-tokend"
    tokend_spec = next(c for c in pod["spec"]["containers"] if c["name"] == "tokend")
    probe = tokend_spec["readinessProbe"]["exec"]["command"]
    eventually(lambda: podman.run("exec", tokend_ctr, *probe, check=False).returncode == 0,
               "the readiness probe to pass", timeout=60)
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        command = tokend_spec[kind]["exec"]["command"]
        done = podman.run("exec", tokend_ctr, *command, check=False)
        assert done.returncode == 0, (kind, done.stderr)
    # A process of another uid and group than the manifest's (same container, same socket).
    outsider = podman.run("exec", "--user", "10003:10003", tokend_ctr, "tokend", "token",
                          "--socket", "/run/tokend/tokend.sock", check=False)
    assert outsider.returncode != 0 and "ermission denied" in outsider.stderr, outsider.stderr
