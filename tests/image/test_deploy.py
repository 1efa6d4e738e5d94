"""The deployment files run for real: `deploy/kubernetes/` with `podman kube play` and
`deploy/compose.yaml` with podman-compose, on the image the other image tests build.

What podman on Debian 12 (4.3) cannot run as written, and what the test does instead:
- StatefulSet and Service kinds: the test plays the StatefulSet's pod template as the Pod
  the StatefulSet controller would create (`browser-0`); there is no cluster DNS, so the
  Service is validated (tests/unit/test_deploy_manifests.py) but not run;
- kind Secret: the test hands the Secret manifest to `podman secret create`, which is how
  this podman feeds a Pod's secret volume (it writes `data` values undecoded, so the token
  in effect is what the mounted file holds, read back as root);
- no working bridge network in this sandbox: the pod and the compose service use host
  networking, with the ports and display moved to free ones (AGENT_PORT,
  AGENT_CDP_PROXY_PORT, AGENT_CDP_ADDRESS, AGENT_DISPLAY), as the other image tests do,
  and without `containerPort` declarations (host networking takes no port mappings);
- podman 4.3 mounts `emptyDir: {medium: Memory}` as an ordinary volume, not tmpfs.
Everything else — the env from the downward API, the token file, the capability set,
no_new_privs, the stop — is the manifest's own.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import free_port, wait_until
from kernel import Kernel, NotFoundError
from test_image import SCREEN_H, SCREEN_W, release_display, reserve_display

pytestmark = [
    pytest.mark.image,
    pytest.mark.timeout(1500),
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed"),
]

REPO = Path(__file__).resolve().parents[2]
KUBE_DIR = REPO / "deploy" / "kubernetes"
COMPOSE_FILE = REPO / "deploy" / "compose.yaml"
POD_NAME = "browser-0"  # the first pod the StatefulSet controller makes
TOKEN_PATH = "/var/lib/browser-agent/secrets/api-token"
PAIRS = 400  # screenshot + click pairs in the busy loop
# runc (crun fails on this sandbox's cgroup layout) and ulimits within what it may set.
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=10000:10000", "nproc=10000:10000"]
[engine]
runtime = "runc"
"""


def run(*argv: str, timeout: float = 120, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {result.returncode}\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def manifests() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBE_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                docs[doc["kind"]] = doc
    return docs


@dataclass
class Deployed:
    name: str  # the browser id, which is also the pod name
    container: str
    api_port: int
    display: int
    env: dict[str, str]
    kube_file: Path | None = None
    token: str = ""
    started_at: float = 0.0

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def health(self, token: str = "") -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(self.api + "/health", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=3) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)
        except OSError:
            return 0

    def exec(self, *argv: str, user: str = "root") -> subprocess.CompletedProcess[str]:
        return run("podman", "exec", "--user", user, self.container, *argv, check=False,
                   env=self.env)

    def sdk(self) -> Kernel:
        return Kernel(api_key=self.token, base_url=self.api, max_retries=0, timeout=60)


def podman_env(tmp: Path) -> dict[str, str]:
    conf = tmp / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def moved_env(api_port: int, display: int) -> dict[str, str]:
    """Free ports and display on the shared host network (see the module docstring)."""
    return {
        "AGENT_PORT": str(api_port),
        "AGENT_CDP_PROXY_PORT": str(free_port()),
        "AGENT_CDP_ADDRESS": f"127.0.0.1:{free_port()}",
        "AGENT_DISPLAY": f":{display}",
        "XVFB_SCREEN": f"{SCREEN_W}x{SCREEN_H}x24",
    }


def wait_healthy(target: Deployed, logs: Any, timeout: float = 90) -> float:
    try:
        wait_until(lambda: target.health() == 200, timeout=timeout, interval=0.05,
                   what="/health 200")
    except AssertionError:
        print(logs()[-4000:])
        raise
    return time.monotonic() - target.started_at


