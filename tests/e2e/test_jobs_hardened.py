"""Jobs that a bad id, a garbage message, a damaged or forged record, or an
unexpected exception cannot break (issue 44): each test runs a real gateway
(in-process), index and embedder, and, on NATS, the tests' nats-server, into
which it writes what a careless or hostile client of NATS could."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest

from gateway import jobs as gateway_jobs
from gateway.jobstore import RECORD_MAX_BYTES, UNITS_REJECTED
from imagesearch.v1 import gateway_pb2, gateway_pb2_grpc
from tests.conftest import (
    CLOTHING,
    JOB_STORES,
    Server,
    channel,
    job_store_settings,
    start_gateway,
    start_index,
    start_job,
    wait_job,
)

SUCCEEDED = gateway_pb2.JOB_STATE_SUCCEEDED
FAILED = gateway_pb2.JOB_STATE_FAILED


def nats_do(url: str, action: Callable[[Any], Any]) -> Any:
    """Runs ``action(nc)`` (a coroutine function) on a connection of its own."""

    async def run() -> Any:
        nc = await nats.connect(url)
        try:
            return await action(nc)
        finally:
            await nc.close()

    return asyncio.run(run())


def kv_put(url: str, bucket: str, key: str, value: bytes) -> None:
    async def put(nc: Any) -> None:
        kv = await nc.jetstream().key_value(bucket)
        await kv.put(key, value)

    nats_do(url, put)


def kv_get(url: str, bucket: str, key: str) -> bytes | None:
    async def get(nc: Any) -> bytes | None:
        kv = await nc.jetstream().key_value(bucket)
        return (await kv.get(key)).value

    return nats_do(url, get)


def publish(url: str, subject: str, *payloads: bytes) -> None:
    async def send(nc: Any) -> None:
        js = nc.jetstream()
        for data in payloads:
            await js.publish(subject, data)

    nats_do(url, send)


def rejected(reason: str) -> float:
    return UNITS_REJECTED.labels(reason)._value.get()


def first_of(stream: Iterator[Any]) -> Any:
    return next(iter(stream))


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details() or ""


@pytest.fixture(params=JOB_STORES)
def job_settings(request: pytest.FixtureRequest) -> dict[str, object]:
    return job_store_settings(request, request.param)


@pytest.fixture
def nats_settings(nats_url: str) -> dict[str, object]:
    return {"jobs_url": nats_url, "jobs_prefix": f"t{uuid.uuid4().hex[:10]}"}


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Server]:
    running = start_index(tmp_path / "index")
    yield running
    running.running.stop(1)


def gateway(
    tmp: Path, embedder: Server, index: Server, **settings: object
) -> tuple[Server, gateway_pb2_grpc.GatewayServiceStub]:
    server = start_gateway(tmp, embedder.addr, index.addr, **settings)
    return server, gateway_pb2_grpc.GatewayServiceStub(channel(server.port))


def test_a_malformed_job_id_is_not_found_on_every_store(
    job_settings: dict[str, object], embedder: Server, index: Server, tmp_path: Path
) -> None:
    """GetJob("") reached NATS's kv.get(""), whose InvalidKeyError became
    UNAVAILABLE: the web face's access check answered 503 to every upload."""
    server, stub = gateway(tmp_path, embedder, index, **job_settings)
    try:
        for bad in ("", ">", "a b", "*", "x" * 300, "../../etc", "0123456789ab.1"):
            for call in (
                partial(stub.GetJob, gateway_pb2.GetJobRequest(job_id=bad), timeout=30),
                partial(stub.CancelJob, gateway_pb2.CancelJobRequest(job_id=bad), timeout=30),
                partial(stub.ResumeJob, gateway_pb2.ResumeJobRequest(job_id=bad), timeout=30),
                partial(first_of, stub.WatchJob(gateway_pb2.WatchJobRequest(job_id=bad))),
            ):
                code, message = code_of(call)
                assert code == grpc.StatusCode.NOT_FOUND, (bad, code, message)
                assert "12 hex digits" in message and len(message) < 300
        answer = stub.CheckAccess(gateway_pb2.CheckAccessRequest(write=True), timeout=30)
        assert answer.role == "admin"  # a gateway without tokens lets everybody do everything
    finally:
        server.running.stop(1)


