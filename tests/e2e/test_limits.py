"""Budgets and caps with real servers: large photos are split over Embed
calls that fit the embedder's message limit, one too large for any call is a
per-file error, Search refuses too many queries before reading any, streams
are capped so short calls always answer, and stream answers stay small.

Kept lean: a lowered embedder message limit (8 MiB) and ~3 MB photos prove
what 128 MiB and 6.5 MB camera photos would (bench/ingest.py --camera runs
the full-size case)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from imagesearch.client import Client, ImageSearchError, JobState
from imagesearch.v1 import gateway_pb2, gateway_pb2_grpc
from tests.conftest import (
    CLOTHING,
    Stack,
    channel,
    clothing_images,
    start_embedder,
    start_gateway,
    start_index,
    wait_until,
)

MESSAGE_MB = 8


def large_photo(path: Path, index: int, side: tuple[int, int] = (2400, 1800)) -> int:
    """A distinct ~3 MB JPEG made from a clothing photo (upscaled, with grain)."""
    name, _ = clothing_images()[index % 64]
    with Image.open(CLOTHING / name) as src:
        arr = np.asarray(src.convert("RGB").resize(side)).astype(np.int16)
    grain = np.random.default_rng(index).integers(-40, 40, arr.shape)
    Image.fromarray(np.clip(arr + grain, 0, 255).astype(np.uint8)).save(path, quality=95)
    return path.stat().st_size


@pytest.fixture
def small_message_stack(tmp_path: Path) -> Iterator[Stack]:
    embedder = start_embedder(max_message_mb=MESSAGE_MB)
    index = start_index(tmp_path / "index")
    gateway = start_gateway(tmp_path, embedder.addr, index.addr, embed_batch=32)
    yield Stack(embedder, index, gateway, tmp_path)
    gateway.running.stop(1)
    index.running.stop(1)
    embedder.running.stop(1)


@pytest.mark.slow
def test_large_photos_index_through_stream_and_job(small_message_stack: Stack) -> None:
    folder = small_message_stack.tmp / "photos"
    folder.mkdir()
    sizes = [large_photo(folder / f"p{i:02}.jpg", i) for i in range(12)]
    assert sum(sizes) > 3 * MESSAGE_MB * 1024 * 1024  # would need 4+ Embed calls
    # One noise photo over the embedder's whole message limit.
    noise = np.random.default_rng(99).integers(0, 255, (2200, 2200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "huge.jpg", quality=100)
    assert (folder / "huge.jpg").stat().st_size > MESSAGE_MB * 1024 * 1024

    with Client(small_message_stack.gateway.addr, timeout=300) as client:
        report = client.index_files(sorted(folder.iterdir()), collection="stream")
        assert (report.files, report.indexed, report.failed) == (13, 12, 1)
        (error,) = report.errors
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "huge.jpg" in error.reason and "EMBEDDER_MAX_MESSAGE_MB" in error.reason
        assert client.count(collection="stream").count == 12

        job = client.start_job(str(folder), collection="job")
        final = list(client.watch_job(job.job_id))[-1]
        assert final.state is JobState.SUCCEEDED, final.message
        assert (final.total, final.done, final.indexed, final.failed) == (13, 13, 12, 1)
        assert "EMBEDDER_MAX_MESSAGE_MB" in final.errors[0].reason
        assert client.count(collection="job").count == 12


def test_search_refuses_too_many_queries_before_reading_any(stack: Stack) -> None:
    # Paths that do not exist: had any been read, the answer would be NOT_FOUND.
    queries = [gateway_pb2.Query(path=str(stack.tmp / f"nope-{i}.jpg")) for i in range(2000)]
    stub = gateway_pb2_grpc.GatewayServiceStub(channel(stack.gateway.port))
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(gateway_pb2.SearchRequest(collection="x", queries=queries), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "2000 queries" in str(err.value.details())
    assert "GATEWAY_MAX_QUERIES" in str(err.value.details())


@pytest.mark.slow
def test_streams_are_capped_and_short_calls_still_answer(embedder, tmp_path: Path) -> None:
    index = start_index(tmp_path / "index")
    gateway = start_gateway(
        tmp_path,
        embedder.addr,
        index.addr,
        max_watchers=4,
        rpc_workers=8,
        embed_batch=1,
        job_concurrency=1,
    )
    try:
        with Client(gateway.addr, timeout=60) as client:
            job = client.start_job(str(CLOTHING), collection="watched")
            stub = gateway_pb2_grpc.GatewayServiceStub(channel(gateway.port))
            streams = [
                stub.WatchJob(gateway_pb2.WatchJobRequest(job_id=job.job_id), timeout=120)
                for _ in range(10)
            ]
            outcomes: list[str] = []
            for s in streams:
                try:
                    next(s)
                    outcomes.append("open")
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "GATEWAY_MAX_WATCHERS" in str(exc.details())
                    outcomes.append("refused")
            assert outcomes.count("open") <= 4 and outcomes.count("refused") >= 6
            # Health and a short call answer while the streams hold their slots.
            health = health_pb2_grpc.HealthStub(channel(gateway.port)).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            assert client.list_jobs()[0].job_id == job.job_id
            for s in streams:
                s.cancel()
            wait_until(lambda: client.get_job(job.job_id).state.terminal, 300)
    finally:
        gateway.running.stop(1)
        index.running.stop(1)


@pytest.mark.slow
def test_stream_answer_is_counts_and_bounded_errors(embedder, tmp_path: Path) -> None:
    index = start_index(tmp_path / "index")
    gateway = start_gateway(tmp_path, embedder.addr, index.addr, max_errors_kept=3)
    try:
        with Client(gateway.addr, timeout=120) as client:
            good = [
                (f"good-{i}.jpg", (CLOTHING / p).read_bytes())
                for i, (p, _) in enumerate(clothing_images()[:4])
            ]
            bad = [(f"bad-{i}.jpg", b"not an image %d" % i) for i in range(10)]
            report = client.index_images(good + bad, collection="small")
            assert (report.indexed, report.failed) == (4, 10)
            assert len(report.errors) == 3 and report.errors_omitted == 7
            assert report.image_ids == {}  # not asked for
            again = client.index_images(good, collection="small", return_images=True)
            assert again.duplicates == 4 and set(again.image_ids) == {n for n, _ in good}
    finally:
        gateway.running.stop(1)
        index.running.stop(1)


def test_many_jobs_page_and_old_ones_expire(embedder, tmp_path: Path) -> None:
    """300 finished jobs with 100 long errors each (~6 MB in all, over the 4 MiB
    message limit): ListJobs pages and leaves the errors out; jobs finished
    longer ago than GATEWAY_JOB_RETENTION_H are forgotten, files and all."""
    import json
    import time

    jobs_dir = tmp_path / "gw" / "jobs"
    jobs_dir.mkdir(parents=True)
    now = int(time.time() * 1000)
    old_ms = now - 3 * 24 * 3600 * 1000
    for n in range(300):
        stamp = old_ms + n if n < 100 else now - 1000 + n  # the first 100 are 3 days old
        state = {
            "job_id": f"{n:012x}",
            "collection": "many",
            "folder": str(tmp_path),
            "recursive": True,
            "state": "succeeded",
            "total": 100,
            "done": 100,
            "failed": 100,
            "errors": [
                {"path": f"/x/{'y' * 150}/{i}.jpg", "reason": "corrupt " + "z" * 50, "code": 3}
                for i in range(100)
            ],
            "created_at_ms": stamp,
            "updated_at_ms": stamp,
        }
        (jobs_dir / f"{n:012x}.json").write_text(json.dumps(state))
        (jobs_dir / f"{n:012x}.files").write_text("")
    index = start_index(tmp_path / "index")
    gateway = start_gateway(tmp_path, embedder.addr, index.addr, job_retention_h=24.0)
    try:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel(gateway.port))
        seen: list[str] = []
        token = ""
        while True:
            page = stub.ListJobs(
                gateway_pb2.ListJobsRequest(page_size=64, page_token=token), timeout=30
            )
            assert len(page.jobs) <= 64 and all(not j.errors for j in page.jobs)
            assert page.ByteSize() < 4 * 1024 * 1024
            seen += [j.job_id for j in page.jobs]
            token = page.next_page_token
            if not token:
                break
        assert seen == [f"{n:012x}" for n in range(299, 99, -1)]  # newest first, once each
        assert not (jobs_dir / f"{0:012x}.json").exists()
        assert not (jobs_dir / f"{0:012x}.files").exists()
        with Client(gateway.addr) as client:
            assert len(client.get_job(f"{150:012x}").errors) == 100  # GetJob has them all
            assert len(client.list_jobs(limit=10, include_errors=True)[0].errors) == 100
            with pytest.raises(ImageSearchError) as err:
                client.get_job(f"{1:012x}")
            assert err.value.code == grpc.StatusCode.NOT_FOUND
    finally:
        gateway.running.stop(1)
        index.running.stop(1)


@pytest.mark.slow
def test_a_job_rides_out_a_full_embedder_queue(tmp_path: Path, caplog) -> None:
    """Overload is not failure: Embed calls refused RESOURCE_EXHAUSTED (queue
    full) are retried with backoff and the job stores every file."""
    import logging

    embedder = start_embedder(queue_size=8, max_batch=4)
    index = start_index(tmp_path / "index")
    gateway = start_gateway(tmp_path, embedder.addr, index.addr, embed_batch=6, job_concurrency=3)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.jobs"), Client(gateway.addr) as c:
            job = c.start_job(str(CLOTHING), collection="busy")
            final = list(c.watch_job(job.job_id))[-1]
        assert final.state is JobState.SUCCEEDED, final.message
        assert (final.done, final.indexed, final.failed) == (64, 64, 0)
        retries = [r for r in caplog.records if "job.chunk_retry" in r.getMessage()]
        assert retries, "the queue never filled: the test proves nothing"
        assert any("EMBEDDER_QUEUE_SIZE" in str(getattr(r, "fields", r.__dict__)) for r in retries)
    finally:
        gateway.running.stop(1)
        index.running.stop(1)
        embedder.running.stop(1)