def read_token(target: Deployed, raw: str) -> str:
    """The token as the daemon reads it from the mounted file (root can read it)."""
    held = target.exec("cat", TOKEN_PATH)
    assert held.returncode == 0, held.stderr
    token = held.stdout.strip()
    # Kubernetes writes the decoded value; podman 4.3 writes `data` undecoded.
    assert token in (raw, base64.b64encode(raw.encode()).decode()), token
    return token


def cgroup_figures(target: Deployed) -> tuple[int, int]:
    """(working-set memory in bytes, CPU time in microseconds) of the container's cgroup:
    memory as the kubelet counts it against limits (usage less inactive page cache)."""
    path = run("podman", "inspect", "--format", "{{.State.CgroupPath}}", target.container,
               env=target.env).stdout.strip().lstrip("/")
    root = Path("/sys/fs/cgroup")
    if (root / path / "memory.current").exists():  # cgroup v2
        stat = dict(line.split() for line in (root / path / "memory.stat").read_text()
                    .splitlines())
        memory = int((root / path / "memory.current").read_text()) - int(stat["inactive_file"])
        cpu = dict(line.split() for line in (root / path / "cpu.stat").read_text()
                   .splitlines())
        return memory, int(cpu["usage_usec"])
    stat = dict(line.split() for line in (root / "memory" / path / "memory.stat").read_text()
                .splitlines())
    usage = int((root / "memory" / path / "memory.usage_in_bytes").read_text())
    cpu_ns = int((root / "cpuacct" / path / "cpuacct.usage").read_text())
    return usage - int(stat["total_inactive_file"]), cpu_ns // 1000


# --- Kubernetes: the StatefulSet's pod with its Secret ------------------------------------


@pytest.fixture(scope="module")
def pod(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Deployed]:
    tmp = tmp_path_factory.mktemp("kube")
    env = podman_env(tmp)
    docs = manifests()
    raw_token = secrets.token_hex(24)
    secret = copy.deepcopy(docs["Secret"])
    secret.pop("stringData", None)
    secret["data"] = {"api-token": base64.b64encode(raw_token.encode()).decode()}
    secret_name = secret["metadata"]["name"]
    (tmp / "secret.yaml").write_text(yaml.safe_dump(secret))

    template = copy.deepcopy(docs["StatefulSet"]["spec"]["template"])
    spec = template["spec"]
    spec["hostNetwork"] = True
    container = spec["containers"][0]
    container["image"] = images["supervisord"]
    api_port, display = free_port(), reserve_display()
    overrides = moved_env(api_port, display)
    container["env"] = [e for e in container["env"] if e["name"] not in overrides] + [
        {"name": key, "value": value} for key, value in overrides.items()]
    # Host networking takes no port mappings; the probes follow the moved API port.
    container.pop("ports")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        container[probe]["httpGet"]["port"] = api_port
    pod_doc = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": POD_NAME, "labels": template["metadata"]["labels"]},
               "spec": spec}
    pod_file = tmp / "pod.yaml"
    pod_file.write_text(yaml.safe_dump(pod_doc))

    target = Deployed(POD_NAME, f"{POD_NAME}-{container['name']}", api_port, display, env,
                      kube_file=pod_file)
    run("podman", "pod", "rm", "--force", POD_NAME, check=False, env=env)
    run("podman", "secret", "rm", secret_name, check=False, env=env)
    run("podman", "secret", "create", secret_name, str(tmp / "secret.yaml"), env=env)
    target.started_at = time.monotonic()
    try:
        run("podman", "kube", "play", str(pod_file), env=env)

        def logs() -> str:
            return run("podman", "logs", target.container, check=False, env=env).stderr

        took = wait_healthy(target, logs)
        target.token = read_token(target, raw_token)
        print(f"\n[deploy] kube pod {POD_NAME}: healthy {took:.2f}s after `kube play`")
        yield target
    finally:
        run("podman", "kube", "down", str(pod_file), check=False, env=env)
        run("podman", "pod", "rm", "--force", POD_NAME, check=False, env=env)
        run("podman", "secret", "rm", secret_name, check=False, env=env)
        release_display(display)


