"""Kubernetes manifests validated against the Kubernetes schemas
(PyPI kubernetes-validate, which bundles them; no cluster needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.conftest import ROOT, VENV_BIN

K8S = ROOT / "deploy" / "k8s"


def docs() -> dict[tuple[str, str], dict]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def test_manifests_pass_strict_schema_validation() -> None:
    files = [str(p) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"]
    result = subprocess.run(
        [str(VENV_BIN / "kubernetes-validate"), "--strict", *files],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(docs())


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_embedder_gets_a_gpu_grpc_probes_hpa_and_headless_service() -> None:
    d = docs()
    pod = d[("Deployment", "embedder")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["grpc"]["port"] == 50052
    headless = d[("Service", "embedder-headless")]["spec"]
    assert headless["clusterIP"] == "None"
    hpa = d[("HorizontalPodAutoscaler", "embedder")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "embedder"
    config = d[("ConfigMap", "imagesearch")]["data"]
    assert config["GATEWAY_EMBEDDER_ADDR"] == "dns:///embedder-headless:50052"
    assert d[("Service", "milvus")]["spec"]["type"] == "ExternalName"
    for name in ("embedder", "index", "gateway"):
        spec = d[("Deployment", name)]["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True


def test_dockerfile_targets_run_as_non_root_with_health_checks() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for target in ("embedder", "index", "gateway"):
        stage = text.split(f"AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        assert (
            "USER app" in stage and "HEALTHCHECK" in stage and "imagesearch.healthcheck" in stage
        ), target
    assert Path(ROOT / ".dockerignore").exists()
