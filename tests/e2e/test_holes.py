"""Smaller holes found in review, each shut on real servers: names with a
trailing newline, path queries outside the byte budget, reads past the size
limit, jobs without a cap, stored tokens read only on SIGHUP."""

from __future__ import annotations

import secrets
from pathlib import Path

import grpc
import pytest

from gateway.paths import AllowedRoots
from imagesearch import errors, naming
from imagesearch.client import Client, ImageSearchError, JobState, Query
from tests.conftest import (
    CLOTHING,
    Server,
    Stack,
    clothing_images,
    gateway_stack,
    wait_until,
)


@pytest.mark.parametrize("name", ["images\n", "images\r\n", "\nimages", "ima\nges", "images "])
def test_names_with_line_breaks_are_refused(name: str) -> None:
    with pytest.raises(errors.ServiceError) as err:
        naming.check_collection(name)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_the_gateway_and_index_refuse_them(stack: Stack) -> None:
    photo = (CLOTHING / clothing_images()[0][0]).read_bytes()
    with Client(stack.gateway.addr, timeout=60) as client:
        for call in (
            lambda: client.index_images([("p.jpg", photo)], collection="images\n"),
            lambda: client.count(collection="images\n"),
            lambda: client.start_job(str(CLOTHING), collection="images\n"),
            lambda: client.search(image=photo, collection="images\n"),
        ):
            with pytest.raises(ImageSearchError) as err:
                call()
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "is not valid" in err.value.message
        assert "images\n" not in [c.name for c in client.list_collections()]


@pytest.mark.slow
def test_path_queries_are_charged_to_the_byte_budget(embedder: Server, tmp_path: Path) -> None:
    """64 path queries of one 1.1 MB file (70 MB if all were read) are refused
    before any is read; as many as one call's budget holds are answered."""
    photo = tmp_path / "big.jpg"
    source = (CLOTHING / clothing_images()[0][0]).read_bytes()
    photo.write_bytes(source + bytes(1_100_000 - len(source)))  # a JPEG with a long tail
    with gateway_stack(embedder, tmp_path, max_inflight_mb=8, max_total_inflight_mb=16) as running:
        gateway = running.gateway
        with Client(gateway.addr, timeout=60) as client:
            assert client.index_images([("p.jpg", source)], collection="b").indexed == 1
            with pytest.raises(ImageSearchError) as err:
                client.search_many([Query(path=str(photo))] * 64, collection="b", top_k=1)
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "GATEWAY_MAX_INFLIGHT_MB" in err.value.message
            # As many as one call's budget (8 MiB) holds are read and answered.
            found = client.search_many([Query(path=str(photo))] * 7, collection="b", top_k=1)
            assert len(found) == 7 and all(hits for hits in found)


def test_a_file_is_read_no_further_than_the_limit(tmp_path: Path) -> None:
    """A file that grew after its size was checked (``check_size`` let the
    old size pass) is cut at the limit + 1 byte and refused."""
    (tmp_path / "grows.jpg").write_bytes(bytes(10_000))
    roots = AllowedRoots([tmp_path])
    seen: list[int] = []
    with pytest.raises(errors.ServiceError, match="over the limit of 100 bytes"):
        roots.read(str(tmp_path / "grows.jpg"), lambda size: seen.append(size), 100)
    assert seen == [10_000, 101]  # the size checked first, then what was read: limit + 1


@pytest.mark.slow
def test_jobs_are_capped(embedder: Server, tmp_path: Path) -> None:
    with gateway_stack(
        embedder, tmp_path, max_walks=1, max_active_jobs=2, embed_batch=1, job_concurrency=1
    ) as running:
        gateway = running.gateway
        with Client(gateway.addr, timeout=60) as client:
            first = client.start_job(str(CLOTHING), collection="c1")
            second = client.start_job(str(CLOTHING / "Hat"), collection="c2")
            with pytest.raises(ImageSearchError) as err:
                client.start_job(str(CLOTHING / "Dress"), collection="c3")
            assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "GATEWAY_MAX_ACTIVE_JOBS" in err.value.message
            client.cancel_job(first.job_id)
            for job in (first, second):
                wait_until(lambda j=job: client.get_job(j.job_id).state.terminal, 300)
            third = client.start_job(str(CLOTHING / "Dress"), collection="c3")
            wait_until(lambda: client.get_job(third.job_id).state == JobState.SUCCEEDED, 300)


@pytest.mark.slow
def test_a_changed_tokens_file_takes_effect_without_sighup(
    embedder: Server, tmp_path: Path
) -> None:
    """A Kubernetes Secret update rewrites the file; nobody sends SIGHUP."""
    old, new = f"read-{secrets.token_hex(16)}", f"read-{secrets.token_hex(16)}"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"read:{old}\n")
    with gateway_stack(embedder, tmp_path, tokens_file=str(tokens)) as running:
        gateway = running.gateway
        with Client(gateway.addr, token=old, timeout=30) as client:
            client.list_collections()
        replacement = tmp_path / "tokens.new"
        replacement.write_text(f"read:{new}\n")
        replacement.replace(tokens)  # as a Secret's link swap: a new file

        def refused(token: str) -> bool:
            with Client(gateway.addr, token=token, timeout=30) as client:
                try:
                    client.list_collections()
                except ImageSearchError as exc:
                    assert exc.code == grpc.StatusCode.UNAUTHENTICATED
                    return True
                return False

        assert wait_until(lambda: refused(old), 10)
        assert not refused(new)
