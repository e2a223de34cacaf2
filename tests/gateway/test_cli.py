"""The imgsearch CLI as users run it (the installed console script)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from prometheus_client import REGISTRY

from imagesearch.client import Client, JobState
from imgsearch.sheet import sheet_size
from tests.conftest import (
    CLOTHING,
    JOB_STORES,
    ODD,
    VENV_BIN,
    Stack,
    free_port,
    job_store_settings,
    start_gateway,
    start_index,
    wait_port,
    wait_until,
)
from tools.procs import child_pid

pytestmark = pytest.mark.processes  # the imgsearch CLI and `imgsearch up` as processes


@pytest.fixture
def stack(stack_on_each_job_store: Stack) -> Stack:
    """The CLI before a gateway with jobs in its files, and one on NATS."""
    return stack_on_each_job_store


def imgsearch(
    stack: Stack | None, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if stack is not None:
        env["IMGSEARCH_GATEWAY"] = stack.gateway.addr
    return subprocess.run(
        [str(VENV_BIN / "imgsearch"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_index_search_count_delete_drop(stack: Stack) -> None:
    hats = CLOTHING / "Hat"
    indexed = imgsearch(stack, "index", str(hats), "-c", "cli", "--json")
    assert indexed.returncode == 0, indexed.stderr
    assert json.loads(indexed.stdout)["indexed"] == 8

    assert imgsearch(stack, "count", "-c", "cli").stdout.strip() == "8"

    query = next(hats.iterdir())
    found = imgsearch(stack, "search", str(query), "-c", "cli", "--top-k", "3", "--json")
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert len(hits) == 3 and hits[0]["path"] == str(query.resolve()) and hits[0]["score"] > 0.98

    table = imgsearch(stack, "search", str(query), "-c", "cli", "-k", "2")
    assert str(query.resolve()) in table.stdout and "score" in table.stdout

    sheet = stack.tmp / "sheet.png"
    drawn = imgsearch(stack, "search", str(query), "-c", "cli", "-k", "7", "--sheet", str(sheet))
    assert drawn.returncode == 0, drawn.stderr
    with Image.open(sheet) as img:
        assert img.format == "PNG" and img.size == sheet_size(8)  # query + 7 hits

    server_job = imgsearch(
        stack, "index", "--server", str(CLOTHING / "Shoes"), "-c", "cli", "--json"
    )
    assert server_job.returncode == 0, server_job.stderr
    (job,) = json.loads(server_job.stdout)
    assert job["state"] == "succeeded" and job["indexed"] == 8
    jobs = json.loads(imgsearch(stack, "jobs", "--json").stdout)
    assert [j["job_id"] for j in jobs] == [job["job_id"]]

    deleted = imgsearch(
        stack, "delete", "-c", "cli", "--prefix", str(CLOTHING / "Shoes") + "/", "--json"
    )
    assert json.loads(deleted.stdout)["deleted"] == 8
    assert imgsearch(stack, "count", "-c", "cli").stdout.strip() == "8"
    listed = json.loads(imgsearch(stack, "collections", "--json").stdout)
    assert [(c["name"], c["count"], c["dim"]) for c in listed] == [("cli", 8, 1280)]

    assert imgsearch(stack, "drop", "-c", "cli").returncode == 2  # needs --yes
    assert imgsearch(stack, "drop", "-c", "cli", "--yes").returncode == 0
    gone = imgsearch(stack, "count", "-c", "cli")
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr


def test_errors_are_one_line_and_nonzero(stack: Stack) -> None:
    bad = imgsearch(stack, "search", str(ODD / "not-an-image.jpg"), "-c", "x")
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "INVALID_ARGUMENT" in bad.stderr
    assert imgsearch(stack, "search", "/no/such/file.jpg").returncode == 2
    denied = imgsearch(stack, "index", "--server", "/etc")
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr
    down = imgsearch(None, "count", "--gateway", f"127.0.0.1:{free_port()}", timeout=120)
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr and "imgsearch up" in down.stderr


def listening(ports: list[int]) -> dict[int, set[str]]:
    """The local addresses (IPv4) listening on ``ports``, from /proc/net/tcp
    and tcp6 (an IPv6 wildcard shows as "::")."""
    import ipaddress

    found: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) not in ports:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order.
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(packed)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            found.setdefault(int(port_hex, 16), set()).add(str(ip))
    return found


def spawn_up(
    tmp_path: Path, ports: list[int], *flags: str, **settings: str
) -> subprocess.Popen[str]:
    """``imgsearch up`` as a user runs it, without ResNet50 weights (the fallback)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EMBEDDER_", "INDEX_", "GATEWAY_", "WEB_"))
    }
    env.update(settings)
    env["TORCH_HOME"] = str(tmp_path / "torch")  # no ResNet50 weights: the fallback path
    with (tmp_path / "up.out").open("w") as out:
        return subprocess.Popen(
            [
                str(VENV_BIN / "imgsearch"),
                "up",
                "--data-dir",
                str(tmp_path / "data"),
                "--gateway-port",
                str(ports[0]),
                "--embedder-port",
                str(ports[1]),
                "--index-port",
                str(ports[2]),
                "--web-port",
                str(ports[3]),
                *flags,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            text=True,
        )


def stop_up(
    proc: subprocess.Popen[str], tmp_path: Path, ports: list[int], host: str = "127.0.0.1"
) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 0
    assert "stopped" in (tmp_path / "up.out").read_text()
    for port in ports:  # every service is down
        with socket.socket() as s:
            assert s.connect_ex((host, port)) != 0


def test_up_starts_serves_and_stops(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(4)]  # gateway, embedder, index, web
    # Small job batches, one at a time: the faults below land mid-job.
    proc = spawn_up(tmp_path, ports, GATEWAY_EMBED_BATCH="4", GATEWAY_JOB_CONCURRENCY="1")
    try:
        stack_env = {"IMGSEARCH_GATEWAY": f"127.0.0.1:{ports[0]}"}

        def run(*a: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(VENV_BIN / "imgsearch"), *a],
                capture_output=True,
                text=True,
                timeout=600,
                env={**os.environ, **stack_env},
            )

        # As a new user would: index the moment the gateway's port accepts
        # connections, while the embedder is still loading (and compiling).
        assert wait_port("127.0.0.1", ports[0], 120), (tmp_path / "up.out").read_text()
        indexed = run("index", str(CLOTHING), "--json")
        assert indexed.returncode == 0, indexed.stderr
        report = json.loads(indexed.stdout)
        assert (report["files"], report["indexed"], report["failed"]) == (64, 64, 0)
        assert run("count").stdout.strip() == "64"
        text = (tmp_path / "up.out").read_text()
        assert "ready" in text, text
        web = f"http://127.0.0.1:{ports[3]}/"
        assert f"web page at {web}" in text, text
        assert requests.post(f"{web}img/count", timeout=30).json() == 64
        assert "<title>imagesearch</title>" in requests.get(web, timeout=30).text
        assert "bundled ImageNet weights instead" in text  # says so plainly
        # A newcomer's first search by words finds the shoes, no setting changed.
        words = run("search", "--text", "sneakers", "-k", "8", "--json")
        assert words.returncode == 0, words.stderr
        shoes = [h for h in json.loads(words.stdout) if "/Shoes/" in h["path"]]
        assert len(shoes) >= 5, words.stdout
        said = run("reconcile", "--text")
        assert said.returncode == 0 and "text vectors made 0, still without one 0" in said.stdout
        # Safe by default: every port listens on loopback only.
        assert listening(ports) == {port: {"127.0.0.1"} for port in ports}

        # Supervised: kill -9 the index, then the embedder, during a server
        # job; each is started again, and the job finishes by itself.
        photos = shutil.copytree(CLOTHING, tmp_path / "photos")  # under up's allowed roots
        with Client(f"127.0.0.1:{ports[0]}") as client:
            job = client.start_job(str(photos), collection="faults")
            at_kill = []
            for module in ("index_service", "embedder_service"):
                wait_until(lambda: client.get_job(job.job_id).done > 0, 300)
                victim = child_pid(proc.pid, module)
                assert victim is not None
                os.kill(victim, signal.SIGKILL)
                at_kill.append(client.get_job(job.job_id).done)
                wait_until(lambda m=module, v=victim: child_pid(proc.pid, m) not in (None, v), 60)
            assert at_kill[0] < 64, at_kill  # the index died mid-job
            *_, last = client.watch_job(job.job_id)
            assert last.state == JobState.SUCCEEDED, last.message
            assert last.done == last.total == 64
            assert last.indexed + last.duplicates + last.failed == 64 and last.failed == 0
            assert client.count(collection="faults").count == 64
        text = (tmp_path / "up.out").read_text()
        assert "index restarted" in text and "embedder restarted" in text, text
    finally:
        stop_up(proc, tmp_path, ports)