def test_pod_id_comes_from_the_pod_name(pod: Deployed) -> None:
    result = pod.exec("sh", "-c", "tr '\\0' '\\n' < /proc/1/environ | grep ^AGENT_BROWSER_ID=")
    assert result.stdout.strip() == f"AGENT_BROWSER_ID={POD_NAME}", result.stdout


def test_sdk_drives_the_pod_by_its_name(pod: Deployed) -> None:
    with pod.sdk() as client:
        shot = client.browsers.computer.capture_screenshot(POD_NAME)
        png = shot.read()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        from io import BytesIO

        from PIL import Image
        assert Image.open(BytesIO(png)).size == (SCREEN_W, SCREEN_H)

        result = client.browsers.process.exec(POD_NAME, command="id", args=["-un"])
        assert result.exit_code == 0
        assert base64.b64decode(result.stdout_b64 or "") == b"browser\n"

        client.browsers.fs.write_file(POD_NAME, contents=b"deployed\n",
                                      path="/home/browser/deploy.txt")
        assert client.browsers.fs.read_file(POD_NAME, path="/home/browser/deploy.txt"
                                            ).read() == b"deployed\n"
        owner = pod.exec("stat", "-c", "%U", "/home/browser/deploy.txt").stdout.strip()
        assert owner == "browser"

        with pytest.raises(NotFoundError):
            client.browsers.process.exec("browser-1", command="true")


def test_token_is_only_in_the_root_only_file(pod: Deployed) -> None:
    assert pod.health() == 200
    assert pod.health(token="wrong-token-wrong-token") == 401
    assert pod.health(token=pod.token) == 200
    # In no process's environment, whoever runs it.
    environs = pod.exec("sh", "-c", "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'")
    assert environs.returncode == 0 and "AGENT_BROWSER_ID" in environs.stdout
    assert pod.token not in environs.stdout
    config_env = run("podman", "inspect", "--format", "{{json .Config.Env}}", pod.container,
                     env=pod.env).stdout
    assert pod.token not in config_env
    # The browser user (what a compromised renderer becomes) cannot read the file.
    as_browser = pod.exec("cat", TOKEN_PATH, user="browser")
    assert as_browser.returncode != 0 and pod.token not in as_browser.stdout


def test_pod_runs_with_the_declared_capabilities_only(pod: Deployed) -> None:
    status = pod.exec("grep", "-E", "^(CapBnd|NoNewPrivs):", "/proc/1/status").stdout
    fields = dict(line.split(":\t") for line in status.strip().splitlines())
    assert fields["NoNewPrivs"] == "1"
    # CHOWN 0, DAC_OVERRIDE 1, DAC_READ_SEARCH 2, FOWNER 3, KILL 5, SETGID 6, SETUID 7,
    # SYS_CHROOT 18
    assert int(fields["CapBnd"], 16) == 0b11101111 | 1 << 18, fields


def test_resource_figures(pod: Deployed) -> None:
    """Idle and busy memory and CPU of one browser, the figures the manifest's requests
    and limits come from (printed; the README quotes them)."""
    idle_mem, cpu0 = cgroup_figures(pod)
    t0 = time.monotonic()
    peak = idle_mem
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.2):
            peak = max(peak, cgroup_figures(pod)[0])

    sampler = threading.Thread(target=sample)
    sampler.start()
    # A fixed amount of work, within the default rate limits' bursts (500 writes, 1000
    # reads): what an agent does in a busy stretch, as fast as the machine allows.
    actions = 0
    try:
        with pod.sdk() as client:
            while actions < PAIRS:
                client.browsers.computer.capture_screenshot(POD_NAME).read()
                client.browsers.computer.click_mouse(POD_NAME, x=200 + actions % 400, y=300)
                actions += 1
    finally:
        stop.set()
        sampler.join()
    busy_mem, cpu1 = cgroup_figures(pod)
    took = time.monotonic() - t0
    cores = (cpu1 - cpu0) / 1e6 / took
    print(f"\n[deploy] one browser: memory idle {idle_mem / 2**20:.0f} MiB, during a "
          f"screenshot+click loop peak {max(peak, busy_mem) / 2**20:.0f} MiB; CPU during the "
          f"loop {cores:.2f} cores ({actions} screenshot+click pairs in {took:.1f} s)")
    assert actions > 0


