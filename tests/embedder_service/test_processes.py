"""EMBEDDER_PROCESSES: several embedder processes on one port (SO_REUSEPORT),
each with its own GIL. Both take calls, each has its own metrics port, one
that is killed is started again, and SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import requests

from embedder_service.settings import EmbedderSettings
from imagesearch.settings import SettingsError
from imagesearch.v1 import embedder_pb2, embedder_pb2_grpc
from tests.conftest import (
    CLOTHING,
    ROOT,
    clothing_images,
    embedder_env,
    free_port,
    spawn_embedder,
    wait_until,
)
from tools.procs import children

pytestmark = pytest.mark.processes


def batches(metrics_port: int) -> float | None:
    """Model batches one process has run, from its metrics; None: not up."""
    try:
        text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).text
    except requests.RequestException:
        return None
    for line in text.splitlines():
        if line.startswith("imagesearch_embedder_batch_size_count"):
            return float(line.split()[-1])
    return 0.0


def two_free_ports() -> int:
    """A free port whose next one is free too (the second process's metrics)."""
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def embed_on_a_new_connection(port: int, data: bytes) -> None:
    # A subchannel of its own: a new TCP connection, which the kernel gives
    # to one of the processes.
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
        request = embedder_pb2.EmbedderServiceEmbedRequest(
            images=[embedder_pb2.Image(name="a.jpg", data=data)]
        )
        reply = stub.Embed(request, timeout=120, wait_for_ready=True)
        assert not reply.embeddings[0].error and len(reply.embeddings[0].vector) == 1280 * 4


def test_two_processes_serve_one_port_restart_and_stop_together(tmp_path: Path) -> None:
    port, metrics = free_port(), two_free_ports()
    log = tmp_path / "embedder.log"
    proc = spawn_embedder(port, log, EMBEDDER_PROCESSES="2", EMBEDDER_METRICS_PORT=str(metrics))
    try:
        assert wait_until(lambda: len(children(proc.pid)) == 2), "two processes"
        assert wait_until(lambda: all(batches(metrics + i) is not None for i in (0, 1)))
        data = (CLOTHING / clothing_images()[0][0]).read_bytes()
        for _ in range(200):  # each call a new connection: both must get some
            embed_on_a_new_connection(port, data)
            if all((batches(metrics + i) or 0) > 0 for i in (0, 1)):
                break
        assert all((batches(metrics + i) or 0) > 0 for i in (0, 1)), log.read_text()[-3000:]

        first = children(proc.pid)[0]
        os.kill(first, signal.SIGKILL)
        assert wait_until(
            lambda: len(children(proc.pid)) == 2 and first not in children(proc.pid)
        ), "the killed process was not started again"
        embed_on_a_new_connection(port, data)

        left = children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
        assert not any(Path(f"/proc/{pid}").exists() for pid in left)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_processes_that_cannot_start_stop_the_supervisor(tmp_path: Path) -> None:
    """A child that exits for its settings or a fatal start error would do it
    again: the supervisor stops, with that exit code, instead of looping."""
    port = free_port()
    env = embedder_env(port, EMBEDDER_PROCESSES="2", EMBEDDER_WEIGHTS=str(tmp_path / "none.pt"))
    proc = subprocess.run(
        [sys.executable, "-m", "embedder_service"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode in (2, 3), proc.stderr[-2000:]
    assert "none.pt" in proc.stderr


def test_process_settings_are_checked() -> None:
    for bad, match in [
        ({"processes": 0}, "EMBEDDER_PROCESSES=0"),
        ({"compile_mode": "fast"}, "EMBEDDER_COMPILE_MODE='fast'"),
        ({"busy_wait_ms": -1.0}, "EMBEDDER_BUSY_WAIT_MS"),
    ]:
        with pytest.raises(SettingsError, match=match):
            EmbedderSettings(**bad).validate()  # type: ignore[arg-type]
    EmbedderSettings(processes=4, compile_mode="reduce-overhead").validate()
