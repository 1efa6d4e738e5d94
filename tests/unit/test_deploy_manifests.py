"""The deployment manifests validate against a current Kubernetes schema (offline, with
kubernetes-validate), and hold the settings the README promises orchestrators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBE_DIR = REPO / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.37"


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(KUBE_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((path.name, doc))
    return found


def by_kind(kind: str) -> dict[str, Any]:
    return next(doc for _, doc in documents() if doc["kind"] == kind)


RESOURCES = [d for d in documents() if d[1]["kind"] != "Kustomization"]


@pytest.mark.parametrize(("name", "doc"), RESOURCES,
                         ids=lambda value: value if isinstance(value, str) else value["kind"])
def test_manifest_validates_strictly(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(by_kind("Kustomization")["resources"])
    assert listed == {p.name for p in KUBE_DIR.glob("*.yaml")} - {"kustomization.yaml"}


def test_statefulset_wires_identity_token_and_shm() -> None:
    sts = by_kind("StatefulSet")
    assert sts["spec"]["serviceName"] == by_kind("Service")["metadata"]["name"]
    assert by_kind("Service")["spec"]["clusterIP"] == "None"  # headless: per-pod DNS
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["AGENT_BROWSER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The pod's DNS names pass the Host check (names after the browser id, as expanded).
    assert env["AGENT_ALLOWED_HOSTS"]["value"].startswith("$(AGENT_BROWSER_ID).browsers,")
    # The token comes from a file on a Secret volume, never from the environment.
    assert "AGENT_API_TOKEN" not in env and "AGENT_API_TOKENS" not in env
    assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in container["env"])
    token_file = env["AGENT_API_TOKEN_FILE"]["value"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret_mount = next(m for m in mounts.values()
                        if "secret" in volumes[m["name"]])
    assert token_file.startswith(secret_mount["mountPath"] + "/")
    assert volumes[secret_mount["name"]]["secret"]["secretName"] == \
        by_kind("Secret")["metadata"]["name"]
    assert volumes[mounts["dshm"]["name"]]["emptyDir"]["medium"] == "Memory"
    assert mounts["dshm"]["mountPath"] == "/dev/shm"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "SYS_ADMIN" not in security["capabilities"]["add"]
