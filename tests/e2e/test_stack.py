"""The whole stack on the embedded defaults with the real MobileNetV2 weights."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from imagesearch.client import image_requests
from imagesearch.v1 import gateway_pb2, gateway_pb2_grpc
from tests.conftest import (
    CLOTHING,
    ODD,
    Stack,
    channel,
    clothing_images,
    odd_manifest,
    start_job,
    wait_job,
)


@pytest.fixture
def stack(module_stack: Stack) -> Stack:
    """One stack for this module: each test keeps to its own collections and files."""
    return module_stack


def gw(stack: Stack) -> gateway_pb2_grpc.GatewayServiceStub:
    return gateway_pb2_grpc.GatewayServiceStub(channel(stack.gateway.port))


def stream(
    collection: str, files: list[tuple[str, bytes]], chunk: int = 256 * 1024
) -> Iterator[gateway_pb2.IndexImagesRequest]:
    """The typed client's request stream, in small chunks, asking for every image."""
    return image_requests(collection, files, return_images=True, chunk=chunk)


def clothing_files() -> list[tuple[str, bytes]]:
    return [(str(CLOTHING / p), (CLOTHING / p).read_bytes()) for p, _ in clothing_images()]


def count(stub: gateway_pb2_grpc.GatewayServiceStub, collection: str) -> int:
    return stub.Count(gateway_pb2.CountRequest(collection=collection), timeout=30).count


def test_stream_ingest_search_delete_drop(stack: Stack) -> None:
    stub = gw(stack)
    files = clothing_files()
    first = stub.IndexImages(stream("clothes", files), timeout=600)
    assert (first.indexed, first.duplicates, first.failed) == (64, 0, 0)
    assert count(stub, "clothes") == 64

    again = stub.IndexImages(stream("clothes", files), timeout=600)
    assert (again.indexed, again.duplicates, again.failed) == (0, 64, 0)
    assert count(stub, "clothes") == 64

    for name, data in files:
        response = stub.Search(
            gateway_pb2.SearchRequest(collection="clothes", image=data, top_k=5), timeout=60
        )
        assert len(response.hits) == 5
        assert response.hits[0].path == name
        assert response.hits[0].score == pytest.approx(1.0, abs=0.02)
        assert response.hits[0].width > 0 and response.hits[0].height > 0

    # Several queries in one call, by bytes, stored id and server path.
    by_id = first.images[5].image_id
    multi = stub.Search(
        gateway_pb2.SearchRequest(
            collection="clothes",
            top_k=3,
            queries=[
                gateway_pb2.Query(image=files[0][1]),
                gateway_pb2.Query(image_id=by_id),
                gateway_pb2.Query(path=files[9][0]),
            ],
        ),
        timeout=60,
    )
    assert [r.hits[0].path for r in multi.results] == [
        files[0][0],
        first.images[5].name,
        files[9][0],
    ]
    high = stub.Search(
        gateway_pb2.SearchRequest(
            collection="clothes", image=files[0][1], top_k=50, min_score=0.999
        ),
        timeout=60,
    )
    assert [h.path for h in high.hits] == [files[0][0]]

    prefix = str(CLOTHING / "Hat") + "/"
    deleted = stub.Delete(
        gateway_pb2.DeleteRequest(collection="clothes", path_prefix=prefix), timeout=60
    )
    assert deleted.deleted == 8
    assert count(stub, "clothes") == 56
    left = stub.Search(
        gateway_pb2.SearchRequest(collection="clothes", image=files[0][1], top_k=64), timeout=60
    )
    assert len(left.hits) == 56 and not any(h.path.startswith(prefix) for h in left.hits)

    names = [
        c.name
        for c in stub.ListCollections(gateway_pb2.ListCollectionsRequest(), timeout=30).collections
    ]
    assert names == ["clothes"]
    assert stub.DropCollection(
        gateway_pb2.DropCollectionRequest(collection="clothes"), timeout=60
    ).dropped
    with pytest.raises(grpc.RpcError) as err:
        count(stub, "clothes")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_server_job_and_rerun(stack: Stack) -> None:
    stub = gw(stack)
    job = start_job(stub, "jobs", CLOTHING)
    assert (job.total, job.walk_complete) == (0, False)  # answered before the walk
    final = wait_job(stub, job.job_id)
    assert final.state == gateway_pb2.JOB_STATE_SUCCEEDED
    assert (final.total, final.walk_complete) == (64, True)
    assert (final.done, final.indexed, final.duplicates, final.failed) == (64, 64, 0, 0)
    assert count(stub, "jobs") == 64

    rerun = wait_job(
        stub,
        start_job(stub, "jobs", CLOTHING).job_id,
    )
    assert (rerun.indexed, rerun.duplicates) == (0, 64)
    listed = stub.ListJobs(gateway_pb2.ListJobsRequest(collection="jobs"), timeout=30).jobs
    assert [j.job_id for j in listed] == [rerun.job_id, job.job_id]  # newest first
    assert stub.GetJob(gateway_pb2.GetJobRequest(job_id=job.job_id), timeout=30).job.indexed == 64

    # Not recursive: the clothing root holds no images itself.
    flat = wait_job(
        stub,
        start_job(stub, "jobs", CLOTHING, recursive=False).job_id,
    )
    assert flat.total == 0 and flat.walk_complete and flat.state == gateway_pb2.JOB_STATE_SUCCEEDED

    # A name the index would refuse is refused before any job starts.
    with pytest.raises(grpc.RpcError) as err:
        start_job(stub, "no-hyphens", CLOTHING)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "letters, digits or _" in (err.value.details() or "")
    assert len(stub.ListJobs(gateway_pb2.ListJobsRequest(), timeout=30).jobs) == 3


