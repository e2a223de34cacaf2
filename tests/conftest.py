"""Shared fixtures: real servers on ephemeral ports, real backends, real images.

Fixtures read ../shared (beside the repo) and never write there.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from imagesearch.channels import make_channel
from imagesearch.server import RunningServer
from tools.milvus_server import MilvusServerError
from tools.milvus_server import milvus_server as start_milvus_server
from tools.ports import free_port as free_port

ROOT = Path(__file__).resolve().parent.parent
SHARED = (ROOT.parent / "shared").resolve()  # may be a symlink; jobs store real paths
CLOTHING = SHARED / "data" / "clothing-64"
ODD = SHARED / "data" / "odd-images"
SHARED_WEIGHTS = SHARED / "weights" / "mobilenet_v2_features.pt"
VENV_BIN = Path(sys.executable).parent
# Embedders started by the tests (in-process or as processes) run eager: they
# test behaviour, and compiling would add up to a minute per start. The
# accuracy and compile tests turn compiling on where they mean to.
os.environ.setdefault("EMBEDDER_COMPILE", "false")
MARIADB_URL = os.environ.get("TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


def clothing_images() -> list[tuple[str, str]]:
    """(relative path, label) for the 64 photos."""
    with (CLOTHING / "labels.csv").open() as f:
        return [(row["path"], row["label"]) for row in csv.DictReader(f)]


def odd_manifest() -> list[tuple[str, str]]:
    with (ODD / "manifest.csv").open() as f:
        return [(row["file"], row["expect"]) for row in csv.DictReader(f)]


def wait_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.2)
    return False


def wait_until(predicate, timeout: float = 180):
    """Polls until predicate() is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def get_job(stub, job_id: str):
    from imagesearch.v1 import gateway_pb2

    return stub.GetJob(gateway_pb2.GetJobRequest(job_id=job_id), timeout=30).job


def start_job(stub, collection: str, folder: Path, recursive: bool = True):
    """Starts a server-side folder job through the gateway; returns the Job."""
    from imagesearch.v1 import gateway_pb2

    request = gateway_pb2.StartIndexJobRequest(
        collection=collection, folder=str(folder), recursive=recursive
    )
    return stub.StartIndexJob(request, timeout=60).job


def wait_job(stub, job_id: str, timeout: float = 300):
    """Follows WatchJob until the job ends (succeeded, failed or canceled);
    returns its last state. Progress must only move forward."""
    from imagesearch.v1 import gateway_pb2

    last = None
    for reply in stub.WatchJob(gateway_pb2.WatchJobRequest(job_id=job_id), timeout=timeout):
        job = reply.job
        if last is not None:
            assert job.done >= last.done  # progress only moves forward
        last = job
    assert last is not None
    return last


def channel(port: int) -> grpc.Channel:
    return make_channel(f"127.0.0.1:{port}", [], retry_attempts=2)


class TcpProxy:
    """Forwards a loopback port to 127.0.0.1:target; `cut()` drops every
    connection and refuses new ones until `restore()`: a backend outage."""

    def __init__(self, target_port: int) -> None:
        import threading

        self.target = target_port
        self.up = True
        self.conns: list[socket.socket] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self._threading = threading
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        self.up = False
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
        self.conns.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


# -- embedder -----------------------------------------------------------------


@dataclass
class Server:
    running: RunningServer
    addr: str

    @property
    def port(self) -> int:
        return self.running.port


def start_embedder(**overrides: object) -> Server:
    from embedder_service.app import start
    from embedder_service.settings import EmbedderSettings

    settings = EmbedderSettings(
        **{
            "host": "127.0.0.1",
            "port": 0,
            "model": "mobilenet_v2",
            "weights": "bundled",
            "max_wait_ms": 2.0,
            "warmup": False,
            "compile": "false",
            **overrides,
        }  # type: ignore[arg-type]
    )
    running = start(settings)
    return Server(running, f"127.0.0.1:{running.port}")


def embedder_env(port: int, **env: str) -> dict[str, str]:
    """Environment of an embedder process (bundled weights) on ``port``."""
    return {
        **os.environ,
        "EMBEDDER_PORT": str(port),
        "EMBEDDER_HOST": "127.0.0.1",
        "EMBEDDER_MODEL": "mobilenet_v2",
        "EMBEDDER_WEIGHTS": "bundled",
        "EMBEDDER_WARMUP": "false",
        **env,
    }


