"""Kubernetes manifests validated against the Kubernetes schemas
(PyPI kubernetes-validate, which bundles them; no cluster needed)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
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
    config = d[("ConfigMap", "imagesearch")]["data"]
    # Probes use the plaintext health-only port (kubelet's grpc probes cannot TLS).
    assert container["readinessProbe"]["grpc"]["port"] == int(config["EMBEDDER_HEALTH_PORT"])
    headless = d[("Service", "embedder-headless")]["spec"]
    assert headless["clusterIP"] == "None"
    hpa = d[("HorizontalPodAutoscaler", "embedder")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "embedder"
    assert config["GATEWAY_EMBEDDER_ADDR"] == "dns:///embedder-headless:50052"
    assert d[("Service", "milvus")]["spec"]["type"] == "ExternalName"
    for name in ("embedder", "index", "gateway", "web"):
        spec = d[("Deployment", name)]["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True


def test_dockerfile_targets_run_as_non_root_with_health_checks() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for target, check in (
        ("embedder", "imagesearch.healthcheck"),
        ("index", "imagesearch.healthcheck"),
        ("gateway", "imagesearch.healthcheck"),
        ("web", "web_service.healthcheck"),
    ):
        stage = (text + "\n").split(f"AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        assert "USER app" in stage and "HEALTHCHECK" in stage and check in stage, target
    assert Path(ROOT / ".dockerignore").exists()


# -- security -----------------------------------------------------------------

OURS = ("embedder", "index", "gateway", "web")
NAMESPACE = {"kubernetes.io/metadata.name": "imagesearch"}
KUBE_SYSTEM = {"kubernetes.io/metadata.name": "kube-system"}


@dataclass(frozen=True)
class Pod:
    labels: dict[str, str]
    namespace: dict[str, str] = field(default_factory=lambda: NAMESPACE)
    external: bool = False  # an address outside the cluster (Milvus, MySQL, the internet)


def pod(name: str) -> Pod:
    return Pod(docs()[("Deployment", name)]["spec"]["template"]["metadata"]["labels"])


def matches(selector: dict | None, labels: dict[str, str]) -> bool:
    assert "matchExpressions" not in (selector or {}), "extend this test for matchExpressions"
    return all(labels.get(k) == v for k, v in (selector or {}).get("matchLabels", {}).items())


def peer_matches(peers: list[dict] | None, other: Pod) -> bool:
    if peers is None:  # no `from`/`to`: everybody
        return True
    for peer in peers:
        if "ipBlock" in peer:
            if other.external:
                return True
            continue
        if other.external:
            continue
        if "namespaceSelector" in peer:
            if not matches(peer["namespaceSelector"], other.namespace):
                continue
        elif other.namespace != NAMESPACE:  # a bare podSelector: this namespace only
            continue
        if matches(peer.get("podSelector"), other.labels):
            return True
    return False


def port_matches(ports: list[dict] | None, port: int, protocol: str) -> bool:
    return ports is None or any(
        p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports
    )


def allowed(src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    """Would the NetworkPolicies in deploy/k8s let ``src`` open ``dst:port``?"""
    policies = [d["spec"] for (kind, _), d in docs().items() if kind == "NetworkPolicy"]

    def side(selected: Pod, direction: str, rules_key: str, peers_key: str, other: Pod) -> bool:
        if selected.external or selected.namespace != NAMESPACE:
            return True  # not ours: no policy here applies
        applying = [
            p
            for p in policies
            if matches(p["podSelector"], selected.labels) and direction in p["policyTypes"]
        ]
        if not applying:
            return True
        return any(
            peer_matches(rule.get(peers_key), other)
            and port_matches(rule.get("ports"), port, protocol)
            for p in applying
            for rule in p.get(rules_key) or []
        )

    return side(src, "Egress", "egress", "to", dst) and side(dst, "Ingress", "ingress", "from", src)


def test_the_gateway_is_stateless_scaled_and_drained_one_at_a_time() -> None:
    d = docs()
    gateway = d[("Deployment", "gateway")]["spec"]
    assert gateway["replicas"] >= 2 and gateway["strategy"]["type"] == "RollingUpdate"
    volumes = gateway["template"]["spec"]["volumes"]
    claims = [v for v in volumes if "persistentVolumeClaim" in v]
    assert [v["name"] for v in claims] == ["images"]  # no job volume: jobs live in NATS
    # The jobs URL holds the NATS password: from a Secret, never the ConfigMap.
    assert "GATEWAY_JOBS_URL" not in d[("ConfigMap", "imagesearch")]["data"]
    (container,) = gateway["template"]["spec"]["containers"]
    # ... and as a file of it, never an environment value.
    assert "GATEWAY_JOBS_URL" not in {e["name"] for e in container["env"]}
    (url,) = [e for e in container["env"] if e["name"] == "GATEWAY_JOBS_URL_FILE"]
    (mount,) = [m for m in container["volumeMounts"] if url["value"].startswith(m["mountPath"])]
    (volume,) = [v for v in gateway["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "imagesearch-nats"
    assert volume["secret"]["items"] == [{"key": "url", "path": "url"}]
    values = yaml.safe_load((ROOT / "deploy/k8s/examples/nats-values.yaml").read_text())
    authorization = values["config"]["merge"]["authorization"]
    assert authorization["password"] == "<< $NATS_PASSWORD >>"
    secret = values["container"]["env"]["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "imagesearch-nats", "key": "password"}
    assert d[("HorizontalPodAutoscaler", "gateway")]["spec"]["minReplicas"] >= 2
    assert d[("PodDisruptionBudget", "gateway")]["spec"]["minAvailable"] == 1
    nats = Pod({"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": "nats"})
    assert allowed(pod("gateway"), nats, 4222)
    for name in ("web", "embedder", "index"):
        assert not allowed(pod(name), nats, 4222), name


@pytest.mark.slow
def test_network_policies_let_only_the_gateway_reach_the_internal_ports() -> None:
    embedder, index, gateway, web = (pod(n) for n in OURS)
    intruder = Pod({"app": "intruder"})
    prometheus = Pod(
        {"app.kubernetes.io/name": "prometheus"}, {"kubernetes.io/metadata.name": "monitoring"}
    )
    dns = Pod({"k8s-app": "kube-dns"}, KUBE_SYSTEM)
    outside = Pod({}, external=True)

    assert allowed(gateway, embedder, 50052) and allowed(gateway, index, 50053)
    for src in (intruder, embedder, index, prometheus, web):
        assert not allowed(src, embedder, 50052) or src == gateway
        assert not allowed(src, index, 50053)
    assert not allowed(index, embedder, 50052)
    # The public faces are open; of ours, only the web face talks to the gateway.
    assert allowed(intruder, gateway, 50051) and allowed(outside, gateway, 50051)
    assert allowed(intruder, web, 8080) and allowed(outside, web, 8080)
    assert allowed(web, gateway, 50051)
    assert not allowed(embedder, gateway, 50051)
    assert not allowed(gateway, web, 8080)
    assert not allowed(web, outside, 443) and not allowed(web, outside, 19530)
    assert allowed(web, dns, 53, "UDP")
    # Egress: only the index leaves the cluster, only to Milvus and MySQL.
    assert allowed(index, outside, 19530) and allowed(index, outside, 3306)
    for src, port in ((index, 443), (embedder, 443), (gateway, 19530), (embedder, 19530)):
        assert not allowed(src, outside, port), (src, port)
    for src in (gateway, index):
        assert allowed(src, dns, 53, "UDP") and allowed(src, dns, 53, "TCP")
    assert not allowed(embedder, dns, 53, "UDP")
    # Metrics: Prometheus only.
    for name, port in (("gateway", 9101), ("embedder", 9102), ("index", 9103)):
        assert allowed(prometheus, pod(name), port)
        assert not allowed(intruder, pod(name), port)


def test_every_policy_selects_our_pods() -> None:
    # NATS comes from its Helm chart; its policy selects the chart's pods.
    labels = [pod(n).labels for n in OURS] + [{"app.kubernetes.io/name": "nats"}]
    for (kind, name), d in docs().items():
        if kind == "NetworkPolicy":
            assert any(matches(d["spec"]["podSelector"], lab) for lab in labels), name


def test_pods_are_locked_down() -> None:
    d = docs()
    config = d[("ConfigMap", "imagesearch")]["data"]
    for name in OURS:
        spec = d[("Deployment", name)]["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["readOnlyRootFilesystem"] is True, name
            assert ctx["capabilities"]["drop"] == ["ALL"], name
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert "/tmp" in mounts, name
            for m in mounts.values():
                assert m["name"] in volumes, (name, m)
            # Every file the settings name lies on a mounted Secret.
            prefix = name.upper() + "_"
            for key, value in config.items():
                if key.startswith(prefix) and (key.endswith(("_CERT", "_KEY", "_CA", "_FILE"))):
                    mount = next(p for p in mounts if value.startswith(p + "/"))
                    assert "secret" in volumes[mounts[mount]["name"]], (key, value)
            if name == "web":  # HTTP probes: ready with the gateway, alive on its own
                assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
                assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
                assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
                continue
            # Probes use the health-only port, which the container declares.
            health = int(config[f"{prefix}HEALTH_PORT"])
            assert {"name": "health", "containerPort": health} in container["ports"]
            for probe in ("readinessProbe", "livenessProbe"):
                assert container[probe]["grpc"]["port"] == health, (name, probe)
    assert config["EMBEDDER_TLS_CLIENT_CA"] and config["INDEX_TLS_CLIENT_CA"]
    assert config["GATEWAY_BACKEND_TLS_CERT"] and config["GATEWAY_TOKENS_FILE"]
    # Services default to loopback: the manifests say where to listen.
    for prefix in ("EMBEDDER_", "INDEX_", "GATEWAY_", "WEB_"):
        assert config[f"{prefix}HOST"] == "0.0.0.0", prefix
    # Inward mTLS accepts only the gateway's certificate.
    from imagesearch.tls import GATEWAY_CLIENT_NAME

    assert config["EMBEDDER_TLS_CLIENT_NAMES"] == config["INDEX_TLS_CLIENT_NAMES"]
    assert config["INDEX_TLS_CLIENT_NAMES"] == GATEWAY_CLIENT_NAME
    certs = list(yaml.safe_load_all((K8S / "examples" / "cert-manager.yaml").read_text()))
    client = next(c for c in certs if c["metadata"]["name"] == "imagesearch-gateway-client-tls")
    assert client["spec"]["commonName"] == GATEWAY_CLIENT_NAME
    for service, name in OWN_CERTS.items():
        served = next(c for c in certs if c["metadata"]["name"] == f"imagesearch-{service}-tls")
        assert served["spec"]["dnsNames"] == [name, "localhost"], service
    web = next(c for c in certs if c["metadata"]["name"] == "imagesearch-web-tls")
    assert "web" in web["spec"]["dnsNames"] and "gateway" not in web["spec"]["dnsNames"]


# Each service's own certificate, and the name it is dialled by.
OWN_CERTS = {
    "embedder": "embedder-headless",
    "index": "index",
    "index-reader": "index-reader",
    "gateway": "gateway",
}


def test_each_pod_mounts_only_its_own_certificate_and_key() -> None:
    """The embedder, the index writer, the readers and the gateway shared one
    certificate and key (imagesearch-tls): any of them taken over could pose
    as the others. Each mounts its own now."""
    d = docs()
    mounted: dict[str, set[str]] = {}
    for deployment in ("embedder", "index", "index-reader", "gateway", "web"):
        spec = d[("Deployment", deployment)]["spec"]["template"]["spec"]
        mounted[deployment] = {
            v["secret"]["secretName"]
            for v in spec["volumes"]
            if "secret" in v
            and "tls" in v["secret"]["secretName"]
            and "items" not in v["secret"]  # the whole Secret, key included
        }
    assert mounted == {
        "embedder": {"imagesearch-embedder-tls"},
        "index": {"imagesearch-index-tls"},
        "index-reader": {"imagesearch-index-reader-tls"},
        "gateway": {"imagesearch-gateway-tls", "imagesearch-gateway-client-tls"},
        "web": {"imagesearch-web-tls"},
    }


def test_database_urls_are_files_and_the_readers_have_their_own_user() -> None:
    """INDEX_DATABASE_URL came into the pods' environment from a Secret; the
    readers held the writer's credentials. Now each mounts its Secret as a file
    (INDEX_DATABASE_URL_FILE), the readers the SELECT-only user's."""
    d = docs()
    for deployment, secret in (
        ("index", "imagesearch-db"),
        ("index-reader", "imagesearch-db-reader"),
    ):
        spec = d[("Deployment", deployment)]["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        path = env["INDEX_DATABASE_URL_FILE"]
        assert "INDEX_DATABASE_URL" not in env
        assert all("secretRef" not in source for source in container["envFrom"])
        (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"])]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == secret, deployment
        # Milvus with authentication: the token is a file of imagesearch-milvus.
        token = env["INDEX_MILVUS_TOKEN_FILE"]
        (mount,) = [m for m in container["volumeMounts"] if token.startswith(m["mountPath"])]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == "imagesearch-milvus", deployment
    assert "GRANT SELECT" in (K8S / "external.yaml").read_text()
    values = yaml.safe_load((K8S / "examples" / "milvus-values.yaml").read_text())
    user = yaml.safe_load(values["extraConfigFiles"]["user.yaml"])
    assert user["common"]["security"]["authorizationEnabled"] is True


def test_the_web_face_holds_no_key_of_the_services() -> None:
    """web.yaml mounted the services' shared certificate and key: a web face
    taken over could pose as the index, the embedder or the gateway. It
    mounts its own, and of the gateway's Secret only the CA."""
    d = docs()
    spec = d[("Deployment", "web")]["spec"]["template"]["spec"]
    for volume in spec["volumes"]:
        secret = volume.get("secret")
        if secret and secret["secretName"] == "imagesearch-gateway-tls":
            assert [i["key"] for i in secret["items"]] == ["ca.crt"]
    config = d[("ConfigMap", "imagesearch")]["data"]
    (container,) = spec["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    key_dir = config["WEB_TLS_KEY"].rsplit("/", 1)[0]
    (key_volume,) = [n for n, path in mounts.items() if path == key_dir]
    assert volumes[key_volume]["secret"]["secretName"] == "imagesearch-web-tls"


def test_index_readers_scale_beside_one_writer() -> None:
    d = docs()
    writer = d[("Deployment", "index")]["spec"]
    assert writer["replicas"] == 1 and writer["strategy"]["type"] == "Recreate"
    assert d[("PodDisruptionBudget", "index")]["spec"]["maxUnavailable"] == 1
    readers = d[("Deployment", "index-reader")]["spec"]
    assert readers["replicas"] >= 2 and readers["strategy"]["type"] == "RollingUpdate"
    (container,) = readers["template"]["spec"]["containers"]
    assert {"name": "INDEX_ROLE", "value": "reader"} in container["env"]
    assert "INDEX_ROLE" not in d[("ConfigMap", "imagesearch")]["data"]  # writers by default
    # Readers close connections after a while, so gateways spread over new ones;
    # the writer keeps them (a Reconcile runs for minutes).
    ages = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert float(ages["INDEX_MAX_CONNECTION_AGE_S"]) > 0
    assert "INDEX_MAX_CONNECTION_AGE_S" not in d[("ConfigMap", "imagesearch")]["data"]
    assert d[("HorizontalPodAutoscaler", "index-reader")]["spec"]["scaleTargetRef"]["name"] == (
        "index-reader"
    )
    assert d[("PodDisruptionBudget", "index-reader")]["spec"]["minAvailable"] == 1
    # The writer's Service reaches the writer only; the readers' is headless.
    assert d[("Service", "index")]["spec"]["selector"]["app.kubernetes.io/component"] == "writer"
    headless = d[("Service", "index-reader")]["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["selector"]["app.kubernetes.io/component"] == "reader"
    config = d[("ConfigMap", "imagesearch")]["data"]
    assert config["GATEWAY_INDEX_ADDR"] == "index:50053"
    assert config["GATEWAY_INDEX_READ_ADDR"] == "dns:///index-reader:50053"
    # The readers' network rules are the writer's: the gateway in, Milvus and MySQL out.
    reader, intruder = pod("index-reader"), Pod({"app": "intruder"})
    outside = Pod({}, external=True)
    assert allowed(pod("gateway"), reader, 50053) and not allowed(intruder, reader, 50053)
    assert not allowed(pod("web"), reader, 50053)
    assert allowed(reader, outside, 19530) and allowed(reader, outside, 3306)
    assert not allowed(reader, outside, 443)
    # Locked down and probed as the writer is (test_pods_are_locked_down).
    writer_pod, reader_pod = writer["template"]["spec"], readers["template"]["spec"]
    for key in ("securityContext", "automountServiceAccountToken"):
        assert reader_pod[key] == writer_pod[key], key
    # The same volumes, each from Secrets of its own (certificate, database user).
    assert [v["name"] for v in reader_pod["volumes"]] == [v["name"] for v in writer_pod["volumes"]]
    (writer_container,) = writer_pod["containers"]
    for key in ("securityContext", "ports", "volumeMounts", "readinessProbe", "livenessProbe"):
        assert container[key] == writer_container[key], key


def test_embedders_sit_on_gpu_nodes_spread_out_and_drain_one_at_a_time() -> None:
    d = docs()
    pod_spec = d[("Deployment", "embedder")]["spec"]["template"]["spec"]
    (term,) = pod_spec["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert {"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]} in term[
        "matchExpressions"
    ]
    keys = {c["topologyKey"] for c in pod_spec["topologySpreadConstraints"]}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for c in pod_spec["topologySpreadConstraints"]:
        assert matches(c["labelSelector"], pod("embedder").labels)
    # Every Deployment of ours has a PodDisruptionBudget selecting its pods.
    budgets = [b["spec"] for (kind, _), b in d.items() if kind == "PodDisruptionBudget"]
    for name in (*OURS, "index-reader"):
        covering = [b for b in budgets if matches(b["selector"], pod(name).labels)]
        assert len(covering) == 1, name


def test_the_queue_depth_autoscaler_reads_a_metric_the_embedder_exports() -> None:
    from embedder_service.batcher import QUEUE_DEPTH

    examples = K8S / "examples"
    hpa_file = examples / "embedder-queue-hpa.yaml"
    result = subprocess.run(
        [str(VENV_BIN / "kubernetes-validate"), "--strict", str(hpa_file)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    hpa = yaml.safe_load(hpa_file.read_text())
    assert hpa["metadata"]["name"] == "embedder"  # replaces the CPU one of embedder.yaml
    assert hpa["spec"]["scaleTargetRef"]["name"] == "embedder"
    (metric,) = hpa["spec"]["metrics"]
    exported = QUEUE_DEPTH._name  # the name /metrics carries
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == exported
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    adapter = yaml.safe_load((examples / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["seriesQuery"].startswith(exported + "{")
    assert rule["name"]["as"] == exported
    # The embedder's pods are scraped on the port its image serves metrics on.
    template = docs()[("Deployment", "embedder")]["spec"]["template"]
    port = template["metadata"]["annotations"]["prometheus.io/port"]
    (container,) = template["spec"]["containers"]
    assert {"name": "metrics", "containerPort": int(port)} in container["ports"]
    served = re.search(r"EMBEDDER_METRICS_PORT=(\d+)", (ROOT / "Dockerfile").read_text())
    assert served is not None and served.group(1) == port


def test_a_drained_pod_finishes_before_kubernetes_kills_it() -> None:
    """Every gRPC service drains (DRAIN_S) and then lets its calls finish
    (SHUTDOWN_GRACE_S) within its pod's terminationGracePeriodSeconds."""
    d = docs()
    config = d[("ConfigMap", "imagesearch")]["data"]
    for name, prefix in (
        ("embedder", "EMBEDDER_"),
        ("index", "INDEX_"),
        ("index-reader", "INDEX_"),
        ("gateway", "GATEWAY_"),
    ):
        spec = d[("Deployment", name)]["spec"]["template"]["spec"]
        budget = spec.get("terminationGracePeriodSeconds", 30)  # Kubernetes' default
        drain = float(config[f"{prefix}DRAIN_S"])
        grace = float(config[f"{prefix}SHUTDOWN_GRACE_S"])
        assert drain > 0 and drain + grace + 2 <= budget, name


def test_embedder_pods_share_one_compile_and_weights_cache() -> None:
    """A new embedder pod loads the kernels and weights an earlier pod made,
    from one ReadWriteMany claim, instead of compiling again."""
    d = docs()
    spec = d[("Deployment", "embedder")]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "torch-cache"]
    claim = d[("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "torch-cache"]
    env = {e["name"]: e["value"] for e in container["env"]}
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        assert env[var].startswith(mount["mountPath"] + "/"), var
