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
        "nats",
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
    # Published on loopback by default; a range, so that --scale gateway=N works.
    assert published_ports(gateway) == [("127.0.0.1", "50051-50054", "50051")]
    assert published_ports(services["web"]) == [("127.0.0.1", "8080", "8080")]
    # Gateways keep no state of their own: jobs live in NATS, the web face
    # reaches every replica by DNS with round_robin.
    assert gateway["environment"]["GATEWAY_JOBS_URL"] == "nats://nats:4222"
    assert not [v for v in gateway.get("volumes", []) if "/data/jobs" in str(v)]
    assert services["web"]["environment"]["WEB_GATEWAY_ADDR"] == "dns:///gateway:50051"
    nats = services["nats"]
    assert "-js" in nats["command"] and nats["volumes"]
    # NATS asks for the password the gateways send (both from secret files).
    command = nats["command"]
    assert command[command.index("-c") + 1] == "/run/secrets/nats.conf"
    assert gateway["environment"]["GATEWAY_JOBS_PASSWORD_FILE"] == "/run/secrets/nats-password"
    assert "web_service.healthcheck" in " ".join(services["web"]["healthcheck"]["test"])
    # Only the gateway and the web face are published.
    assert {n for n, svc in services.items() if svc.get("ports")} == {"gateway", "web"}
    for svc, deps in {
        "web": ["gateway"],
        "gateway": ["embedder", "index", "nats"],
        "index": ["milvus", "mysql"],
        "milvus": ["etcd", "minio"],
    }.items():
        for dep in deps:
            assert services[svc]["depends_on"][dep]["condition"] == "service_healthy", (svc, dep)
    assert services["index"]["environment"]["INDEX_MILVUS_URI"] == "http://milvus:19530"
    assert services["index"]["environment"]["INDEX_DATABASE_URL_FILE"].startswith("/run/secrets/")


# Who may reach whom: each network and the services on it.
NETWORKS = {
    "front": {"web", "gateway"},
    "jobs": {"nats", "gateway"},
    "backend": {"gateway", "embedder", "index", "index-reader", "embedder-tirg"},
    "storage": {"index", "index-reader", "milvus", "mysql", "etcd", "minio"},
    "egress": {"embedder"},
}


def test_networks_let_each_service_reach_only_what_it_calls() -> None:
    """The web face reaches only the gateways; the gateways NATS, the
    embedders and the index; only the index Milvus and MySQL. Every overlay
    merged, nobody sits on the default network."""
    cfg = config(
        ROOT / "docker-compose.yml",
        ROOT / "docker-compose.readers.yml",
        ROOT / "docker-compose.composed.yml",
        ROOT / "docker-compose.secure.yml",
        ROOT / "docker-compose.secure-readers.yml",
    )
    services = cfg["services"]
    for network, members in NETWORKS.items():
        on = {n for n, svc in services.items() if network in (svc.get("networks") or {})}
        assert on == members & set(services), network
    for name, svc in services.items():
        assert set(svc.get("networks") or {}) <= set(NETWORKS), name  # no default network
    for internal in ("jobs", "backend", "storage"):
        assert cfg["networks"][internal]["internal"] is True, internal
    assert set(services["web"]["networks"]) == {"front"}
    for store in ("milvus", "mysql"):
        assert set(services[store]["networks"]) == {"storage"}


