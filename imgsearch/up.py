"""``imgsearch up``: the three services and the HTTP face as separate
processes on the embedded defaults (Milvus Lite and SQLite under the data
folder); waits for their health, prints the endpoints, stops them all on
Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from imagesearch.channels import plain_channel
from imagesearch.healthcheck import check as healthy
from imagesearch.tls import GATEWAY_CLIENT_NAME, ClientTls, LocalPki, local_pki
from imagesearch.v1 import embedder_pb2, embedder_pb2_grpc


@dataclass
class Service:
    name: str
    module: str
    service: str  # the gRPC service whose health says "ready" ("": HTTP /healthz)
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    started: float = 0.0  # when the current process was started (monotonic)
    restarts: int = 0  # restarts in a row without a quiet RESTART_RESET_S
    due: float | None = None  # when a dead process is started again


# A dead service is started again after 1 s, doubling up to 30 s while it keeps dying.
RESTART_MIN_S, RESTART_MAX_S, RESTART_RESET_S = 1.0, 30.0, 60.0
# The embedders of --with models listen on the default embedder's port + 10, 11, ...
EXTRA_EMBEDDER_OFFSET = 10
# Settings of the default embedder's model that another model must not inherit.
MODEL_SETTINGS = (
    "EMBEDDER_WEIGHTS",
    "EMBEDDER_POOLING",
    "EMBEDDER_GEM_P",
    "EMBEDDER_IMAGE_SIZE",
    "EMBEDDER_RESIZE",
    "EMBEDDER_METRICS_PORT",
)


def extra_embedders(
    models: Sequence[str], env: dict[str, str], dial: str, embedder_port: int
) -> list[Service]:
    """One embedder process per --with model, and GATEWAY_EMBEDDERS (set in
    ``env``) routing each model's collections to it."""
    services, routes = [], []
    for n, model in enumerate(models):
        port = embedder_port + EXTRA_EMBEDDER_OFFSET + n
        own = {k: v for k, v in env.items() if k not in MODEL_SETTINGS}
        own.update(EMBEDDER_MODEL=model, EMBEDDER_PORT=str(port))
        services.append(
            Service(f"embedder-{model}", "embedder_service", "EmbedderService", port, own)
        )
        routes.append(f"{model}={dial}:{port}")
    if routes:  # after any the user set
        env["GATEWAY_EMBEDDERS"] = ";".join(filter(None, [env.get("GATEWAY_EMBEDDERS"), *routes]))
    return services


