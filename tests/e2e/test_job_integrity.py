"""Server-side jobs under hostile names, racing calls and damaged state: every
file counted once, nothing silently wrong (real gateway, index, embedder)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from imagesearch.client import Client, Job, JobState
from tests.conftest import (
    CLOTHING,
    Server,
    Stack,
    clothing_images,
    start_gateway,
    start_index,
    wait_until,
)


def finish(client: Client, job_id: str) -> Job:
    *_, last = client.watch_job(job_id)
    return last


def test_hostile_names_are_each_counted_once(stack: Stack) -> None:
    folder = stack.tmp / "archive"
    folder.mkdir()
    photos = [CLOTHING / n for n, _ in clothing_images()]
    for n in range(10):
        shutil.copy(photos[n], folder / f"good{n}.jpg")
    shutil.copy(photos[10], folder / "new\nline.jpg")
    shutil.copy(photos[11], folder / "para\u2028sep.jpg")
    latin1 = os.fsencode(folder) + b"/caf\xe9.jpg"  # not UTF-8: legal on Linux
    with open(latin1, "wb") as out:
        out.write(photos[12].read_bytes())
    deep = folder / ("d" * 240) / ("e" * 240) / ("f" * 240)
    deep.mkdir(parents=True)
    long_file = deep / "long.jpg"
    shutil.copy(photos[13], long_file)
    assert len(str(long_file)) > 750

    with Client(stack.gateway.addr) as client:
        job = finish(client, client.start_job(str(folder), collection="hostile").job_id)
        assert job.state == JobState.SUCCEEDED, job.message
        assert job.total == job.done == 14
        assert job.indexed + job.duplicates + job.failed == 14
        assert (job.indexed, job.failed) == (13, 1)
        (error,) = job.errors
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT and "long.jpg" in error.path
        for photo, name in ((photos[10], "new\nline.jpg"), (photos[11], "para\u2028sep.jpg")):
            hit = client.search(collection="hostile", image=photo.read_bytes(), top_k=1)[0]
            assert hit.path == str(folder / name) and hit.score > 0.99
        # The Latin-1 name is stored under its display form (bytes as \xNN).
        hit = client.search(collection="hostile", image=photos[12].read_bytes(), top_k=1)[0]
        assert hit.path == f"{folder}/caf\\xe9.jpg"
        assert client.count(collection="hostile").count == 13


def test_a_job_makes_its_collection_while_its_first_images_are_embedded(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """Once its walk has found files, a job has the index make its new
    collection (an Upsert of no images) beside the first chunks, whose
    Upserts would otherwise wait for it; an empty folder makes none, and a
    collection that exists is not made again."""
    caplog.set_level(logging.INFO, logger="gateway.jobs")

    def made() -> list[str]:
        return [
            getattr(r, "fields", {}).get("job_id", "")
            for r in caplog.records
            if r.getMessage() == "job.collection_made"
        ]

    empty = stack.tmp / "empty"
    empty.mkdir()
    with Client(stack.gateway.addr) as client:
        job = finish(client, client.start_job(str(empty), collection="empty").job_id)
        assert job.state == JobState.SUCCEEDED and job.total == 0
        assert "empty" not in [c.name for c in client.list_collections()]
        job = finish(client, client.start_job(str(CLOTHING / "Hat"), collection="hats").job_id)
        assert job.state == JobState.SUCCEEDED and job.indexed == job.total == 8, job
        wait_until(lambda: made() == [job.job_id], 30)
        (hats,) = [c for c in client.list_collections() if c.name == "hats"]
        assert hats.count == 8
        more = finish(client, client.start_job(str(CLOTHING / "Shoes"), collection="hats").job_id)
        assert more.state == JobState.SUCCEEDED and more.indexed == 8, more
        assert made() == [job.job_id]
        assert client.count(collection="hats").count == 16


@pytest.fixture
def slow(embedder: Server, tmp_path: Path) -> Iterator[Server]:
    """A gateway whose jobs take a while: two images per batch, one at a time."""
    index = start_index(tmp_path / "index")
    gateway = start_gateway(tmp_path, embedder.addr, index.addr, embed_batch=2, job_concurrency=1)
    yield gateway
    gateway.running.stop(1)
    index.running.stop(1)


@pytest.mark.slow
def test_two_resumes_at_once_start_one_runner(slow: Server) -> None:
    folder = CLOTHING
    files = len(clothing_images())
    with Client(slow.addr) as client:
        job = client.start_job(str(folder), collection="race")
        wait_until(lambda: client.get_job(job.job_id).done >= 2, 120)
        stopped = client.cancel_job(job.job_id)
        if stopped.state != JobState.CANCELED:  # still finishing its batch
            assert "stopping" in stopped.message, stopped
            wait_until(lambda: client.get_job(job.job_id).state == JobState.CANCELED, 60)
        assert client.get_job(job.job_id).done < files

        barrier = threading.Barrier(2)
        answers: list[Job] = []

        def resume() -> None:
            barrier.wait()
            answers.append(client.resume_job(job.job_id))

        threads = [threading.Thread(target=resume) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(answers) == 2, answers
        final = finish(client, job.job_id)
        assert final.state == JobState.SUCCEEDED, final
        assert final.done == final.total == files, final
        assert final.indexed + final.duplicates + final.failed == files, final
        assert client.count(collection="race").count == final.indexed, final
        # A resume of a running job says so and changes nothing.
        again = client.start_job(str(CLOTHING / "Hat"), collection="race2")
        said = client.resume_job(again.job_id)
        assert said.state in (JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED)
        if said.state != JobState.SUCCEEDED:
            assert "already running" in said.message
        finish(client, again.job_id)


def test_a_damaged_state_file_is_reported_not_skipped(embedder: Server, tmp_path: Path) -> None:
    jobs = tmp_path / "gw" / "jobs"
    jobs.mkdir(parents=True)
    (jobs / "0123456789ab.json").write_text('{"job_id": "0123456789ab", "collec')  # cut short
    index = start_index(tmp_path / "index")
    gateway = start_gateway(tmp_path, embedder.addr, index.addr)
    try:
        with Client(gateway.addr) as client:
            job = client.get_job("0123456789ab")
            assert job.state == JobState.FAILED and "damaged" in job.message
            assert [j.job_id for j in client.list_jobs()] == ["0123456789ab"]
        assert (jobs / "0123456789ab.damaged").exists()
        assert json.loads((jobs / "0123456789ab.json").read_text())["state"] == "failed"
    finally:
        gateway.running.stop(1)
        index.running.stop(1)
