"""The JobStore contract, on each store: the local files (the embedded
default) and NATS JetStream (a real nats-server). A second store object on
the same files or the same NATS prefix stands for a restarted or a second
gateway."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from gateway.clients import Backends
from gateway.jobs import JobManager
from gateway.jobstore import (
    CANCELED,
    CHUNK,
    RUNNING,
    SUCCEEDED,
    WALK,
    JobRecord,
    JobStore,
    Work,
    now_ms,
    walk_ended,
    walked,
)
from gateway.localjobs import LocalJobStore
from gateway.orchestrator import ImageLimit, Ingestor, Outcome, Result
from gateway.paths import AllowedRoots
from gateway.settings import GatewaySettings
from imagesearch.errors import ServiceError
from imagesearch.settings import SettingsError
from tests.conftest import NatsServer


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
        store = NatsJobStore(url, prefix, max_errors_kept=2, ack_wait_s=2.0)
        made.append(store)
        return store

    yield Stores(make, shared=True)
    for store in made:
        store.close()


def new_job(store: JobStore, job_id: str, files: int, created: int = 1) -> JobRecord:
    """A job whose walk (claimed from the store's queue) found ``files``
    files, in chunks of 4."""
    job = store.create(
        JobRecord(job_id, "photos", "/data", True, chunk_size=4, created_at_ms=created)
    )
    assert job.total == 0 and not job.walk_complete
    walk = claim(store, WALK)
    assert (walk.kind, walk.job_id) == (WALK, job_id)
    names = [f"/data/{job_id}-{n}.jpg" for n in range(files)]
    for number, start in enumerate(range(0, files, 4)):
        chunk = names[start : start + 4]
        store.put_chunk(job_id, number, chunk)
        store.change(job_id, partial(walked, files=len(chunk), last=chunk[-1]))
    store.change(job_id, walk_ended)
    walk.ack()
    return store.get(job_id)


def claim(store: JobStore, kind: str) -> Work:
    work = store.claim(kind, timeout=10)
    assert work is not None, f"no {kind} was queued"
    return work


def results(files: list[str], failed: int = 0) -> list[Result]:
    out = [Result(f, Outcome.INDEXED, image_id=n + 1) for n, f in enumerate(files)]
    for n in range(failed):
        out[n] = Result(files[n], Outcome.FAILED, reason="broken", code=grpc.StatusCode.DATA_LOSS)
    return out


def test_chunks_are_queued_and_counted_once_however_often_they_are_recorded(
    stores: Stores,
) -> None:
    store = stores.make()
    job = new_job(store, "a", 10)
    assert (job.total, job.chunks, job.walk_complete, job.walk_last) == (
        10,
        3,
        True,
        "/data/a-9.jpg",
    )
    units = [claim(store, CHUNK) for _ in range(3)]
    assert [(w.job_id, w.chunk) for w in units] == [("a", 0), ("a", 1), ("a", 2)]
    files = [store.chunk_files("a", n) for n in range(3)]
    assert [len(f) for f in files] == [4, 4, 2] and files[2] == ["/data/a-8.jpg", "/data/a-9.jpg"]
    assert store.record("a", 2, results(files[2], failed=2))
    assert store.record("a", 0, results(files[0], failed=1))
    assert not store.record("a", 0, results(files[0]))  # delivered twice: no change
    assert not store.record("a", 2, results(files[2]))
    for unit in units:
        unit.ack()
    job = store.get("a")
    assert (job.done, job.indexed, job.failed, job.state) == (6, 3, 3, "pending")
    assert len(job.errors) == 2  # max_errors_kept
    assert (job.chunk_cursor, job.chunks_ahead, job.left()) == (1, [2], [1])
    other = stores.make()  # a restarted gateway
    assert other.get("a") == job and other.chunk_files("a", 1) == files[1]
    assert other.record("a", 1, results(files[1]))
    assert other.get("a").state == SUCCEEDED  # the last chunk of a walked job ends it


def test_a_walk_that_ends_after_its_chunks_ends_the_job(stores: Stores) -> None:
    store = stores.make()
    store.create(JobRecord("e", "photos", "/data", True, chunk_size=4))
    claim(store, WALK).ack()
    store.put_chunk("e", 0, ["/data/x.jpg"])
    store.change("e", lambda j: walked(j, 1, "/data/x.jpg"))
    store.record("e", 0, results(["/data/x.jpg"]))
    assert store.get("e").state == "pending"  # the walk may find more
    assert store.change("e", walk_ended).state == SUCCEEDED  # type: ignore[union-attr]
    empty = new_job(store, "none", 0)
    assert (empty.state, empty.total, empty.chunks) == (SUCCEEDED, 0, 0)


def test_requeue_gives_out_what_is_left(stores: Stores) -> None:
    store = stores.make()
    new_job(store, "r", 12)
    for _ in range(3):
        claim(store, CHUNK).ack()  # taken and dropped (as for a canceled job)
    assert store.claim(CHUNK, timeout=0.5) is None
    store.record("r", 1, results(store.chunk_files("r", 1)))
    job = store.get("r")
    store.requeue("r", walk=not job.walk_complete, chunks=job.left())
    again = [claim(store, CHUNK) for _ in range(2)]
    assert sorted(w.chunk for w in again) == [0, 2]
    assert store.claim(WALK, timeout=0.5) is None


def test_records_from_many_threads_and_stores_all_count(stores: Stores) -> None:
    first = stores.make()
    second = stores.peer(first)
    new_job(first, "m", 40)  # 10 chunks
    chunks = [(n, first.chunk_files("m", n)) for n in range(10)]

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
    assert (job.done, job.indexed, job.chunk_cursor, job.chunks_ahead) == (40, 40, 10, [])
    assert job.state == SUCCEEDED


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
    assert store.expire(now_ms() + 1, 10_000) == 1  # only the finished one
    with pytest.raises(ServiceError):
        store.get("j0")
    assert sorted(j.job_id for j in store.unfinished()) == ["j1", "j2", "j3", "j4"]


def test_finished_jobs_are_capped_by_count_oldest_first(stores: Stores) -> None:
    """GATEWAY_MAX_FINISHED_JOBS: beyond it the oldest finished jobs go,
    whatever their age; open ones stay however many; a peer's listing agrees."""
    store = stores.make()
    for n in range(6):
        new_job(store, f"m{n}", 1, created=100 + n)
        if n != 2:
            store.update(f"m{n}", state=SUCCEEDED)
    assert store.open_jobs() == 1
    assert store.expire(0, keep_finished=3) == 2  # m0 and m1; m2 is open
    listed, _ = stores.peer(store).page("", 10, None)
    assert [j.job_id for j in listed] == ["m5", "m4", "m3", "m2"]
    assert store.expire(0, keep_finished=3) == 0
    assert [j.job_id for j in store.unfinished()] == ["m2"]


@pytest.mark.nats
def test_an_older_unbounded_consumer_is_brought_to_the_bound(nats_url: str) -> None:
    """An older version's consumers delivered a unit for ever (max_deliver
    -1); a store that connects now bounds them (GATEWAY_JOBS_MAX_DELIVER + 3)."""
    import asyncio

    import nats
    from nats.js.api import ConsumerConfig

    from gateway.natsjobs import DELIVER_MARGIN, NatsJobStore

    prefix = f"t{uuid.uuid4().hex[:8]}"
    first = NatsJobStore(nats_url, prefix, 2)
    first.close()

    async def consumers(bound: int | None) -> list[int]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        got = []
        for kind in ("walk", "chunk"):
            name = f"{prefix}_{kind}s"
            if bound is not None:
                config = ConsumerConfig(
                    durable_name=name,
                    name=name,
                    filter_subject=f"{prefix}.work.{kind}",
                    ack_wait=60,
                    max_deliver=bound,
                )
                await js.delete_consumer(f"{prefix}_work", name)
                await js.add_consumer(f"{prefix}_work", config=config)
            got.append((await js.consumer_info(f"{prefix}_work", name)).config.max_deliver)
        await nc.close()
        return got

    assert asyncio.run(consumers(-1)) == [-1, -1]  # as an older version made them
    store = NatsJobStore(nats_url, prefix, 2, max_deliver=7)
    try:
        assert asyncio.run(consumers(None)) == [7 + DELIVER_MARGIN] * 2
    finally:
        store.close()


def test_a_watcher_sees_changes_made_through_another_store(stores: Stores) -> None:
    watcher = stores.make()
    writer = stores.peer(watcher)
    new_job(writer, "w", 8)
    seen: list[JobRecord] = []
    done = threading.Event()

    def watch() -> None:
        for job in watcher.watch("w", lambda: not done.is_set(), 0.05):
            seen.append(job)
        done.set()

    thread = threading.Thread(target=watch)
    thread.start()
    for number in range(2):
        writer.record("w", number, results(writer.chunk_files("w", number)))
    assert done.wait(20)
    thread.join()
    assert seen[-1].state == SUCCEEDED and seen[-1].done == 8
    assert [j.version for j in seen] == sorted({j.version for j in seen})  # in order, no repeats


@pytest.mark.nats
def test_a_chunk_not_acked_in_time_is_given_out_again_and_counted_once(nats_url: str) -> None:
    from gateway.natsjobs import NatsJobStore

    prefix = f"t{uuid.uuid4().hex[:8]}"
    first = NatsJobStore(nats_url, prefix, max_errors_kept=2, ack_wait_s=1.0)
    second = NatsJobStore(nats_url, prefix, max_errors_kept=2, ack_wait_s=1.0)
    try:
        new_job(first, "late", 4)
        taken = claim(first, CHUNK)  # its gateway hangs: no ack, no touch
        files = first.chunk_files("late", 0)
        again = claim(second, CHUNK)  # after AckWait, to another gateway
        assert (again.chunk, again.delivered) == (0, 2)
        assert second.record("late", 0, results(files))
        again.ack()
        assert not first.record("late", 0, results(files))  # the first one wakes up late
        taken.ack()
        job = second.get("late")
        assert (job.done, job.indexed, job.state) == (4, 4, SUCCEEDED)

        new_job(first, "busy", 4)
        kept = claim(first, CHUNK)
        for _ in range(4):  # touched every half AckWait: not given out again
            time.sleep(0.5)
            kept.touch()
        assert second.claim(CHUNK, timeout=0.5) is None
        kept.ack()
    finally:
        first.close()
        second.close()


@pytest.mark.nats
def test_the_nats_store_speaks_mtls_and_names_the_server_when_it_cannot(tmp_path: Path) -> None:
    from gateway.natsjobs import NatsJobStore
    from gateway.settings import GatewaySettings
    from imagesearch.tls import local_pki

    pki, _ = local_pki(tmp_path / "pki", ["127.0.0.1"])
    flags = ["--tls", "--tlscert", str(pki.server_cert), "--tlskey", str(pki.server_key)]
    flags += ["--tlsverify", "--tlscacert", str(pki.ca)]
    server = NatsServer(tmp_path / "nats", flags).start()
    url = f"tls://127.0.0.1:{server.port}"
    try:
        mtls = GatewaySettings(
            jobs_url=url,
            jobs_prefix="tls",
            jobs_tls_ca=str(pki.ca),
            jobs_tls_cert=str(pki.client_cert),
            jobs_tls_key=str(pki.client_key),
        )
        store = NatsJobStore.open(mtls)
        try:
            assert new_job(store, "t", 5).total == 5
        finally:
            store.close()
        with pytest.raises(ServiceError) as err:  # no client certificate
            NatsJobStore.open(GatewaySettings(jobs_url=url, jobs_tls_ca=str(pki.ca)))
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert url in err.value.message and "GATEWAY_JOBS_URL" in err.value.message
    finally:
        server.stop()


def test_a_job_changing_while_jobs_are_listed_is_listed_once(stores: Stores) -> None:
    """On NATS the listing reads the bucket's keys through a watch, which also
    delivers a key again when its job changes meanwhile; each job is listed
    once all the same."""
    store = stores.make()
    other = stores.peer(store)
    for n in range(3):
        new_job(store, f"k{n}", 1, created=100 + n)
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.is_set() and n < 2000:  # bounded: a job's counters keep changing
            other.update(f"k{n % 3}", state=RUNNING)
            n += 1

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        for _ in range(40):
            listed, _ = store.page("", 10, None)
            assert sorted(j.job_id for j in listed) == ["k0", "k1", "k2"]
    finally:
        stop.set()
        worker.join()


class RecordedMeanwhile:
    """The store a gateway's JobManager uses, on which a chunk of ``job_id``
    is recorded through ``peer`` just before the next update: the chunk a
    gateway still had in flight when the job was canceled, whose Upsert
    ends after the cancel and is counted all the same."""

    def __init__(self, store: JobStore, peer: JobStore, job_id: str, chunk: int) -> None:
        self.store, self.peer, self.job_id, self.chunk = store, peer, job_id, chunk
        self.pending = True

    def update(
        self, job_id: str, when: Callable[[JobRecord], bool] | None = None, **changes: object
    ) -> JobRecord | None:
        if self.pending and job_id == self.job_id:
            self.pending = False
            files = self.peer.chunk_files(job_id, self.chunk)
            assert self.peer.record(job_id, self.chunk, results(files))
        return self.store.update(job_id, when, **changes)

    def close(self) -> None:
        """The ``stores`` fixture closes the store (a second close leaves a
        NATS client's close coroutine never awaited)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


LATE = "1a7e00000001"  # of the form StartIndexJob gives: JobManager checks it


def test_a_resume_is_not_lost_to_a_chunk_recorded_after_the_cancel(
    stores: Stores, tmp_path: Path
) -> None:
    """ResumeJob read the job, then wrote PENDING only if its version had not
    changed, taking any change for a second resume. A chunk recorded after
    the cancel (in flight on another gateway) left the job CANCELED, and the
    answer said so. Here that chunk is the job's last, so the resume ends it."""
    store = stores.make()
    new_job(store, LATE, 8)  # two chunks
    store.record(LATE, 0, results(store.chunk_files(LATE, 0)))
    assert store.update(LATE, state=CANCELED) is not None
    settings = GatewaySettings(
        data_dir=str(tmp_path / "gw"),
        embedder_addr="127.0.0.1:9",  # never called: nothing is left to embed
        index_addr="127.0.0.1:9",
        allowed_roots=(str(tmp_path),),
    )
    backends = Backends(settings)
    meanwhile = RecordedMeanwhile(store, stores.peer(store), LATE, 1)
    manager = JobManager(
        settings,
        Ingestor(backends, ImageLimit(settings.max_image_bytes)),
        AllowedRoots(settings.roots),
        store=cast(JobStore, meanwhile),
    )
    try:
        answer = manager.resume(LATE)
        assert not meanwhile.pending  # the chunk was recorded between the read and the write
        assert answer.state == SUCCEEDED, answer
        job = stores.peer(store).get(LATE)
        assert (job.state, job.done, job.indexed) == (SUCCEEDED, 8, 8)
    finally:
        manager.close()
        backends.close()


class PlainNats:
    """A loopback server that speaks NATS's INFO without ``tls_required``
    (a plaintext server, or one in the way) and keeps what clients send."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        info = {"server_id": "plain", "version": "2.9.10", "proto": 1, "max_payload": 1 << 20}
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(1.0)
                conn.sendall(b"INFO " + json.dumps(info).encode() + b"\r\n")
                try:
                    while data := conn.recv(65536):
                        self.received += data
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_with_tls_set_a_server_that_does_not_require_it_is_refused(tmp_path: Path) -> None:
    """nats-py went on in plaintext, sending CONNECT and its credentials, to a
    server whose INFO did not ask for TLS, even with a CA set. Refused now,
    naming why, before anything is sent; the URL's password is never shown."""
    from gateway.natsjobs import NatsJobStore
    from gateway.settings import GatewaySettings
    from imagesearch.tls import local_pki

    pki, _ = local_pki(tmp_path / "pki", ["127.0.0.1"])
    server = PlainNats()
    url = f"nats://gateway:s3cret-pass@127.0.0.1:{server.port}"
    try:
        with pytest.raises(ServiceError) as err:
            NatsJobStore.open(GatewaySettings(jobs_url=url, jobs_tls_ca=str(pki.ca)))
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert "does not require TLS" in err.value.message
        assert "s3cret" not in err.value.message
        assert f"nats://***@127.0.0.1:{server.port}" in err.value.message
        assert b"CONNECT" not in server.received and b"s3cret" not in server.received
    finally:
        server.close()


def test_credentials_in_the_jobs_url_are_never_shown() -> None:
    from gateway.natsjobs import shown_url

    assert shown_url("nats://u:p%40ss@nats:4222") == "nats://***@nats:4222"
    assert (
        shown_url("nats://tok3n@a:4222,nats://u:pw@b:4222") == "nats://***@a:4222,nats://***@b:4222"
    )
    assert shown_url("tls://nats:4222") == "tls://nats:4222"


@pytest.mark.nats
def test_the_nats_password_comes_from_a_file_not_the_url(tmp_path: Path) -> None:
    """GATEWAY_JOBS_USER and GATEWAY_JOBS_PASSWORD_FILE (a mounted Secret): no
    password in a URL, an environment or a manifest. A wrong one is refused."""
    from gateway.natsjobs import NatsJobStore
    from imagesearch.settings import load_settings

    server = NatsServer(tmp_path / "nats", ["--user", "gateway", "--pass", "fr0m-a-file"]).start()
    secret = tmp_path / "nats-password"
    secret.write_text("fr0m-a-file\n")
    env = {
        "GATEWAY_JOBS_URL": server.url,
        "GATEWAY_JOBS_USER": "gateway",
        "GATEWAY_JOBS_PASSWORD_FILE": str(secret),
        "GATEWAY_JOBS_PREFIX": f"t{uuid.uuid4().hex[:8]}",
    }
    try:
        store = NatsJobStore.open(load_settings(GatewaySettings, "GATEWAY_", None, env))
        try:
            assert store.open_jobs() == 0  # connected, the stream and buckets made
        finally:
            store.close()
        secret.write_text("wrong\n")
        with pytest.raises(ServiceError) as err:
            NatsJobStore.open(load_settings(GatewaySettings, "GATEWAY_", None, env))
        assert "wrong" not in err.value.message
        with pytest.raises(SettingsError, match="go together"):
            load_settings(GatewaySettings, "GATEWAY_", None, {**env, "GATEWAY_JOBS_USER": ""})
    finally:
        server.stop()
