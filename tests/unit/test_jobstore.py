"""The local job store, in-process: chunks, results counted once however often
a chunk is recorded, compare-and-set updates, paging, expiry, damaged state."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from gateway.jobstore import (
    CANCELED,
    RUNNING,
    SUCCEEDED,
    JobState,
    LocalJobStore,
    now_ms,
)
from gateway.orchestrator import Outcome, Result
from imagesearch.errors import ServiceError


def new_job(store: LocalJobStore, job_id: str, files: int, created: int = 1) -> JobState:
    job = JobState(job_id, "photos", "/data", True, batch_size=4, created_at_ms=created)
    return store.create(job, (f"/data/{job_id}-{n}.jpg" for n in range(files)))


def results(files: list[str], failed: int = 0) -> list[Result]:
    out = [Result(f, Outcome.INDEXED, image_id=n + 1) for n, f in enumerate(files)]
    for n in range(failed):
        out[n] = Result(files[n], Outcome.FAILED, reason="broken", code=grpc.StatusCode.DATA_LOSS)
    return out


def test_chunks_are_counted_once_however_often_they_are_recorded(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, max_errors_kept=2)
    job = new_job(store, "a", 10)
    assert job.total == 10 and job.chunks == 3
    chunks = list(store.todo("a"))
    assert [n for n, _ in chunks] == [0, 1, 2] and [len(f) for _, f in chunks] == [4, 4, 2]
    assert store.record("a", 2, results(chunks[2][1], failed=2))
    assert store.record("a", 0, results(chunks[0][1], failed=1))
    assert not store.record("a", 0, results(chunks[0][1]))  # delivered twice: no change
    assert not store.record("a", 2, results(chunks[2][1]))
    job = store.get("a")
    assert (job.done, job.indexed, job.failed) == (6, 3, 3)
    assert len(job.errors) == 2  # max_errors_kept
    assert (job.batch_cursor, job.batches_ahead) == (1, [2])
    assert [n for n, _ in store.todo("a")] == [1]  # what a resumed runner takes
    # A new store on the same folder (a restarted gateway) sees the same.
    again = LocalJobStore(tmp_path, max_errors_kept=2)
    assert again.get("a") == job and [n for n, _ in again.todo("a")] == [1]


def test_updates_can_be_conditional_and_bump_the_version(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, max_errors_kept=5)
    before = new_job(store, "b", 1)
    running = store.update("b", state=RUNNING)
    assert running is not None and running.version == before.version + 1
    done = store.update("b", state=SUCCEEDED)
    assert done is not None and done.terminal
    # A cancel that arrives after the end changes nothing.
    assert store.update("b", lambda j: not j.terminal, state=CANCELED) is None
    assert store.get("b").state == SUCCEEDED and store.open_jobs() == 0
    with pytest.raises(ServiceError) as err:
        store.update("nope", state=RUNNING)
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_pages_are_newest_first_and_finished_jobs_expire(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, max_errors_kept=5)
    for n in range(5):
        new_job(store, f"j{n}", 1, created=100 + n)
    first, more = store.page("", 2, None)
    assert [j.job_id for j in first] == ["j4", "j3"] and more
    last = first[-1]
    rest, more = store.page("", 10, (last.created_at_ms, last.job_id))
    assert [j.job_id for j in rest] == ["j2", "j1", "j0"] and not more
    assert store.page("other", 10, None) == ([], False)
    store.update("j0", state=SUCCEEDED)
    store.update("j1", state=RUNNING)
    assert store.expire(now_ms() + 1) == 1  # only the finished one
    assert not (tmp_path / "j0.json").exists() and not (tmp_path / "j0.files").exists()
    assert [j.job_id for j in store.unfinished()] == sorted(["j1", "j2", "j3", "j4"])


def test_a_damaged_state_file_becomes_a_failed_job(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, max_errors_kept=5)
    new_job(store, "c", 3)
    (tmp_path / "c.json").write_text("{not json")
    job = LocalJobStore(tmp_path, max_errors_kept=5).get("c")
    assert job.terminal and "damaged" in job.message
    assert (tmp_path / "c.damaged").exists()


def test_an_unreadable_file_list_is_data_loss(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, max_errors_kept=5)
    new_job(store, "d", 3)
    (tmp_path / "d.files").unlink()
    with pytest.raises(ServiceError) as err:
        store.todo("d")
    assert (
        err.value.code == grpc.StatusCode.DATA_LOSS and "start the job again" in err.value.message
    )