def spawn(svc: Service, data: Path) -> None:
    """Starts (or starts again) the service's process, appending to its log."""
    assert svc.log is not None
    with svc.log.open("ab") as out:
        svc.proc = subprocess.Popen(
            [sys.executable, "-m", svc.module],
            env=svc.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(data.parent),
        )
    svc.started = time.monotonic()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run(
    data_dir: str,
    gateway_port: int,
    embedder_port: int,
    index_port: int,
    host: str = "127.0.0.1",
    startup_timeout: float = 600,
    tls: bool = False,
    web_port: int | None = 8080,
    with_models: Sequence[str] = (),
) -> int:
    """``host``: where all services (and their metrics) listen; loopback
    unless told otherwise. ``tls``: every port over TLS (HTTPS for the web
    face), the gateway's calls to the embedder and index over mTLS.
    ``web_port``: the HTTP face's port (None: no web face). ``with_models``:
    more embedders, one per model (e.g. tirg_css), beside the default one."""
    # Where the services are dialled: loopback when they listen everywhere,
    # else the one address they listen on.
    dial = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]", "") else host
    if ":" in dial and not dial.startswith("["):
        dial = f"[{dial}]"
    data = Path(data_dir).resolve()
    (data / "images").mkdir(parents=True, exist_ok=True)
    logs = data / "logs"
    logs.mkdir(exist_ok=True)
    # Ports come resolved from flags or env; the storage and fallback defaults
    # give way to whatever the user's environment sets (e.g. a real Milvus).
    env = dict(os.environ)
    env.setdefault("EMBEDDER_WEIGHTS_FALLBACK", "bundled")
    # Freed image buffers go back to the system at once instead of fragmenting
    # per-thread arenas: about half the peak memory with camera-size photos.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    env.setdefault("MALLOC_ARENA_MAX", "2")
    env.setdefault("INDEX_MILVUS_URI", str(data / "milvus.db"))
    env.setdefault("INDEX_DATABASE_URL", f"sqlite:///{data / 'meta.db'}")
    env.setdefault("GATEWAY_DATA_DIR", str(data))
    env.update(
        EMBEDDER_HOST=host,
        INDEX_HOST=host,
        GATEWAY_HOST=host,
        EMBEDDER_PORT=str(embedder_port),
        INDEX_PORT=str(index_port),
        GATEWAY_PORT=str(gateway_port),
        GATEWAY_EMBEDDER_ADDR=f"{dial}:{embedder_port}",
        GATEWAY_INDEX_ADDR=f"{dial}:{index_port}",
        WEB_HOST=host,
        WEB_PORT=str(web_port or 0),
        WEB_GATEWAY_ADDR=f"{dial}:{gateway_port}",
    )
    # How up itself calls the services: with the gateway's client certificate under TLS.
    credentials: grpc.ChannelCredentials | None = None
    https: ssl.SSLContext | None = None
    if tls:
        pki, made = local_pki(data / "tls", [host])
        env.update(tls_env(pki))
        client = ClientTls(str(pki.ca), str(pki.client_cert), str(pki.client_key))
        credentials = client.credentials()
        https = ssl.create_default_context(cafile=str(pki.ca))
        print(
            f"imgsearch up: TLS on every port ({'made a local CA' if made else 'local CA'} "
            f"in {pki.folder}); clients trust {pki.ca}: imgsearch --ca {pki.ca} "
            f"(or IMGSEARCH_CA), grpcurl -cacert {pki.ca}",
            flush=True,
        )
    extras = extra_embedders(with_models, env, dial, embedder_port)
    services = [
        Service("embedder", "embedder_service", "EmbedderService", embedder_port, env),
        *extras,
        Service("index", "index_service", "IndexService", index_port, env),
        Service("gateway", "gateway", "GatewayService", gateway_port, env),
    ]
    if web_port is not None:
        services.append(Service("web", "web_service", "", web_port, env))
    scheme = "https" if tls else "http"
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"imgsearch up: data in {data}, logs in {logs}", flush=True)
    for svc in services:
        svc.log = logs / f"{svc.name}.log"
        spawn(svc, data)
    try:
        started = time.monotonic()
        deadline = started + startup_timeout
        waiting = list(services)
        slow_said = False
        while waiting and not stop.is_set():
            if not slow_said and time.monotonic() - started > 15:
                slow_said = True
                print(
                    f"imgsearch up: still starting ({', '.join(s.name for s in waiting)}); the "
                    "embedder loads its model and, with EMBEDDER_COMPILE=auto, compiles it: "
                    f"a minute or two the first time, seconds later. Logs: {logs}",
                    flush=True,
                )
            for svc in list(waiting):
                assert svc.proc is not None and svc.log is not None
                if svc.proc.poll() is not None:
                    print(
                        f"imgsearch up: {svc.name} exited with code {svc.proc.returncode} while starting; "
                        f"last lines of {svc.log}:\n{tail(svc.log)}",
                        file=sys.stderr,
                        flush=True,
                    )
                    return 1
                # Announced in dependency order: the gateway, then the web face, last.
                if svc is waiting[0] and (
                    web_healthy(f"{scheme}://{dial}:{svc.port}/healthz", https)
                    if not svc.service
                    else healthy(
                        svc.port,
                        f"imagesearch.v1.{svc.service}",
                        credentials=credentials,
                        host=dial,
                    )
                ):
                    where = (
                        f"{scheme}://{dial}:{svc.port}/"
                        if not svc.service
                        else f"{host}:{svc.port}"
                    )
                    print(f"imgsearch up: {svc.name:8s} SERVING on {where}", flush=True)
                    waiting.remove(svc)
            if time.monotonic() > deadline:
                print(
                    f"imgsearch up: {', '.join(s.name for s in waiting)} not healthy after "
                    f"{startup_timeout:.0f}s; see {logs}",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            stop.wait(0.5)
        if stop.is_set():
            return 0
        describe_model(dial, embedder_port, credentials)
        for svc in extras:
            describe_model(dial, svc.port, credentials)
        page = f", web page at {scheme}://{dial}:{web_port}/" if web_port is not None else ""
        print(
            f"imgsearch up: ready. Gateway at {host}:{gateway_port}"
            f"{' (TLS)' if tls else ''}{page}. "
            f"Try: imgsearch index {data / 'images'}  (Ctrl-C stops everything)",
            flush=True,
        )
        # Supervise: a service that dies is started again, with a pause that
        # doubles while it keeps dying (up to RESTART_MAX_S) and resets once
        # it has run for RESTART_RESET_S; the others keep serving. Only
        # Ctrl-C or SIGTERM stops everything.
        while not stop.is_set():
            for svc in services:
                assert svc.proc is not None
                if svc.proc.poll() is None:
                    if svc.restarts and time.monotonic() - svc.started > RESTART_RESET_S:
                        svc.restarts = 0
                    continue
                if svc.due is None:
                    pause = min(RESTART_MIN_S * 2**svc.restarts, RESTART_MAX_S)
                    svc.due = time.monotonic() + pause
                    print(
                        f"imgsearch up: {svc.name} exited with code {svc.proc.returncode}; "
                        f"restarting it in {pause:.0f}s (the others keep serving). Last lines "
                        f"of {svc.log}:\n{tail(svc.log) if svc.log else ''}",
                        file=sys.stderr,
                        flush=True,
                    )
                elif time.monotonic() >= svc.due:
                    svc.due = None
                    svc.restarts += 1
                    spawn(svc, data)
                    print(
                        f"imgsearch up: {svc.name} restarted (pid {svc.proc.pid})",
                        flush=True,
                    )
            stop.wait(0.5)
        return 0
    finally:
        shutdown(services)


def web_healthy(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def tls_env(pki: LocalPki) -> dict[str, str]:
    """Settings for TLS on every port, mTLS from the gateway inward; the web
    face serves HTTPS and verifies the gateway."""
    env = {}
    for prefix in ("EMBEDDER_", "INDEX_", "GATEWAY_"):
        env[f"{prefix}TLS_CERT"] = str(pki.server_cert)
        env[f"{prefix}TLS_KEY"] = str(pki.server_key)
    env["EMBEDDER_TLS_CLIENT_CA"] = env["INDEX_TLS_CLIENT_CA"] = str(pki.ca)
    # Only the gateway's certificate, not any other the CA signed.
    env["EMBEDDER_TLS_CLIENT_NAMES"] = env["INDEX_TLS_CLIENT_NAMES"] = GATEWAY_CLIENT_NAME
    env["GATEWAY_BACKEND_TLS_CA"] = str(pki.ca)
    env["GATEWAY_BACKEND_TLS_CERT"] = str(pki.client_cert)
    env["GATEWAY_BACKEND_TLS_KEY"] = str(pki.client_key)
    env["WEB_TLS_CERT"] = str(pki.server_cert)
    env["WEB_TLS_KEY"] = str(pki.server_key)
    env["WEB_GATEWAY_CA"] = str(pki.ca)
    return env


def describe_model(
    host: str, port: int, credentials: grpc.ChannelCredentials | None = None
) -> None:
    with plain_channel(f"{host}:{port}", credentials) as ch:
        info = embedder_pb2_grpc.EmbedderServiceStub(ch).GetModelInfo(
            embedder_pb2.EmbedderServiceGetModelInfoRequest(), timeout=10
        )
    print(
        f"imgsearch up: model {info.model} ({info.dim}-d, weights {info.weights}, "
        f"{info.device}, {info.dtype})",
        flush=True,
    )
    if info.note.startswith("FALLBACK"):
        print(
            "imgsearch up: NOTE: the default ResNet50 ImageNet weights could not be fetched, so "
            f"the embedder runs {info.model} with the bundled ImageNet weights instead. Put the "
            "ResNet50 weights in the torch cache or set EMBEDDER_WEIGHTS to use ResNet50.",
            flush=True,
        )
    elif not info.pretrained:
        print("imgsearch up: WARNING: random weights: results are meaningless.", flush=True)


def shutdown(services: list[Service], grace: float = 15.0) -> None:
    for svc in reversed(services):
        if svc.proc is not None and svc.proc.poll() is None:
            svc.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for svc in services:
        if svc.proc is None:
            continue
        try:
            svc.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            svc.proc.kill()
            svc.proc.wait()
    print("imgsearch up: stopped", flush=True)