@pytest.mark.slow
def test_odd_images_job(stack: Stack) -> None:
    stub = gw(stack)
    manifest = odd_manifest()
    expected_errors = sorted(name for name, expect in manifest if expect == "error")
    job = wait_job(
        stub,
        start_job(stub, "odd", ODD).job_id,
    )
    assert job.state == gateway_pb2.JOB_STATE_SUCCEEDED
    assert job.total == 55 and job.failed == len(expected_errors) == 17
    assert sorted(Path(e.path).name for e in job.errors) == expected_errors
    for e in job.errors:
        assert Path(e.path).name in e.reason and e.code in (3, 8)
    ok = [name for name, expect in manifest if expect == "ok"]
    # Every valid file is searchable (identical files are stored once).
    assert count(stub, "odd") == job.indexed
    assert job.indexed + job.duplicates == len(ok)
    for name in ok:
        hits = stub.Search(
            gateway_pb2.SearchRequest(collection="odd", path=str(ODD / name), top_k=3), timeout=60
        ).hits
        assert any(str(ODD / name) in h.paths for h in hits), name


def test_path_escapes_refused(stack: Stack) -> None:
    stub = gw(stack)
    outside = stack.tmp.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "a.jpg").write_bytes((ODD / "hopper.jpg").read_bytes())
    link = stack.tmp / "link"
    link.symlink_to(outside)
    for folder in ["/etc", str(stack.tmp / ".." / "outside"), str(link), "../../../../etc"]:
        with pytest.raises(grpc.RpcError) as err:
            stub.StartIndexJob(
                gateway_pb2.StartIndexJobRequest(collection="x", folder=folder), timeout=30
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, folder
        assert "GATEWAY_ALLOWED_ROOTS" in str(err.value.details())
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(gateway_pb2.SearchRequest(collection="x", path="/etc/passwd"), timeout=30)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A symlinked file inside an allowed folder that points out of the roots is skipped.
    inside = stack.tmp / "inside"
    inside.mkdir()
    (inside / "real.jpg").write_bytes((ODD / "hopper.png").read_bytes())
    (inside / "escape.jpg").symlink_to(outside / "a.jpg")
    job = wait_job(
        stub,
        start_job(stub, "x", inside, recursive=False).job_id,
    )
    assert job.total == 1 and job.indexed == 1


def test_oversized_message_is_resource_exhausted(stack: Stack) -> None:
    stub = gw(stack)
    huge = b"\xff" * (5 * 1024 * 1024)  # one message over the 4 MiB client limit
    with pytest.raises(grpc.RpcError) as err:
        stub.IndexImages(
            iter([gateway_pb2.IndexImagesRequest(collection="big", name="huge.jpg", data=huge)]),
            timeout=60,
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Chunked, a large image is fine (here: a large non-image, refused per file).
    response = stub.IndexImages(
        stream(
            "big",
            [("huge.jpg", huge), ("hopper.jpg", (ODD / "hopper.jpg").read_bytes())],
            chunk=1 << 20,
        ),
        timeout=60,
    )
    assert (response.indexed, response.failed) == (1, 1)
    assert "huge.jpg" in response.errors[0].reason


def test_bad_requests(stack: Stack) -> None:
    stub = gw(stack)
    stub.IndexImages(stream("bad", [("hopper.jpg", (ODD / "hopper.jpg").read_bytes())]), timeout=60)
    cases = [
        (
            gateway_pb2.SearchRequest(collection="bad", image=b"not an image"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (gateway_pb2.SearchRequest(collection="bad", image=b""), grpc.StatusCode.INVALID_ARGUMENT),
        (gateway_pb2.SearchRequest(collection="bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (gateway_pb2.SearchRequest(collection="bad", image_id=42), grpc.StatusCode.NOT_FOUND),
        (gateway_pb2.SearchRequest(collection="missing", image_id=42), grpc.StatusCode.NOT_FOUND),
        (
            gateway_pb2.SearchRequest(collection="bad", image_id=42, top_k=5000),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            gateway_pb2.SearchRequest(collection="bad; drop", image_id=42),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for request, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.Search(request, timeout=60)
        assert err.value.code() == code, (request, str(err.value.details()))
        assert str(err.value.details())
    big = stack.tmp / "big.jpg"
    with big.open("wb") as f:
        f.truncate(33 * 1024 * 1024)  # over the 32 MiB default, sparse on disk
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(gateway_pb2.SearchRequest(collection="bad", path=str(big)), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # too large: permanent
    assert "GATEWAY_MAX_IMAGE_MB" in str(err.value.details())
    with pytest.raises(grpc.RpcError) as err:
        stub.GetJob(gateway_pb2.GetJobRequest(job_id="nope"), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert count(stub, "bad") == 1


@pytest.mark.slow
def test_cancel_and_resume(stack: Stack) -> None:
    stub = gw(stack)
    job = start_job(stub, "cancel", CLOTHING)
    canceled = stub.CancelJob(gateway_pb2.CancelJobRequest(job_id=job.job_id), timeout=120).job
    assert canceled.state == gateway_pb2.JOB_STATE_CANCELED
    assert canceled.done < 64
    time.sleep(0.5)
    assert (
        stub.GetJob(gateway_pb2.GetJobRequest(job_id=job.job_id), timeout=30).job.done
        == canceled.done
    )
    stub.ResumeJob(gateway_pb2.ResumeJobRequest(job_id=job.job_id), timeout=30)
    final = wait_job(stub, job.job_id)
    assert final.state == gateway_pb2.JOB_STATE_SUCCEEDED
    assert (final.done, final.indexed, final.duplicates) == (64, 64, 0)