def spawn_embedder(port: int, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """The embedder as a real process (bundled weights), listening on ``port``."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "embedder_service"],
            env=embedder_env(port, **env),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    assert wait_port("127.0.0.1", port, 120), log.read_text()
    return proc


@pytest.fixture(scope="session")
def embedder() -> Iterator[Server]:
    """The embedder with the real pretrained MobileNetV2 weights (bundled)."""
    server = start_embedder()
    yield server
    server.running.stop(1)


@pytest.fixture(scope="session")
def text_embedder() -> Iterator[Server]:
    """An embedder that searches by words too: EfficientNet-Lite0 with its
    bundled ImageNet weights and classifier (ConSE), as `make run` serves offline."""
    server = start_embedder(model="efficientnet_lite0", dtype="float32")
    yield server
    server.running.stop(1)


# -- index --------------------------------------------------------------------


# Fixtures that need an external server, and the marker a test using them must carry.
SERVER_FIXTURES = {"mariadb_url": "mariadb", "milvus_server": "milvus_server", "nats_url": "nats"}


# -- tiers ----------------------------------------------------------------------
# A test that starts a process of ours (a service or a script through this
# Python, or the imgsearch CLI) must carry the ``processes`` marker, or it would
# slip into `make test-fast` and make it slow: an audit hook fails such a start
# in an unmarked test (its fixtures included). Quick tools (grpcurl, buf,
# docker-compose, kubernetes-validate) are not counted.
_processes_allowed = True


def _python_process_hook(event: str, args: tuple[Any, ...]) -> None:
    if event != "subprocess.Popen" or _processes_allowed:
        return
    executable, argv = args[0], args[1]
    first = str(executable or (argv[0] if argv else ""))
    if first == sys.executable or first == str(VENV_BIN / "imgsearch"):
        raise RuntimeError(
            f"this test starts {Path(first).name} as a process: mark it @pytest.mark.processes "
            "(make test-fast leaves such tests out)"
        )


sys.addaudithook(_python_process_hook)  # cannot be removed; acts only around unmarked tests


def allows_processes(item: pytest.Item) -> bool:
    """Marked ``processes``, ``milvus_server`` (milvus-server is a script) or
    ``compile`` (with a cold cache, Inductor compiles in worker processes of
    this Python); none of them is in `make test-fast`."""
    return any(item.get_closest_marker(m) for m in ("processes", "milvus_server", "compile"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Setup, call and teardown of ``item`` may start processes if it is marked."""
    global _processes_allowed
    _processes_allowed = allows_processes(item)
    try:
        return (yield)
    finally:
        _processes_allowed = True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that uses a server fixture without its marker would slip into
    `make test-fast` and fail there: refuse it at collection."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        for fixture, marker in SERVER_FIXTURES.items():
            if fixture in names and item.get_closest_marker(marker) is None:
                raise pytest.UsageError(
                    f"{item.nodeid} uses the {fixture} fixture: mark it @pytest.mark.{marker}"
                )


def ensure_mariadb() -> bool:
    if wait_port("127.0.0.1", 3306, 0.5):
        return True
    daemon = shutil.which("start-stop-daemon")
    if daemon and Path("/usr/sbin/mariadbd").exists():
        subprocess.run(
            [daemon, "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd"],
            check=False,
        )
        return wait_port("127.0.0.1", 3306, 30)
    return False


@pytest.fixture(scope="session")
def mariadb_url() -> str:
    if not ensure_mariadb():
        pytest.fail("MariaDB is not reachable on 127.0.0.1:3306 and could not be started")
    return MARIADB_URL


class NatsServer:
    """A nats-server of our own with JetStream on a free port, its store in
    ``store``; ``stop`` and ``start`` again keep the port and the store (a
    restart). Debian's nats-server: `make install` puts it in when root and
    apt exist."""

    def __init__(self, store: Path, args: Sequence[str] = ()) -> None:
        self.args = list(args)  # e.g. TLS flags
        self.binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(self.binary).exists():
            pytest.fail("nats-server is not installed (apt-get install nats-server)")
        self.store = store
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.address = ["-a", "127.0.0.1", "-p", str(self.port)]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NatsServer:
        self.proc = subprocess.Popen(
            [self.binary, *self.address, "-js", "-sd", str(self.store), *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_port("127.0.0.1", self.port, 20):
            pytest.fail("nats-server did not start")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a nats-server the session shares (tests keep apart by prefix)."""
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real standalone Milvus server (PyPI milvus==2.3.5), stopped with SIGINT."""
    try:
        with start_milvus_server(tmp_path_factory.mktemp("milvus-server")) as uri:
            yield uri
    except MilvusServerError as exc:
        pytest.fail(str(exc))


def index_settings(tmp: Path, **overrides: object):  # -> IndexSettings
    from index_service.settings import IndexSettings

    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "milvus_uri": str(tmp / "milvus.db"),
        "database_url": f"sqlite:///{tmp / 'meta.db'}",
        **overrides,
    }
    return IndexSettings(**values)  # type: ignore[arg-type]


def start_index(tmp: Path, **overrides: Any) -> Server:
    """An index on ``tmp``, returned once its start-up Reconcile is done
    (IndexService SERVING), as the gateway would see it. ``credentials``:
    how to reach it when it serves TLS."""
    from imagesearch.healthcheck import check
    from index_service.app import start

    credentials: grpc.ChannelCredentials | None = overrides.pop("credentials", None)
    running = start(index_settings(tmp, **overrides))
    wait_until(
        lambda: check(running.port, "imagesearch.v1.IndexService", credentials=credentials), 120
    )
    return Server(running, f"127.0.0.1:{running.port}")


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}_"


def drop_sql_tables(url: str, prefix: str) -> None:
    from sqlalchemy import MetaData, create_engine

    engine = create_engine(url)
    md = MetaData()
    md.reflect(engine, only=lambda name, _md: name.startswith(prefix))
    md.drop_all(engine)
    engine.dispose()


@pytest.fixture(
    params=[
        "lite-sqlite",
        pytest.param("lite-mariadb", marks=pytest.mark.mariadb),
        pytest.param("server-sqlite", marks=pytest.mark.milvus_server),
    ]
)
def index_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, object]]:
    """Index settings for each real backend pairing this machine runs. The
    markers sit on the parameters, so `-m "not mariadb"` deselects those
    cases at collection, before any server is needed."""
    kind = request.param
    prefix = unique_prefix()
    settings: dict[str, object] = {"table_prefix": prefix}
    if kind == "lite-mariadb":
        settings["database_url"] = request.getfixturevalue("mariadb_url")
    if kind == "server-sqlite":
        settings["milvus_uri"] = request.getfixturevalue("milvus_server")
        settings["milvus_prefix"] = prefix
    yield settings
    if kind == "lite-mariadb":
        drop_sql_tables(str(settings["database_url"]), prefix)