def test_database_and_nats_passwords_are_files_never_environment() -> None:
    """Every password of ours comes from a secret file; none is in an
    environment or a command, and the readers use their SELECT-only user."""
    cfg = config(ROOT / "docker-compose.yml", ROOT / "docker-compose.readers.yml")
    services = cfg["services"]
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            assert "PASSWORD" not in key or key.endswith("_FILE"), (name, key)
            assert "mysql+pymysql://" not in str(value) and "@nats" not in str(value), name
    assert services["index"]["environment"]["INDEX_DATABASE_URL_FILE"] == (
        "/run/secrets/index-database-url"
    )
    assert services["index-reader"]["environment"]["INDEX_DATABASE_URL_FILE"] == (
        "/run/secrets/index-reader-database-url"
    )
    assert {s["source"] if isinstance(s, dict) else s for s in services["index"]["secrets"]} == {
        "index-database-url",
        "milvus-token",
    }
    mysql = services["mysql"]
    assert mysql["environment"]["MYSQL_ROOT_PASSWORD_FILE"] == "/run/secrets/mysql-root-password"
    init = [str(v) for v in mysql["volumes"] if "docker-entrypoint-initdb.d" in str(v)]
    assert init and "reader-user.sh" in init[0]
    for secret in cfg["secrets"].values():
        assert "/secrets/" in secret["file"]
    # Milvus with authentication, its root password from the same folder; the
    # index and the readers send the token from a file.
    milvus = [str(v) for v in services["milvus"]["volumes"] if "user.yaml" in str(v)]
    assert milvus and "milvus-user.yaml" in milvus[0] and "/milvus/configs/user.yaml" in milvus[0]
    for index in ("index", "index-reader"):
        env = services[index]["environment"]
        assert env["INDEX_MILVUS_TOKEN_FILE"] == "/run/secrets/milvus-token", index


def mounted(env: dict[str, Any], folder: Path) -> dict[str, str]:
    """A service's environment with its /run/secrets files made (imgsearch
    secrets) under ``folder``, as compose would mount them."""
    from imgsearch.deploy_secrets import make_secrets

    make_secrets(folder)
    return {
        k: str(folder / str(v).removeprefix("/run/secrets/"))
        if str(v).startswith("/run/secrets/")
        else str(v)
        for k, v in env.items()
    }


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


