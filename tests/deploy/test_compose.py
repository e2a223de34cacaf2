"""docker-compose.yml and its CPU override, validated by docker-compose."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

RESET = object()


class ComposeLoader(yaml.SafeLoader):
    """Understands Compose v2's `!reset` (Debian's docker-compose 1.29 does not)."""


ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)


def compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip(
            "docker-compose is not installed (make install installs it with apt-get where it can)"
        )
    return exe


def config(*files: Path) -> dict[str, Any]:
    args = [compose(), "--env-file", str(ROOT / ".env.example"), "--project-directory", str(ROOT)]
    for f in files:
        args += ["-f", str(f)]
    result = subprocess.run([*args, "config"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def merge(base: Any, override: Any) -> Any:
    """Compose v2's merge: mappings merge, `!reset` removes, other values replace."""
    if override is RESET:
        return RESET
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            merged = merge(base.get(key), value)
            if merged is RESET:
                out.pop(key, None)
            else:
                out[key] = merged
        return out
    return override


def test_base_compose_is_valid_and_complete() -> None:
    cfg = config(ROOT / "docker-compose.yml")
    services = cfg["services"]
    assert set(services) == {
        "etcd",
        "minio",
        "milvus",
        "mysql",
        "embedder",
        "index",
        "gateway",
        "web",
    }
    for name, svc in services.items():
        assert "healthcheck" in svc, f"{name} has no health check"
    embedder = services["embedder"]
    (device,) = embedder["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "ports" not in embedder, "a fixed host port would break --scale embedder=N"
    assert "imagesearch.healthcheck" in " ".join(embedder["healthcheck"]["test"])
    gateway = services["gateway"]
    assert gateway["environment"]["GATEWAY_EMBEDDER_ADDR"] == "dns:///embedder:50052"
    # Published on loopback by default.
    assert published_ports(gateway) == [("127.0.0.1", "50051", "50051")]
    assert published_ports(services["web"]) == [("127.0.0.1", "8080", "8080")]
    assert services["web"]["environment"]["WEB_GATEWAY_ADDR"] == "gateway:50051"
    assert "web_service.healthcheck" in " ".join(services["web"]["healthcheck"]["test"])
    # Only the gateway and the web face are published.
    assert {n for n, svc in services.items() if svc.get("ports")} == {"gateway", "web"}
    for svc, deps in {
        "web": ["gateway"],
        "gateway": ["embedder", "index"],
        "index": ["milvus", "mysql"],
        "milvus": ["etcd", "minio"],
    }.items():
        for dep in deps:
            assert services[svc]["depends_on"][dep]["condition"] == "service_healthy", (svc, dep)
    assert services["index"]["environment"]["INDEX_MILVUS_URI"] == "http://milvus:19530"
    assert services["index"]["environment"]["INDEX_DATABASE_URL"].startswith("mysql+pymysql://")


def published_ports(svc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host, published, target) of each port. docker-compose v1 prints a port with
    a host address in the short form, HOST:PUBLISHED:TARGET/PROTO; v2 as a mapping."""
    out = []
    for published in svc.get("ports", []):
        if isinstance(published, str):
            host, outside, inside = published.split("/")[0].split(":")
        else:
            host, outside, inside = (
                published["host_ip"],
                published["published"],
                published["target"],
            )
        out.append((host, str(outside), str(inside)))
    return out


def test_secrets_come_from_an_uncommitted_env_file() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "MYSQL_PASSWORD: ${MYSQL_PASSWORD:?" in text
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    tracked = subprocess.run(
        ["git", "ls-files", ".env"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert tracked.strip() == ""


def test_cpu_override_removes_the_gpu(tmp_path: Path) -> None:
    base = yaml.load((ROOT / "docker-compose.yml").read_text(), Loader=ComposeLoader)
    override = yaml.load((ROOT / "docker-compose.cpu.yml").read_text(), Loader=ComposeLoader)
    merged = merge(base, override)
    out = tmp_path / "docker-compose.cpu-merged.yml"
    out.write_text(yaml.safe_dump(merged))
    (tmp_path / "Dockerfile").write_text((ROOT / "Dockerfile").read_text())
    cfg = config(out)
    embedder = cfg["services"]["embedder"]
    assert "devices" not in embedder.get("deploy", {}).get("resources", {}).get("reservations", {})
    assert embedder["environment"]["EMBEDDER_DEVICE"] == "cpu"


def test_our_services_have_memory_limits() -> None:
    services = config(ROOT / "docker-compose.yml")["services"]
    for name in ("embedder", "index", "gateway", "web"):
        assert services[name]["deploy"]["resources"]["limits"]["memory"], name


def test_secure_override_runs_every_hop_over_tls(tmp_path: Path) -> None:
    """docker-compose.secure.yml: TLS on all three, mTLS inward, tokens, with
    the files `imgsearch certs` writes, and health checks on the plaintext
    health-only ports."""
    from imagesearch.tls import LocalPki

    pki = LocalPki(Path("/x"))
    made = [n for n, p in vars(LocalPki).items() if isinstance(p, property)]
    names = {getattr(pki, n).name for n in made} | {"tokens"}
    services = config(ROOT / "docker-compose.yml", ROOT / "docker-compose.secure.yml")["services"]
    for name, prefix in (("embedder", "EMBEDDER_"), ("index", "INDEX_"), ("gateway", "GATEWAY_")):
        svc = services[name]
        env = svc["environment"]
        files = {k: v for k, v in env.items() if k.startswith(prefix) and v.startswith("/etc/")}
        assert {f"{prefix}TLS_CERT", f"{prefix}TLS_KEY"} <= set(files), name
        for path in files.values():
            assert path.startswith("/etc/imagesearch/tls/") and Path(path).name in names, path
        mounts = [v if isinstance(v, str) else v["target"] for v in svc["volumes"]]
        assert any("/etc/imagesearch/tls" in m for m in mounts), name
        assert svc["healthcheck"]["test"][4] == env[f"{prefix}HEALTH_PORT"], name
    assert services["embedder"]["environment"]["EMBEDDER_TLS_CLIENT_CA"].endswith("ca.pem")
    assert services["index"]["environment"]["INDEX_TLS_CLIENT_CA"].endswith("ca.pem")
    gateway = services["gateway"]["environment"]
    assert {"GATEWAY_BACKEND_TLS_CA", "GATEWAY_BACKEND_TLS_CERT", "GATEWAY_TOKENS_FILE"} <= set(
        gateway
    )
    assert "certs/" in (ROOT / ".gitignore").read_text().split()
    web = services["web"]["environment"]
    assert web["WEB_TLS_CERT"].endswith("server.pem") and web["WEB_GATEWAY_CA"].endswith("ca.pem")


def test_composed_override_adds_a_tirg_embedder_the_gateway_routes_to() -> None:
    """docker-compose.composed.yml: a second embedder serving tirg_css, which
    the gateway's GATEWAY_EMBEDDERS names; both environments load with the
    services' own settings."""
    from embedder_service.settings import EmbedderSettings
    from gateway.settings import GatewaySettings
    from imagesearch.settings import load_settings

    services = config(ROOT / "docker-compose.yml", ROOT / "docker-compose.composed.yml")["services"]
    tirg = services["embedder-tirg"]
    settings = load_settings(EmbedderSettings, "EMBEDDER_", env=tirg["environment"])
    assert settings.model == "tirg_css"
    assert "ports" not in tirg and tirg["deploy"]["resources"]["limits"]["memory"]
    assert "imagesearch.healthcheck" in " ".join(tirg["healthcheck"]["test"])
    gateway = services["gateway"]
    routes = load_settings(GatewaySettings, "GATEWAY_", env=gateway["environment"]).embedder_routes
    assert routes == {"tirg_css": "dns:///embedder-tirg:50052"}
    assert gateway["depends_on"]["embedder-tirg"]["condition"] == "service_healthy"
    # The default embedder and everything else are as in the base file.
    assert gateway["environment"]["GATEWAY_EMBEDDER_ADDR"] == "dns:///embedder:50052"
    assert set(services) - {"embedder-tirg"} == set(config(ROOT / "docker-compose.yml")["services"])