def test_kube_down_stops_cleanly(pod: Deployed) -> None:
    """The pod's stop (SIGTERM to supervisord, as the kubelet sends it) ends every program
    by itself, then `kube down` removes the pod."""
    started = time.monotonic()
    run("podman", "pod", "stop", "--time", "30", POD_NAME, env=pod.env, timeout=60)
    took = time.monotonic() - started
    code = run("podman", "inspect", "--format", "{{.State.ExitCode}}", pod.container,
               env=pod.env).stdout.strip()
    logs = run("podman", "logs", pod.container, check=False, env=pod.env)
    text = logs.stdout + logs.stderr
    print(f"\n[deploy] pod stopped in {took:.2f}s (exit {code})")
    assert code == "0", text[-3000:]
    assert "killing '" not in text[text.index("received SIGTERM"):]
    assert took < 10
    assert pod.kube_file is not None
    run("podman", "kube", "down", str(pod.kube_file), env=pod.env)
    assert run("podman", "pod", "exists", POD_NAME, check=False, env=pod.env).returncode == 1


# --- Compose -------------------------------------------------------------------------------


@pytest.fixture
def composed(images: dict[str, str], tmp_path: Path) -> Iterator[Deployed]:
    env = podman_env(tmp_path)
    token = secrets.token_hex(24)
    token_file = tmp_path / "api-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    api_port, display = free_port(), reserve_display()
    # Host networking (see the module docstring): the published ports are reset.
    moved = "".join(f"      {key}: {value!r}\n" for key, value in
                    moved_env(api_port, display).items())
    (tmp_path / "override.yaml").write_text(
        "services:\n  browser:\n    network_mode: host\n    ports: !reset []\n"
        f"    environment:\n{moved}")
    project = f"browser-agent-test-{os.getpid()}"
    env.update(BROWSER_AGENT_IMAGE=images["supervisord"],
               BROWSER_AGENT_TOKEN_FILE=str(token_file))
    compose = (str(Path(sys.executable).parent / "podman-compose"), "-p", project,
               "-f", str(COMPOSE_FILE), "-f", str(tmp_path / "override.yaml"))
    target = Deployed("browser-0", "", api_port, display, env, token=token)
    target.started_at = time.monotonic()
    try:
        run(*compose, "up", "-d", env=env)
        listed = run("podman", "ps", "--filter",
                     f"label=io.podman.compose.project={project}", "--format", "{{.Names}}",
                     env=env)
        target.container = listed.stdout.split()[0]

        def logs() -> str:
            return run("podman", "logs", target.container, check=False, env=env).stderr

        took = wait_healthy(target, logs)
        print(f"\n[deploy] compose service: healthy {took:.2f}s after `up -d`")
        yield target
    finally:
        run(*compose, "down", check=False, env=env, timeout=120)
        release_display(display)


def test_compose_runs_one_browser(composed: Deployed) -> None:
    assert composed.health(token=composed.token) == 200
    with composed.sdk() as client:
        result = client.browsers.process.exec("browser-0", command="id", args=["-un"])
        assert base64.b64decode(result.stdout_b64 or "") == b"browser\n"
        with pytest.raises(NotFoundError):
            client.browsers.process.exec("another", command="true")
    environs = composed.exec("sh", "-c", "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'")
    assert composed.token not in environs.stdout
    as_browser = composed.exec("cat", "/run/secrets/api-token", user="browser")
    assert as_browser.returncode != 0
    config = json.loads(run("podman", "inspect", composed.container, env=composed.env).stdout)
    assert config[0]["HostConfig"]["ShmSize"] >= 2**30
