"""Jobs on NATS JetStream (GATEWAY_JOBS_URL): two gateways with their own data
folders share one nats-server, one embedder and one index. A job started
through one is listed, watched, canceled and resumed through the other; a
gateway killed mid-job has its chunks finished by the other, and a job
outlives a nats-server restart, every file counted once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path

import grpc
import pytest

from imagesearch.v1 import gateway_pb2, gateway_pb2_grpc
from tests.conftest import (
    CLOTHING,
    ROOT,
    SHARED,
    NatsServer,
    Server,
    channel,
    free_port,
    get_job,
    spawn_embedder,
    start_gateway,
    start_index,
    start_job,
    wait_job,
    wait_port,
    wait_until,
)

pytestmark = pytest.mark.nats
SUCCEEDED, CANCELED = gateway_pb2.JOB_STATE_SUCCEEDED, gateway_pb2.JOB_STATE_CANCELED
DOOMED = "d00000000001"  # a job made in the store by hand, with an id of the form gateways give


def shared_jobs(nats_url: str, prefix: str) -> dict[str, object]:
    """Gateway settings for jobs on NATS, small chunks, one in flight."""
    return {
        "jobs_url": nats_url,
        "jobs_prefix": prefix,
        "jobs_ack_wait_s": 3.0,
        "embed_batch": 4,
        "job_concurrency": 1,
    }


def distinct_photos(folder: Path, n: int) -> Path:
    """``n`` distinct files from the 64 photos: each one's bytes followed by
    its number after the JPEG's end (decoders stop at the end marker; the
    content hash, and so the image id, differs)."""
    folder.mkdir(parents=True)
    photos = sorted(CLOTHING.rglob("*.jpg"))
    for k in range(n):
        data = photos[k % len(photos)].read_bytes() + f"copy {k}".encode()
        (folder / f"p{k:04d}.jpg").write_bytes(data)
    return folder


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
        # Chunks in flight on a may still be recorded after the cancel: the
        # resume below must not take that for a second resume.
        stopped = get_job(via_a, second.job_id)
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
    folder = distinct_photos(tmp_path / "photos", 600)
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
    roots = (str(SHARED / "data"), str(tmp_path))  # every gateway reads the same folders
    b = start_gateway(tmp_path / "b", embedder.addr, index.addr, allowed_roots=roots, **settings)
    try:
        assert wait_port("127.0.0.1", port, 120), log.read_text()
        via_a = gateway_pb2_grpc.GatewayServiceStub(channel(port))
        job = wait_until(lambda: _start(via_a, folder), 120)
        wait_until(lambda: get_job(via_a, job.job_id).done >= 60, 300)
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=30)
        via_b = gateway_pb2_grpc.GatewayServiceStub(channel(b.port))
        final = wait_job(via_b, job.job_id)  # A's chunks go to B after AckWait
        assert final.state == SUCCEEDED, final.message
        assert (final.total, final.done, final.walk_complete) == (600, 600, True)
        assert final.failed == 0, final.errors[:3]
        assert final.indexed + final.duplicates == 600
        assert count(via_b, "killed") == 600
    finally:
        if a.poll() is None:
            a.kill()
        b.running.stop(1)
        index.running.stop(1)


def _start(stub: gateway_pb2_grpc.GatewayServiceStub, folder: Path) -> gateway_pb2.Job | None:
    """StartIndexJob once the gateway's backends serve (None while they do not)."""
    try:
        return start_job(stub, "killed", folder)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            return None
        raise


def test_a_job_outlives_a_nats_restart(embedder: Server, tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    index = start_index(tmp_path / "index")
    settings = shared_jobs(server.url, "restart")
    gateway = start_gateway(tmp_path / "a", embedder.addr, index.addr, **settings)
    try:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel(gateway.port))
        job = start_job(stub, "restarted", CLOTHING)
        wait_until(lambda: get_job(stub, job.job_id).done >= 8, 120)
        server.stop()
        with pytest.raises(grpc.RpcError) as err:
            start_job(stub, "refused", CLOTHING)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "GATEWAY_JOBS_URL" in (err.value.details() or "")
        time.sleep(2)
        server.start()
        final = wait_until(lambda: _ended(stub, job.job_id), 300)
        assert final.state == SUCCEEDED, final.message
        assert (final.total, final.done, final.failed) == (64, 64, 0)
        assert final.indexed + final.duplicates == 64
        assert count(stub, "restarted") == 64
    finally:
        gateway.running.stop(1)
        index.running.stop(1)
        server.stop()