HOST = "127.0.0.2"  # loopback, but not the default address


def test_up_tls_serves_tls_only(tmp_path: Path) -> None:
    """``imgsearch up --tls``: a local CA under the data dir, TLS on all three
    ports (mTLS to the embedder and index); plaintext gets nothing; the CLI
    and grpcurl work with the CA file. On one specific address (127.0.0.2),
    which up itself dials and names in the certificate."""
    ports = [free_port() for _ in range(4)]
    proc = spawn_up(tmp_path, ports, "--tls", "--host", HOST)
    ca = tmp_path / "data" / "tls" / "ca.pem"
    try:
        assert wait_until(lambda: "ready" in (tmp_path / "up.out").read_text(), 600)
        assert ca.exists() and f"--ca {ca}" in (tmp_path / "up.out").read_text()
        for port in ports:
            with grpc.insecure_channel(f"{HOST}:{port}") as channel:
                with pytest.raises(grpc.RpcError) as info:
                    health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=5
                    )
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE, port
        env = {**os.environ, "IMGSEARCH_GATEWAY": f"{HOST}:{ports[0]}", "IMGSEARCH_CA": str(ca)}
        folder = CLOTHING / "Hat"
        indexed = subprocess.run(
            [str(VENV_BIN / "imgsearch"), "index", str(folder), "--json"],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert indexed.returncode == 0, indexed.stderr
        assert json.loads(indexed.stdout)["indexed"] == len(list(folder.glob("*.jpg")))
        query = next(folder.glob("*.jpg"))
        found = subprocess.run(
            [str(VENV_BIN / "imgsearch"), "search", str(query), "--json"],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert found.returncode == 0, found.stderr
        assert Path(json.loads(found.stdout)[0]["path"]).name == query.name
        counted = subprocess.run(
            [str(VENV_BIN / "grpcurl"), "-cacert", str(ca), "-d", "{}", f"{HOST}:{ports[0]}",
             "imagesearch.v1.GatewayService/Count"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert counted.returncode == 0, counted.stderr
        assert json.loads(counted.stdout)["count"] == str(len(list(folder.glob("*.jpg"))))
        # The web face: HTTPS with the same CA, its calls to the gateway over TLS.
        web = f"https://{HOST}:{ports[3]}"
        assert requests.post(f"{web}/img/count", verify=str(ca), timeout=30).json() == len(
            list(folder.glob("*.jpg"))
        )
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://{HOST}:{ports[3]}/healthz", timeout=10)
        assert listening(ports) == {port: {HOST} for port in ports}
    finally:
        stop_up(proc, tmp_path, ports, HOST)


@pytest.fixture(params=JOB_STORES)
def slow_jobs(request: pytest.FixtureRequest, embedder, tmp_path: Path):
    """A gateway whose jobs take a while: two images per batch, one batch at
    a time; jobs in its files, and on NATS."""
    index = start_index(tmp_path / "index")
    gateway = start_gateway(
        tmp_path,
        embedder.addr,
        index.addr,
        embed_batch=2,
        job_concurrency=1,
        **job_store_settings(request, request.param),
    )
    yield gateway
    gateway.running.stop(1)
    index.running.stop(1)


def watch_streams() -> float:
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "imagesearch_rpc_handled"
        for sample in metric.samples
        if sample.name.endswith("_total")
        and sample.labels.get("method") == "/imagesearch.v1.GatewayService/WatchJob"
    )


def test_a_job_is_followed_past_the_stream_limit(slow_jobs) -> None:
    """The CLI follows a job for longer than one WatchJob stream may last
    (IMGSEARCH_WATCH_STREAM_S, 600 s by default; shrunk here) by renewing it."""
    streams_before = watch_streams()
    env = {**os.environ, "IMGSEARCH_GATEWAY": slow_jobs.addr, "IMGSEARCH_WATCH_STREAM_S": "0.3"}
    done = subprocess.run(
        [str(VENV_BIN / "imgsearch"), "index", "--server", str(CLOTHING), "-c", "long", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    (job,) = json.loads(done.stdout)
    assert (job["state"], job["done"], job["indexed"]) == ("succeeded", 64, 64)
    with Client(slow_jobs.addr) as client:
        watched = client.get_job(job["job_id"])
    lasted_s = (watched.updated_at_ms - watched.created_at_ms) / 1000
    streams = watch_streams() - streams_before
    assert lasted_s > 0.6, f"the job took only {lasted_s:.2f}s: it proves nothing"
    assert streams >= 2, f"{streams} WatchJob streams for a {lasted_s:.1f}s job"


def test_ctrl_c_stops_watching_not_the_job(slow_jobs) -> None:
    env = {**os.environ, "IMGSEARCH_GATEWAY": slow_jobs.addr}
    proc = subprocess.Popen(
        [str(VENV_BIN / "imgsearch"), "index", "--server", str(CLOTHING), "-c", "ctrlc"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    with Client(slow_jobs.addr) as client:
        job = wait_until(lambda: next(iter(client.list_jobs(collection="ctrlc")), None), 60)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert f"imgsearch jobs watch {job.job_id}" in stderr
        final = wait_until(lambda: (j := client.get_job(job.job_id)).state.terminal and j, 240)
    assert (final.state, final.indexed) == (JobState.SUCCEEDED, 64)