@pytest.mark.nats
def test_poison_is_quarantined_and_never_stops_a_gateway(
    nats_settings: dict[str, object], embedder: Server, index: Server, tmp_path: Path
) -> None:
    url, prefix = str(nats_settings["jobs_url"]), str(nats_settings["jobs_prefix"])
    first, stub = gateway(tmp_path / "a", embedder, index, **nats_settings)
    second = None
    try:
        damaged = {"0badbadbad01": b"{}", "0badbadbad02": b"not json", "0badbadbad03": b"[1]"}
        no_batch = {"job_id": "0badbadbad04", "collection": "c", "folder": "/x", "recursive": True}
        damaged["0badbadbad04"] = json.dumps({**no_batch, "batch_size": 0}).encode()
        for key, value in damaged.items():
            kv_put(url, f"{prefix}_jobs", key, value)
        unparseable, damaged_before = rejected("unparseable"), rejected("job_damaged")
        bad_ids = rejected("bad_job_id")
        publish(url, f"{prefix}.work.walk", b"x", b'{"job": ">"}', b'{"job": "0badbadbad01"}')
        publish(url, f"{prefix}.work.chunk", b"\xff", b'{"job": 5, "chunk": 0}')

        # Every worker lives on: a job started now runs to the end.
        job = start_job(stub, "poison", CLOTHING)
        final = wait_job(stub, job.job_id)
        assert final.state == SUCCEEDED and final.indexed == 64, final.message
        assert rejected("unparseable") - unparseable == 3
        assert rejected("job_damaged") - damaged_before == 1
        assert rejected("bad_job_id") - bad_ids == 1

        code, message = code_of(
            lambda: stub.GetJob(gateway_pb2.GetJobRequest(job_id="0badbadbad02"), timeout=30)
        )
        assert code == grpc.StatusCode.DATA_LOSS and "0badbadbad02" in message

        # A gateway that starts now (it indexes the records put by other
        # means, and its job manager lists them) serves, and runs jobs.
        second, via_second = gateway(tmp_path / "b", embedder, index, **nats_settings)
        again = start_job(via_second, "poison", CLOTHING)
        assert wait_job(via_second, again.job_id).state == SUCCEEDED

        # A damaged record is listed as a FAILED job saying so, on every gateway.
        for via in (stub, via_second):
            listed = via.ListJobs(gateway_pb2.ListJobsRequest(page_size=100), timeout=30).jobs
            by_id = {j.job_id: j for j in listed}
            assert {job.job_id, again.job_id} | set(damaged) == set(by_id)
            for key in damaged:
                assert by_id[key].state == FAILED and "damaged" in by_id[key].message
            assert [j.job_id for j in listed][:2] == [again.job_id, job.job_id]  # newest first
    finally:
        first.running.stop(1)
        if second is not None:
            second.running.stop(1)


def forged(job_id: str, folder: Path, **fields: object) -> bytes:
    record = {
        "job_id": job_id,
        "collection": "forged",
        "folder": str(folder),
        "recursive": True,
        "state": "pending",
        "batch_size": 4,
        "created_at_ms": 1,
        **fields,
    }
    return json.dumps(record).encode()


