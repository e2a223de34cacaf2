"""Backends dying under a running system: an embedder killed mid-job, a
gateway restarted mid-job. Real processes, real signals."""

from __future__ import annotations

import signal
from pathlib import Path

from imagesearch.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
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


def test_embedder_killed_mid_job_then_resumed(tmp_path: Path) -> None:
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
        batch_retries=1,
        retry_attempts=2,
        embed_timeout_s=20.0,
    )
    try:
        stub = gateway_pb2_grpc.GatewayStub(channel(gateway.port))
        job = start_job(stub, "outage", CLOTHING)
        wait_until(lambda: get_job(stub, job.job_id).done >= 8)
        embedder.send_signal(signal.SIGKILL)
        embedder.wait()
        failed = wait_job(stub, job.job_id, timeout=120)
        assert failed.state == gateway_pb2.JOB_STATE_FAILED
        assert 8 <= failed.done < 64
        assert "unavailable" in failed.message and "ResumeJob" in failed.message

        embedder = spawn_embedder(port, log, EMBEDDER_MAX_BATCH="4")
        stub.ResumeJob(gateway_pb2.JobRef(job_id=job.job_id), timeout=30)
        final = wait_job(stub, job.job_id, timeout=180)
        assert final.state == gateway_pb2.JOB_STATE_SUCCEEDED, final.message
        assert (final.done, final.indexed, final.duplicates, final.failed) == (64, 64, 0, 0)
        assert stub.Count(common_pb2.CountRequest(collection="outage"), timeout=30).count == 64
    finally:
        embedder.kill()
        gateway.running.stop(1)
        index.running.stop(1)


def test_gateway_restart_resumes_its_jobs(tmp_path: Path, embedder) -> None:
    index = start_index(tmp_path / "index")
    gateway = start_gateway(tmp_path, embedder.addr, index.addr, embed_batch=4, job_concurrency=1)
    stub = gateway_pb2_grpc.GatewayStub(channel(gateway.port))
    job = start_job(stub, "restart", CLOTHING)
    wait_until(lambda: get_job(stub, job.job_id).done >= 8)
    gateway.running.stop(5)  # graceful stop: the job stays 'running' on disk

    again = start_gateway(tmp_path, embedder.addr, index.addr, embed_batch=4, job_concurrency=1)
    try:
        stub = gateway_pb2_grpc.GatewayStub(channel(again.port))
        final = wait_until(
            lambda: (j := get_job(stub, job.job_id)).state == gateway_pb2.JOB_STATE_SUCCEEDED and j
        )
        assert (final.done, final.indexed, final.duplicates, final.failed) == (64, 64, 0, 0)
        assert stub.Count(common_pb2.CountRequest(collection="restart"), timeout=30).count == 64
    finally:
        again.running.stop(1)
        index.running.stop(1)