def test_secrets_come_from_uncommitted_files() -> None:
    assert {".env", "secrets/"} <= set((ROOT / ".gitignore").read_text().split())
    tracked = subprocess.run(
        ["git", "ls-files", ".env", "secrets"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert tracked.strip() == ""


def test_imgsearch_secrets_makes_each_password_once(tmp_path: Path) -> None:
    from imgsearch.deploy_secrets import make_secrets

    folder = tmp_path / "secrets"
    made, kept = make_secrets(folder)
    assert not kept and {p.name for p in made} == {
        "mysql-root-password",
        "mysql-password",
        "mysql-reader-password",
        "index-database-url",
        "index-reader-database-url",
        "nats-password",
        "nats.conf",
        "milvus-password",
        "milvus-token",
        "milvus-user.yaml",
    }
    writer = (folder / "mysql-password").read_text().strip()
    reader = (folder / "mysql-reader-password").read_text().strip()
    assert len({writer, reader, (folder / "nats-password").read_text()}) == 3
    assert f"imagesearch:{writer}@mysql:3306" in (folder / "index-database-url").read_text()
    assert f"imagesearch_reader:{reader}@" in (folder / "index-reader-database-url").read_text()
    nats = (folder / "nats-password").read_text().strip()
    assert f'password: "{nats}"' in (folder / "nats.conf").read_text()
    milvus = (folder / "milvus-password").read_text().strip()
    assert (folder / "milvus-token").read_text().strip() == f"root:{milvus}"
    user = yaml.safe_load((folder / "milvus-user.yaml").read_text())["common"]["security"]
    assert user == {"authorizationEnabled": True, "defaultRootPassword": milvus}
    assert folder.stat().st_mode & 0o077 == 0
    # Run again: nothing changes (the databases were made with these).
    (folder / "index-database-url").unlink()
    made, kept = make_secrets(folder)
    assert [p.name for p in made] == ["index-database-url"] and len(kept) == 9
    assert f"imagesearch:{writer}@" in (folder / "index-database-url").read_text()


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
    from imagesearch.tls import GATEWAY_CLIENT_NAME, LocalPki

    pki = LocalPki(Path("/x"))
    services = config(ROOT / "docker-compose.yml", ROOT / "docker-compose.secure.yml")["services"]
    # Each service mounts its own certificate and key and the CA; the gateway
    # also its client certificate and the tokens: no service holds another's key.
    own = {
        name: {"ca.pem", pki.service_cert(name).name, pki.service_key(name).name}
        for name in ("embedder", "index", "gateway", "web")
    }
    own["gateway"] |= {pki.client_cert.name, pki.client_key.name, "tokens"}
    for name, files in own.items():
        svc = services[name]
        mounted = {
            Path(v["target"] if isinstance(v, dict) else v.split(":")[1]).name: v
            for v in svc["volumes"]
            if "/etc/imagesearch" in str(v)
        }
        assert set(mounted) == files, name
        # Hardened: nothing written outside volumes and /tmp, no capabilities.
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        prefix = f"{name.upper()}_"
        env = svc["environment"]
        for key, path in env.items():
            if key.startswith(prefix) and str(path).startswith("/etc/"):
                assert Path(path).name in files, (key, path)
        assert env[f"{prefix}TLS_CERT"].endswith(f"/{name}.pem"), name
    for name, prefix in (("embedder", "EMBEDDER_"), ("index", "INDEX_"), ("gateway", "GATEWAY_")):
        env = services[name]["environment"]
        assert services[name]["healthcheck"]["test"][4] == env[f"{prefix}HEALTH_PORT"], name
    for name, prefix in (("embedder", "EMBEDDER_"), ("index", "INDEX_")):
        env = services[name]["environment"]
        assert env[f"{prefix}TLS_CLIENT_CA"].endswith("ca.pem")
        assert env[f"{prefix}TLS_CLIENT_NAMES"] == GATEWAY_CLIENT_NAME
    gateway = services["gateway"]["environment"]
    assert {"GATEWAY_BACKEND_TLS_CA", "GATEWAY_BACKEND_TLS_CERT", "GATEWAY_TOKENS_FILE"} <= set(
        gateway
    )
    assert "certs/" in (ROOT / ".gitignore").read_text().split()
    assert services["web"]["environment"]["WEB_GATEWAY_CA"].endswith("ca.pem")


def test_secure_and_readers_together_leave_no_hop_in_plaintext() -> None:
    """With the readers and the secure overlay merged, the gateway dialled the
    readers with TLS while they listened in plaintext, and NATS spoke
    plaintext. With docker-compose.secure-readers.yml last, every gRPC server
    serves TLS with a key of its own, and NATS serves TLS the gateways verify."""
    files = ("docker-compose.yml", "docker-compose.readers.yml", "docker-compose.secure.yml")
    services = config(*(ROOT / f for f in (*files, "docker-compose.secure-readers.yml")))[
        "services"
    ]
    keys: dict[str, str] = {}
    for name, prefix in (
        ("embedder", "EMBEDDER_"),
        ("index", "INDEX_"),
        ("index-reader", "INDEX_"),
        ("gateway", "GATEWAY_"),
    ):
        svc = services[name]
        env = svc["environment"]
        assert env[f"{prefix}TLS_CERT"].endswith(f"/{name}.pem"), name
        keys[name] = env[f"{prefix}TLS_KEY"]
        mounted = " ".join(str(v) for v in svc["volumes"])
        for other in {"embedder", "index", "index-reader", "gateway", "web", "nats"} - {name}:
            assert f"/{other}-key.pem" not in mounted, (name, other)
        if name != "gateway":
            assert env[f"{prefix}TLS_CLIENT_NAMES"] == "imagesearch gateway", name
            health = svc["healthcheck"]["test"]
            assert health[4] == env[f"{prefix}HEALTH_PORT"], name
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
    assert len(set(keys.values())) == len(keys)
    command = services["nats"]["command"]
    assert "--tls" in command and command[command.index("--tlskey") + 1].endswith("nats-key.pem")
    gateway = services["gateway"]["environment"]
    assert gateway["GATEWAY_JOBS_URL"] == "tls://nats:4222"
    assert gateway["GATEWAY_JOBS_PASSWORD_FILE"] == "/run/secrets/nats-password"
    assert gateway["GATEWAY_JOBS_TLS_CA"].endswith("ca.pem")
    assert gateway["GATEWAY_INDEX_READ_ADDR"] == "dns:///index-reader:50053"


@pytest.mark.processes  # imgsearch certs
def test_imgsearch_certs_makes_one_key_per_service(tmp_path: Path) -> None:
    """The files the secure compose file mounts are the ones the command makes."""
    import subprocess

    from cryptography import x509

    from imagesearch.tls import LocalPki
    from tests.conftest import VENV_BIN

    args = [str(VENV_BIN / "imgsearch"), "certs", str(tmp_path)]
    for service in ("embedder", "index", "gateway", "web", "nats", "index-reader"):
        args += ["--service", service]
    made = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    pki = LocalPki(tmp_path)
    keys = set()
    for service in ("embedder", "index", "gateway", "web"):
        cert = x509.load_pem_x509_certificate(pki.service_cert(service).read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert service in names.get_values_for_type(x509.DNSName)
        keys.add(pki.service_key(service).read_bytes())
        assert pki.service_key(service).stat().st_mode & 0o077 == 0
    assert len(keys) == 4


def test_composed_override_adds_a_tirg_embedder_the_gateway_routes_to(tmp_path: Path) -> None:
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
    env = mounted(gateway["environment"], tmp_path)
    routes = load_settings(GatewaySettings, "GATEWAY_", env=env).embedder_routes
    assert routes == {"tirg_css": "dns:///embedder-tirg:50052"}
    assert gateway["depends_on"]["embedder-tirg"]["condition"] == "service_healthy"
    # The default embedder and everything else are as in the base file.
    assert gateway["environment"]["GATEWAY_EMBEDDER_ADDR"] == "dns:///embedder:50052"
    assert set(services) - {"embedder-tirg"} == set(config(ROOT / "docker-compose.yml")["services"])


def test_readers_override_adds_index_readers_the_gateway_reads_from(tmp_path: Path) -> None:
    """docker-compose.readers.yml: index readers on the writer's Milvus and
    MySQL; the gateway reads from them and writes to the writer."""
    from gateway.settings import GatewaySettings
    from imagesearch.settings import load_settings
    from index_service.settings import IndexSettings

    base = config(ROOT / "docker-compose.yml")["services"]
    services = config(ROOT / "docker-compose.yml", ROOT / "docker-compose.readers.yml")["services"]
    reader = services["index-reader"]
    settings = load_settings(IndexSettings, "INDEX_", env=mounted(reader["environment"], tmp_path))
    writer_env = mounted(services["index"]["environment"], tmp_path)
    writer = load_settings(IndexSettings, "INDEX_", env=writer_env)
    assert (settings.role, writer.role) == ("reader", "writer")
    # Readers' connections age out (gateways spread over new ones); the writer's not.
    assert settings.max_connection_age_s > 0 and writer.max_connection_age_s == 0
    assert settings.milvus_uri == writer.milvus_uri
    # The same database; the readers as imagesearch_reader (SELECT only).
    assert settings.database_url.split("@")[1] == writer.database_url.split("@")[1]
    assert settings.database_url.startswith("mysql+pymysql://imagesearch_reader:")
    assert "ports" not in reader and reader["deploy"]["resources"]["limits"]["memory"]
    assert reader["depends_on"]["index"]["condition"] == "service_healthy"
    gateway_env = mounted(services["gateway"]["environment"], tmp_path)
    gateway = load_settings(GatewaySettings, "GATEWAY_", env=gateway_env)
    assert (gateway.index_addr, gateway.index_read_addr) == (
        "index:50053",
        "dns:///index-reader:50053",
    )
    assert set(services) - {"index-reader"} == set(base)