@pytest.mark.nats
def test_forged_work_is_refused_before_any_file_is_opened(
    nats_settings: dict[str, object], embedder: Server, index: Server, tmp_path: Path
) -> None:
    """A job record put straight into the bucket, naming a folder outside
    GATEWAY_ALLOWED_ROOTS, was walked and its files listed; a forged chunk's
    paths reached os.open. Both now fail the job PERMISSION_DENIED."""
    url, prefix = str(nats_settings["jobs_url"]), str(nats_settings["jobs_prefix"])
    inside = tmp_path / "inside"
    inside.mkdir()
    server, stub = gateway(tmp_path, embedder, index, **nats_settings, allowed_roots=(str(inside),))
    try:
        outside_before = rejected("outside_roots")
        walk_id, chunk_id = "f0f0f0f0f001", "f0f0f0f0f002"
        kv_put(url, f"{prefix}_jobs", walk_id, forged(walk_id, CLOTHING, walk_done=False))
        publish(url, f"{prefix}.work.walk", json.dumps({"job": walk_id}).encode())
        chunk = forged(chunk_id, inside, walk_done=True, walked_chunks=1, total=2)
        kv_put(url, f"{prefix}_jobs", chunk_id, chunk)
        files = [str(inside / "a.jpg"), str(inside / ".." / ".." / "etc" / "passwd")]
        kv_put(url, f"{prefix}_chunks", f"{chunk_id}.0", json.dumps(files).encode())
        publish(url, f"{prefix}.work.chunk", json.dumps({"job": chunk_id, "chunk": 0}).encode())
        for job_id in (walk_id, chunk_id):
            final = wait_job(stub, job_id)
            assert final.state == FAILED and "PERMISSION_DENIED" in final.message, final
            assert (final.total, final.done, final.failed) == (2 if job_id == chunk_id else 0, 0, 0)
        assert kv_get_or_none(url, f"{prefix}_chunks", f"{walk_id}.0") is None  # nothing listed
        assert rejected("outside_roots") - outside_before == 2
    finally:
        server.running.stop(1)


def kv_get_or_none(url: str, bucket: str, key: str) -> bytes | None:
    try:
        return kv_get(url, bucket, key)
    except nats.js.errors.KeyNotFoundError:
        return None


@pytest.mark.slow
def test_a_worker_survives_an_unexpected_exception_in_its_unit(
    job_settings: dict[str, object],
    embedder: Server,
    index: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One walk worker (GATEWAY_MAX_WALKS=1): the first walk raises a bug's
    exception; the job fails saying so, and the next job runs on the same worker."""
    real = gateway_jobs.walk_images
    calls = []

    def broken_once(*args: Any, **kwargs: Any) -> Iterator[str]:
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(gateway_jobs, "walk_images", broken_once)
    server, stub = gateway(tmp_path, embedder, index, **job_settings, max_walks=1)
    try:
        first = wait_job(stub, start_job(stub, "bug", CLOTHING).job_id)
        assert first.state == FAILED and "internal error (RuntimeError)" in first.message
        second = wait_job(stub, start_job(stub, "bug", CLOTHING).job_id)
        assert second.state == SUCCEEDED and second.indexed == 64, second.message
    finally:
        server.running.stop(1)


def test_a_job_record_stays_small_whatever_its_errors(
    job_settings: dict[str, object], embedder: Server, index: Server, tmp_path: Path
) -> None:
    """1,000 undecodable .jpg files with 600-character paths: every one is
    counted, the first are listed, and the record stays under 64 KiB (it
    outgrew a NATS message and the job never ended)."""
    folder = tmp_path / "bad"
    deep = folder / ("d" * 200) / ("e" * 200)
    deep.mkdir(parents=True)
    for n in range(1000):
        name = f"{n:04d}-" + "f" * (600 - len(str(deep)) - 10) + ".jpg"
        (deep / name).write_bytes(b"not a jpeg " + bytes([n % 256]) * 8)
    assert len(str(next(deep.iterdir()))) == 600
    server, stub = gateway(tmp_path, embedder, index, **job_settings, embed_batch=64)
    try:
        final = wait_job(stub, start_job(stub, "bad", folder).job_id, timeout=600)
        assert final.state == SUCCEEDED, final.message
        assert (final.total, final.failed, final.indexed) == (1000, 1000, 0)
        assert 20 <= len(final.errors) < 1000
        assert final.errors_omitted == 1000 - len(final.errors)
        if job_settings:
            url, prefix = str(job_settings["jobs_url"]), str(job_settings["jobs_prefix"])
            record = kv_get(url, f"{prefix}_jobs", final.job_id)
        else:
            record = (tmp_path / "gw" / "jobs" / f"{final.job_id}.json").read_bytes()
        assert record is not None and len(record) < RECORD_MAX_BYTES
    finally:
        server.running.stop(1)
