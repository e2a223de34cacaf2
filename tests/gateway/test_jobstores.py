"""The JobStore contract, on each store: the local files (the embedded
default) and NATS JetStream (a real nats-server). A second store object on
the same files or the same NATS prefix stands for a restarted or a second
gateway."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.jobstore import CANCELED, RUNNING, SUCCEEDED, JobState, JobStore, LocalJobStore, now_ms
from gateway.orchestrator import Outcome, Result
from imagesearch.errors import ServiceError


@dataclass
class Stores:
    """``make()``: a store object on the shared backing (files or NATS
    prefix), as a restarted gateway opens it. ``peer(store)``: the store a
    second gateway uses at the same time: another object on NATS, the same
    one locally (local jobs belong to one gateway)."""

    make: Callable[[], JobStore]
    shared: bool

    def peer(self, store: JobStore) -> JobStore:
        return self.make() if self.shared else store


@pytest.fixture(params=["local", pytest.param("nats", marks=pytest.mark.nats)])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    made: list[Any] = []
    if request.param == "local":
        yield Stores(lambda: LocalJobStore(tmp_path / "jobs", max_errors_kept=2), shared=False)
        return
    from gateway.natsjobs import NatsJobStore

    url, prefix = request.getfixturevalue("nats_url"), f"t{uuid.uuid4().hex[:8]}"

    def make() -> JobStore:
        store = NatsJobStore(url, prefix, max_errors_kept=2)
        made.append(store)
        return store

    yield Stores(make, shared=True)
    for store in made:
        store.close()


def new_job(store: JobStore, job_id: str, files: int, created: int = 1) -> JobState:
    job = JobState(job_id, "photos", "/data", True, batch_size=4, created_at_ms=created)
    return store.create(job, (f"/data/{job_id}-{n}.jpg" for n in range(files)))


def results(files: list[str], failed: int = 0) -> list[Result]:
    out = [Result(f, Outcome.INDEXED, image_id=n + 1) for n, f in enumerate(files)]
    for n in range(failed):
        out[n] = Result(files[n], Outcome.FAILED, reason="broken", code=grpc.StatusCode.DATA_LOSS)
    return out


def test_chunks_are_counted_once_however_often_they_are_recorded(
    stores: Stores,
) -> None:
    store = stores.make()
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
    other = stores.make()  # a restarted gateway
    assert other.get("a") == job and [n for n, _ in other.todo("a")] == [1]


def test_records_from_many_threads_and_stores_all_count(stores: Stores) -> None:
    first = stores.make()
    second = stores.peer(first)
    new_job(first, "m", 40)  # 10 chunks
    chunks = list(first.todo("m"))

    def record(store: JobStore, mine: list[tuple[int, list[str]]]) -> None:
        for number, files in mine:
            store.record("m", number, results(files))

    threads = [
        threading.Thread(target=record, args=(store, chunks[k::4]))
        for k, store in enumerate([first, second, first, second])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    job = second.get("m")
    assert (job.done, job.indexed, job.batch_cursor, job.batches_ahead) == (40, 40, 10, [])


def test_updates_can_be_conditional_and_bump_the_version(stores: Stores) -> None:
    store = stores.make()
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
    with pytest.raises(ServiceError) as err:
        store.get("nope")
    assert err.value.code == grpc.StatusCode.NOT_FOUND and "ListJobs" in err.value.message


def test_pages_are_newest_first_and_finished_jobs_expire(stores: Stores) -> None:
    store = stores.make()
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
    with pytest.raises(ServiceError):
        store.get("j0")
    assert sorted(j.job_id for j in store.unfinished()) == ["j1", "j2", "j3", "j4"]


def test_a_watcher_sees_changes_made_through_another_store(stores: Stores) -> None:
    watcher = stores.make()
    writer = stores.peer(watcher)
    new_job(writer, "w", 8)
    seen: list[JobState] = []
    done = threading.Event()

    def watch() -> None:
        for job in watcher.watch("w", lambda: not done.is_set(), 0.05):
            seen.append(job)
        done.set()

    thread = threading.Thread(target=watch)
    thread.start()
    for number, files in writer.todo("w"):
        writer.record("w", number, results(files))
    writer.update("w", state=SUCCEEDED)
    assert done.wait(20)
    thread.join()
    assert seen[-1].state == SUCCEEDED and seen[-1].done == 8
    assert [j.version for j in seen] == sorted({j.version for j in seen})  # in order, no repeats