# -- gateway ------------------------------------------------------------------


def start_gateway(tmp: Path, embedder_addr: str, index_addr: str, **overrides: object) -> Server:
    from gateway.app import start
    from gateway.settings import GatewaySettings

    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "embedder_addr": embedder_addr,
        "index_addr": index_addr,
        "data_dir": str(tmp / "gw"),
        "allowed_roots": (str(SHARED / "data"), str(tmp)),
        "embed_batch": 16,
        **overrides,
    }
    running = start(GatewaySettings(**values))  # type: ignore[arg-type]
    return Server(running, f"127.0.0.1:{running.port}")


@dataclass
class Stack:
    embedder: Server
    index: Server
    gateway: Server
    tmp: Path


@contextlib.contextmanager
def gateway_stack(embedder: Server, tmp: Path, **gateway_overrides: object) -> Iterator[Stack]:
    """An index (Milvus Lite, SQLite) and a gateway with ``gateway_overrides``
    before ``embedder``, both stopped on the way out."""
    index = start_index(tmp / "index")
    try:
        gateway = start_gateway(tmp, embedder.addr, index.addr, **gateway_overrides)
        try:
            yield Stack(embedder, index, gateway, tmp)
        finally:
            gateway.running.stop(1)
    finally:
        index.running.stop(1)


# The job stores a gateway is tested on: its files (the embedded default) and
# NATS JetStream, which compose and k8s ship. A module's end-to-end tests run
# on both with ``stack_on_each_job_store`` as its ``stack``.
JOB_STORES = ["local", pytest.param("nats", marks=pytest.mark.nats)]


def job_store_settings(request: pytest.FixtureRequest, kind: str) -> dict[str, object]:
    """Gateway settings for jobs in ``kind`` ("local" or "nats": the tests'
    nats-server, a prefix of the test's own)."""
    if kind == "local":
        return {}
    return {
        "jobs_url": request.getfixturevalue("nats_url"),
        "jobs_prefix": f"t{uuid.uuid4().hex[:10]}",
    }


@pytest.fixture(params=JOB_STORES)
def stack_on_each_job_store(
    request: pytest.FixtureRequest, embedder: Server, tmp_path: Path
) -> Iterator[Stack]:
    """``stack``, once with jobs in the gateway's files and once on NATS."""
    with gateway_stack(embedder, tmp_path, **job_store_settings(request, request.param)) as s:
        yield s


@pytest.fixture
def stack(embedder: Server, tmp_path: Path) -> Iterator[Stack]:
    """Gateway + index (Milvus Lite, SQLite) + the shared real-weights embedder."""
    with gateway_stack(embedder, tmp_path) as running:
        yield running


def index_clothing(stack: Stack, collection: str = "clothes") -> None:
    """The 64 clothing photos indexed into ``collection`` by a folder job."""
    from imagesearch.v1 import gateway_pb2, gateway_pb2_grpc

    stub = gateway_pb2_grpc.GatewayServiceStub(channel(stack.gateway.port))
    job = wait_job(stub, start_job(stub, collection, CLOTHING).job_id)
    assert (job.state, job.indexed) == (gateway_pb2.JOB_STATE_SUCCEEDED, 64), job.message


@pytest.fixture(scope="session")
def words_stack(text_embedder: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The clothing photos indexed as "clothes" by an embedder that searches
    by words (its text vectors in the same pass); the words tests of the
    gateway, the JSON API and the page share it."""
    with gateway_stack(text_embedder, tmp_path_factory.mktemp("words")) as running:
        index_clothing(running)
        yield running


@pytest.fixture(scope="module")
def module_stack(embedder: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One ``stack`` for a whole module, for tests that each keep to their own
    collections and file names (a module opts in by overriding ``stack``)."""
    with gateway_stack(embedder, tmp_path_factory.mktemp("stack")) as running:
        yield running
