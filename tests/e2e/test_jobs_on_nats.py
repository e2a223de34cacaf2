"""Jobs on NATS JetStream (GATEWAY_JOBS_URL): two gateways with their own data
folders share one nats-server, one embedder and one index. A job started
through one is listed, watched, canceled and resumed through the other, and
a gateway killed mid-job has its job finished by the other, every file
counted once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest

from imagesearch.v1 import gateway_pb2, gateway_pb2_grpc
from tests.conftest import (
    CLOTHING,
    ROOT,
    SHARED,
    Server,
    channel,
    free_port,
    get_job,
    start_gateway,
    start_index,
    start_job,
    wait_job,
    wait_port,
    wait_until,
)

pytestmark = pytest.mark.nats
SUCCEEDED, CANCELED = gateway_pb2.JOB_STATE_SUCCEEDED, gateway_pb2.JOB_STATE_CANCELED


def shared_jobs(nats_url: str, prefix: str) -> dict[str, object]:
    """Gateway settings for jobs on NATS, small chunks, one in flight."""
    return {
        "jobs_url": nats_url,
        "jobs_prefix": prefix,
        "jobs_lease_s": 3.0,
        "embed_batch": 4,
        "job_concurrency": 1,
    }


def count(stub: gateway_pb2_grpc.GatewayServiceStub, collection: str) -> int:
    return stub.Count(gateway_pb2.CountRequest(collection=collection), timeout=30).count


def test_every_gateway_lists_watches_cancels_and_resumes_every_job(
    nats_url: str, embedder: Server, tmp_path: Path
) -> None:
    settings = shared_jobs(nats_url, f"t{uuid.uuid4().hex[:8]}")
    index = start_index(tmp_path / "index")
    a = start_gateway(tmp_path / "a", embedder.addr, index.addr, **settings)
    b = start_gateway(tmp_path / "b", embedder.addr, index.addr, **settings)
    try:
        via_a = gateway_pb2_grpc.GatewayServiceStub(channel(a.port))
        via_b = gateway_pb2_grpc.GatewayServiceStub(channel(b.port))
        job = start_job(via_a, "shared", CLOTHING)
        listed = via_b.ListJobs(gateway_pb2.ListJobsRequest(collection="shared"), timeout=30)
        assert [j.job_id for j in listed.jobs] == [job.job_id]
        final = wait_job(via_b, job.job_id)  # watched through the gateway that does not run it
        assert final.state == SUCCEEDED
        assert (final.done, final.indexed, final.duplicates, final.failed) == (64, 64, 0, 0)
        assert count(via_b, "shared") == 64

        second = start_job(via_a, "halted", CLOTHING)
        wait_until(lambda: get_job(via_b, second.job_id).done >= 8, 120)
        canceled = via_b.CancelJob(gateway_pb2.CancelJobRequest(job_id=second.job_id), timeout=60)
        assert canceled.job.state == CANCELED
        stopped = wait_until(lambda: (j := get_job(via_a, second.job_id)).done and j, 30)
        assert stopped.state == CANCELED and stopped.done < 64
        resumed = via_b.ResumeJob(gateway_pb2.ResumeJobRequest(job_id=second.job_id), timeout=60)
        assert resumed.job.state != CANCELED
        final = wait_job(via_a, second.job_id)
        assert final.state == SUCCEEDED and final.done == 64 and final.failed == 0
        assert final.indexed + final.duplicates == 64
        assert count(via_a, "halted") == 64
    finally:
        a.running.stop(1)
        b.running.stop(1)
        index.running.stop(1)


@pytest.mark.processes
def test_a_job_outlives_a_killed_gateway(nats_url: str, embedder: Server, tmp_path: Path) -> None:
    settings = shared_jobs(nats_url, f"t{uuid.uuid4().hex[:8]}")
    index = start_index(tmp_path / "index")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({f"GATEWAY_{k.upper()}": str(v) for k, v in settings.items()})
    env.update(
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_PORT=str(port),
        GATEWAY_EMBEDDER_ADDR=embedder.addr,
        GATEWAY_INDEX_ADDR=index.addr,
        GATEWAY_DATA_DIR=str(tmp_path / "a"),
        GATEWAY_ALLOWED_ROOTS=f"{SHARED / 'data'},{tmp_path}",
    )
    log = tmp_path / "a.log"
    with log.open("wb") as out:
        a = subprocess.Popen(
            [sys.executable, "-m", "gateway"], env=env, cwd=ROOT, stdout=out, stderr=out
        )
    b = start_gateway(tmp_path / "b", embedder.addr, index.addr, **settings)
    try:
        assert wait_port("127.0.0.1", port, 120), log.read_text()
        via_a = gateway_pb2_grpc.GatewayServiceStub(channel(port))
        job = wait_until(lambda: _start(via_a), 120)
        wait_until(lambda: get_job(via_a, job.job_id).done >= 8, 120)
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=30)
        via_b = gateway_pb2_grpc.GatewayServiceStub(channel(b.port))
        final = wait_job(via_b, job.job_id)  # taken over once A's lease runs out
        assert final.state == SUCCEEDED, final.message
        assert (final.done, final.failed) == (64, 0)
        assert final.indexed + final.duplicates == 64
        assert count(via_b, "killed") == 64
    finally:
        if a.poll() is None:
            a.kill()
        b.running.stop(1)
        index.running.stop(1)


def _start(stub: gateway_pb2_grpc.GatewayServiceStub) -> gateway_pb2.Job | None:
    """StartIndexJob once the gateway's backends serve (None while they do not)."""
    try:
        return start_job(stub, "killed", CLOTHING)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            return None
        raise
