"""Backends dying under a running system: an embedder killed mid-job, a
gateway restarted mid-job. Real processes, real signals."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from imagesearch.v1 import gateway_pb2, gateway_pb2_grpc
from tests.conftest import (
    CLOTHING,
    channel,
    free_port,
    get_job,
    spawn_embedder,
    start_gateway,
    start_index,
    start_job,
    wait_job,
    wait_until,
)

pytestmark = pytest.mark.processes  # embedders started, killed and restarted as processes


def test_job_rides_out_an_embedder_restart(tmp_path: Path) -> None:
    """The embedder killed mid-job and started again within GATEWAY_JOB_OUTAGE_S:
    the job finishes by itself, every file counted once."""
    port = free_port()
    log = tmp_path / "embedder.log"
    embedder = spawn_embedder(port, log, EMBEDDER_MAX_BATCH="4")
    index = start_index(tmp_path / "index")
    gateway = start_gateway(
        tmp_path, f"127.0.0.1:{port}", index.addr, embed_batch=4, job_concurrency=1
    )
    try:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel(gateway.port))
        job = start_job(stub, "rides", CLOTHING)
        wait_until(lambda: get_job(stub, job.job_id).done >= 8)
        embedder.send_signal(signal.SIGKILL)
        embedder.wait()
        time.sleep(2)
        assert get_job(stub, job.job_id).state == gateway_pb2.JOB_STATE_RUNNING
        embedder = spawn_embedder(port, log, EMBEDDER_MAX_BATCH="4")
        final = wait_job(stub, job.job_id, timeout=240)
        assert final.state == gateway_pb2.JOB_STATE_SUCCEEDED, final.message
        assert (final.done, final.indexed, final.duplicates, final.failed) == (64, 64, 0, 0)
        assert stub.Count(gateway_pb2.CountRequest(collection="rides"), timeout=30).count == 64
    finally:
        embedder.kill()
        gateway.running.stop(1)
        index.running.stop(1)


def test_embedder_down_past_the_outage_limit_then_resumed(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "embedder.log"
    embedder = spawn_embedder(port, log, EMBEDDER_MAX_BATCH="4")
    index = start_index(tmp_path / "index")
    gateway = start_gateway(
        tmp_path,
        f"127.0.0.1:{port}",
        index.addr,
        embed_batch=4,
        job_concurrency=1,
        backend_wait_s=0.5,
        job_outage_s=2.0,
    )
    try:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel(gateway.port))
        job = start_job(stub, "outage", CLOTHING)
        wait_until(lambda: get_job(stub, job.job_id).done >= 8)
        embedder.send_signal(signal.SIGKILL)
        embedder.wait()
        failed = wait_job(stub, job.job_id, timeout=120)
        assert failed.state == gateway_pb2.JOB_STATE_FAILED
        assert 8 <= failed.done < 64
        assert "the embedder is not reachable" in failed.message, failed.message
        assert str(port) not in failed.message  # addresses go to the log only
        assert "GATEWAY_JOB_OUTAGE_S" in failed.message and "ResumeJob" in failed.message

        embedder = spawn_embedder(port, log, EMBEDDER_MAX_BATCH="4")
        stub.ResumeJob(gateway_pb2.ResumeJobRequest(job_id=job.job_id), timeout=30)
        final = wait_job(stub, job.job_id, timeout=180)
        assert final.state == gateway_pb2.JOB_STATE_SUCCEEDED, final.message
        assert (final.done, final.indexed, final.duplicates, final.failed) == (64, 64, 0, 0)
        assert stub.Count(gateway_pb2.CountRequest(collection="outage"), timeout=30).count == 64
    finally:
        embedder.kill()
        gateway.running.stop(1)
        index.running.stop(1)


def test_gateway_restart_resumes_its_jobs(tmp_path: Path, embedder) -> None:
    index = start_index(tmp_path / "index")
    gateway = start_gateway(tmp_path, embedder.addr, index.addr, embed_batch=4, job_concurrency=1)
    stub = gateway_pb2_grpc.GatewayServiceStub(channel(gateway.port))
    job = start_job(stub, "restart", CLOTHING)
    wait_until(lambda: get_job(stub, job.job_id).done >= 8)
    gateway.running.stop(5)  # graceful stop: the job stays 'running' on disk

    again = start_gateway(tmp_path, embedder.addr, index.addr, embed_batch=4, job_concurrency=1)
    try:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel(again.port))
        final = wait_until(
            lambda: (j := get_job(stub, job.job_id)).state == gateway_pb2.JOB_STATE_SUCCEEDED and j
        )
        assert (final.done, final.indexed, final.duplicates, final.failed) == (64, 64, 0, 0)
        assert stub.Count(gateway_pb2.CountRequest(collection="restart"), timeout=30).count == 64
    finally:
        again.running.stop(1)
        index.running.stop(1)