def _ended(stub: gateway_pb2_grpc.GatewayServiceStub, job_id: str) -> gateway_pb2.Job | None:
    """The job once it has ended; None before, or while the gateway cannot
    reach NATS yet (UNAVAILABLE)."""
    try:
        job = get_job(stub, job_id)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            return None
        raise
    ended = (SUCCEEDED, CANCELED, gateway_pb2.JOB_STATE_FAILED)
    return job if job.state in ended else None


def test_a_chunk_that_keeps_losing_its_gateway_becomes_file_errors(
    nats_url: str, embedder: Server, tmp_path: Path
) -> None:
    from gateway.jobstore import CHUNK, WALK, JobRecord, walk_ended, walked
    from gateway.natsjobs import NatsJobStore
    from gateway.paths import AllowedRoots
    from gateway.walk import walk_images

    prefix = f"t{uuid.uuid4().hex[:8]}"
    # A gateway that walks the folder, takes chunk 0 and dies on it (never acks).
    dying = NatsJobStore(nats_url, prefix, max_errors_kept=10, ack_wait_s=1.0)
    folder = CLOTHING / "Hat"
    dying.create(JobRecord(DOOMED, "doomed", str(folder), True, chunk_size=4))
    walk = dying.claim(WALK, timeout=10)
    files = list(walk_images(folder, True, AllowedRoots([folder])))
    for number, start in enumerate(range(0, len(files), 4)):
        chunk = files[start : start + 4]
        dying.put_chunk(DOOMED, number, chunk)
        dying.change(DOOMED, partial(walked, files=len(chunk), last=chunk[-1]))
    dying.change(DOOMED, walk_ended)
    assert walk is not None
    walk.ack()
    held = dying.claim(CHUNK, timeout=10)
    assert held is not None and held.chunk == 0
    index = start_index(tmp_path / "index")
    settings = {**shared_jobs(nats_url, prefix), "jobs_ack_wait_s": 1.0, "jobs_max_deliver": 1}
    gateway = start_gateway(tmp_path / "g", embedder.addr, index.addr, **settings)
    try:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel(gateway.port))
        final = wait_job(stub, DOOMED)
        assert final.state == SUCCEEDED, final.message
        assert (final.total, final.done, final.failed) == (len(files), len(files), 4)
        assert final.indexed == len(files) - 4
        given_up = [e for e in final.errors if "given up after 1 tries" in e.reason]
        assert sorted(e.path for e in given_up) == files[:4]
    finally:
        gateway.running.stop(1)
        index.running.stop(1)
        dying.close()


@pytest.mark.processes
def test_a_job_failed_by_an_outage_is_resumed_through_another_gateway(
    nats_url: str, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "embedder.log"
    embedder = spawn_embedder(port, log, EMBEDDER_MAX_BATCH="4")
    index = start_index(tmp_path / "index")
    settings = {
        **shared_jobs(nats_url, f"t{uuid.uuid4().hex[:8]}"),
        "backend_wait_s": 0.5,
        "job_outage_s": 2.0,
    }
    a = start_gateway(tmp_path / "a", f"127.0.0.1:{port}", index.addr, **settings)
    b = start_gateway(tmp_path / "b", f"127.0.0.1:{port}", index.addr, **settings)
    try:
        via_a = gateway_pb2_grpc.GatewayServiceStub(channel(a.port))
        via_b = gateway_pb2_grpc.GatewayServiceStub(channel(b.port))
        job = start_job(via_b, "outage", CLOTHING)
        wait_until(lambda: get_job(via_b, job.job_id).done >= 8, 120)
        embedder.send_signal(signal.SIGKILL)
        embedder.wait()
        failed = wait_job(via_b, job.job_id, timeout=120)
        assert failed.state == gateway_pb2.JOB_STATE_FAILED, failed.message
        assert "GATEWAY_JOB_OUTAGE_S" in failed.message and failed.done < 64
        embedder = spawn_embedder(port, log, EMBEDDER_MAX_BATCH="4")
        via_a.ResumeJob(gateway_pb2.ResumeJobRequest(job_id=job.job_id), timeout=30)
        final = wait_job(via_a, job.job_id, timeout=240)
        assert final.state == SUCCEEDED, final.message
        assert (final.total, final.done, final.failed) == (64, 64, 0)
        assert final.indexed + final.duplicates == 64
        assert count(via_a, "outage") == 64
    finally:
        embedder.kill()
        a.running.stop(1)
        b.running.stop(1)
        index.running.stop(1)
