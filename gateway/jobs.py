"""Server-side folder ingest jobs: the runner.

StartIndexJob saves the job and answers at once; the work is done by units
taken from the job store's queue (gateway/jobstore.py), on this gateway or,
with a shared store, on any gateway:

- a **walk** lists the folder in sorted order, in bounded memory
  (gateway/walk.py), and publishes chunks of GATEWAY_EMBED_BATCH files as it
  goes; ``total`` grows until it ends (``walk_complete``). A walk stopped midway
  starts again after the last file it published.
- a **chunk** is read, embedded and stored, and its results recorded in the
  store (counts, the first errors, which chunks are done) before it is
  acked: a chunk done twice (its first gateway died) is counted once. The
  record of the last chunk of a walked job ends it SUCCEEDED.

GATEWAY_MAX_WALKS walks and GATEWAY_JOB_CONCURRENCY chunks run at once per
gateway, so embedding one chunk overlaps storing another. A job stopped by an
outage (FAILED) or a cancel continues with ResumeJob, which queues again what
it has left.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path

import grpc
from prometheus_client import Counter, Gauge

from gateway.budget import ByteBudget
from gateway.deadline import Deadline
from gateway.jobstore import (
    CANCELED,
    CHUNK,
    DEFAULT_PAGE,
    FAILED,
    JOB_ID,
    MAX_PAGE,
    PENDING,
    RUNNING,
    SUCCEEDED,
    WALK,
    Change,
    JobRecord,
    JobStore,
    Work,
    check_job_id,
    new_job_id,
    now_ms,
    parse_page_token,
    walk_ended,
    walked,
)
from gateway.jobstore import page_token as token_of
from gateway.orchestrator import Ingestor, Outcome, Result, Source
from gateway.paths import OUTSIDE, AllowedRoots, display_path
from gateway.settings import GatewaySettings
from gateway.stores import open_job_store
from gateway.walk import walk_images
from imagesearch import errors, logs
from imagesearch.batching import byte_groups
from imagesearch.v1 import index_pb2

log = logging.getLogger(__name__)

# A chunk's call failing with these is retried: the backend is down, restarting,
# slow, or full (overload).
RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)


def overloaded(result: Result) -> bool:
    return result.outcome is Outcome.FAILED and result.code == grpc.StatusCode.RESOURCE_EXHAUSTED


class Backoff:
    """Retries with growing pauses (0.5 s doubling to 15 s) for at most
    ``budget_s`` from the first failure."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.started: float | None = None
        self.attempt = 0

    def elapsed(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started

    def may_retry(self) -> bool:
        return self.started is None or self.elapsed() < self.budget_s

    def wait(self, cancel: threading.Event, reason: str) -> None:
        self.started = self.started or time.monotonic()
        self.attempt += 1
        logs.event(log, "job.chunk_retry", logging.WARNING, attempt=self.attempt, reason=reason)
        cancel.wait(min(0.5 * 2.0**self.attempt, 15.0))


JOB_FILES = Counter(
    "imagesearch_job_files_total", "Files processed by jobs, by outcome", ["outcome"]
)
JOBS_RUNNING = Gauge("imagesearch_jobs_running", "Job walks and chunks this gateway works on now")
JOB_REDELIVERED = Counter(
    "imagesearch_job_units_redelivered_total",
    "Job walks and chunks given out again (their gateway stopped on them)",
)

__all__ = ["JobManager", "JobRecord"]

# A chunk's file names, JSON-encoded, stay under this (a NATS message is 1 MB).
CHUNK_NAME_BYTES = 256 * 1024
# Finished jobs are forgotten at most this often (GATEWAY_JOB_RETENTION_H,
# GATEWAY_MAX_FINISHED_JOBS).
EXPIRE_EVERY_S = 30.0
# How often units in work are checked for a cancel and, on a shared store, touched.
CHECK_S = 1.0
# Pauses before a unit whose store call failed is given out again, by try.
RETRY_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class WalkFailed(Exception):
    """The folder could not be walked (gone, unreadable): the job fails."""


def not_terminal(job: JobRecord) -> bool:
    return not job.terminal


def resumable(job: JobRecord) -> bool:
    """FAILED or CANCELED: ended with work left."""
    return job.terminal and job.state != SUCCEEDED


def unless_ended(changes: Callable[[JobRecord], dict[str, object]]) -> Change:
    """``changes`` for a job that has not ended; none for one that has."""
    return lambda job: None if job.terminal else changes(job)


def chunked(paths: Iterable[str], size: int, max_bytes: int) -> Iterator[list[str]]:
    """``paths`` in lists of at most ``size`` files and about ``max_bytes`` of names."""
    chunk: list[str] = []
    used = 0
    for path in paths:
        cost = len(path) * 6 + 4  # a JSON string's worst case
        if chunk and (len(chunk) >= size or used + cost > max_bytes):
            yield chunk
            chunk, used = [], 0
        chunk.append(path)
        used += cost
    if chunk:
        yield chunk


def _walk(folder: Path, recursive: bool, roots: AllowedRoots, after: str) -> Iterator[str]:
    try:
        yield from walk_images(folder, recursive, roots, after)
    except errors.ServiceError as exc:
        raise WalkFailed(exc.message) from None
    except OSError as exc:
        raise WalkFailed(
            f"the folder cannot be walked ({exc.strerror or type(exc).__name__}: "
            f"{display_path(str(exc.filename or folder))})"
        ) from None


class JobManager:
    """Starts, cancels and resumes jobs kept in a ``JobStore``, and works on
    the units its queue gives this gateway."""

    def __init__(
        self,
        settings: GatewaySettings,
        ingestor: Ingestor,
        roots: AllowedRoots,
        inflight: ByteBudget | None = None,
        store: JobStore | None = None,
    ) -> None:
        self.settings = settings
        self.ingestor = ingestor
        self.roots = roots
        # Bytes of images all job chunks on this gateway hold at once, within
        # the gateway's total shared with streams.
        self.budget = ByteBudget(settings.max_inflight_bytes, inflight)
        self.store: JobStore = store or open_job_store(settings)
        self._lock = threading.Lock()
        self._starting = 0  # StartIndexJob calls between the cap check and the save
        self._working: dict[int, tuple[Work, threading.Event]] = {}
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._expired_at = -math.inf
        self.expire()
        workers = [(WALK, n) for n in range(settings.max_walks)]
        workers += [(CHUNK, n) for n in range(settings.job_concurrency)]
        self._threads = [
            threading.Thread(target=self._serve, args=(kind,), name=f"job-{kind}-{n}", daemon=True)
            for kind, n in workers
        ]
        self._threads.append(threading.Thread(target=self._keep_working, daemon=True))
        for thread in self._threads:
            thread.start()

    def resume_interrupted(self) -> None:
        """Local store: queues again what the jobs a stopped gateway left
        unfinished have left, or fails them (GATEWAY_RESUME_JOBS=false). A
        shared store's queue keeps its work by itself."""
        if self.store.shared:
            return
        for job in self.store.unfinished():
            if not self.settings.resume_jobs:
                self.store.update(
                    job.job_id,
                    not_terminal,
                    state=FAILED,
                    message="interrupted by a gateway restart; ResumeJob continues it",
                )
                continue
            logs.event(log, "job.resuming", job_id=job.job_id, done=job.done, total=job.total)
            self._requeue(job)

    def _requeue(self, job: JobRecord) -> None:
        if job.complete():
            self.store.update(job.job_id, not_terminal, state=SUCCEEDED, message="")
        else:
            self.store.requeue(job.job_id, walk=not job.walk_complete, chunks=job.left())

    # -- API -------------------------------------------------------------

    def start(self, collection: str, folder: str, recursive: bool, model: str = "") -> JobRecord:
        """Saves a new job and queues its walk; answers at once."""
        real = self.roots.resolve(folder)
        if not real.is_dir():
            raise errors.invalid_argument(f"{folder} is not a folder on the gateway's machine")
        self.expire()
        with self._lock:
            open_jobs = self._starting + self.store.open_jobs()
            if open_jobs >= self.settings.max_active_jobs:
                raise errors.resource_exhausted(
                    f"{open_jobs} jobs are running or waiting already "
                    "(GATEWAY_MAX_ACTIVE_JOBS); retry when one has ended, or cancel one"
                )
            self._starting += 1
        try:
            job = self.store.create(
                JobRecord(
                    job_id=new_job_id(),
                    collection=collection,
                    folder=str(real),
                    recursive=recursive,
                    model=model,
                    chunk_size=self.settings.embed_batch,
                    created_at_ms=now_ms(),
                )
            )
        finally:
            with self._lock:
                self._starting -= 1
        logs.event(log, "job.started", job_id=job.job_id, collection=collection, folder=str(real))
        return job

    def get(self, job_id: str) -> JobRecord:
        return self.store.get(check_job_id(job_id))

    def list_jobs(
        self, collection: str = "", page_size: int = DEFAULT_PAGE, page_token: str = ""
    ) -> tuple[list[JobRecord], str]:
        """A page of jobs, newest first, and the token of the next page ("" at
        the end). The token names the last job given, so pages stay right
        while jobs start or expire in between."""
        self.expire()
        size = min(max(page_size or DEFAULT_PAGE, 1), MAX_PAGE)
        jobs, more = self.store.page(collection, size, parse_page_token(page_token))
        return jobs, token_of(jobs[-1]) if more and jobs else ""

    def expire(self) -> int:
        """Forgets finished jobs older than GATEWAY_JOB_RETENTION_H, and the
        least recently changed beyond GATEWAY_MAX_FINISHED_JOBS; returns how
        many went. At start, then at most every EXPIRE_EVERY_S (StartIndexJob
        and ListJobs ask), so that neither pays for it each time."""
        if time.monotonic() - self._expired_at < EXPIRE_EVERY_S:
            return 0
        self._expired_at = time.monotonic()
        gone = self.store.expire(
            now_ms() - int(self.settings.job_retention_h * 3600 * 1000),
            self.settings.max_finished_jobs,
        )
        if gone:
            logs.event(log, "jobs.expired", count=gone)
        return gone

    def cancel(self, job_id: str) -> JobRecord:
        """Ends the job CANCELED: its queued units are dropped when they come
        up, and the chunks in work (on any gateway) stop within a second or
        so, after the Embed or Upsert call in flight."""
        self.get(job_id)  # NOT_FOUND for an unknown job
        self.store.update(
            job_id, not_terminal, state=CANCELED, message="canceled; ResumeJob continues it"
        )
        return self.get(job_id)

    def resume(self, job_id: str) -> JobRecord:
        """Queues again what a FAILED or CANCELED job has left: its walk if it
        had not ended, and the chunks not recorded. A running job is left
        alone and the answer says so; of two resumes at once, one queues.

        The job may change between the read and the write without being
        resumed: a chunk in flight when it was canceled is still recorded (on
        any gateway). So the write's condition is the job's state, checked
        against the stored job, not its version."""
        self.get(job_id)  # NOT_FOUND for an unknown job
        resumed = self.store.update(job_id, resumable, state=PENDING, message="resumed")
        if resumed is None:  # succeeded, still running, or another resume came first
            job = self.get(job_id)
            if not job.terminal:
                job.message = "already running; nothing to resume"
            return job
        self._requeue(resumed)
        logs.event(log, "job.resumed", job_id=job_id, left=len(resumed.left()))
        return self.get(job_id)

    def watch(
        self, job_id: str, is_active: Callable[[], bool], interval: float = 0.25
    ) -> Iterator[JobRecord]:
        """Yields the job now and at every change (at most every ``interval``)
        until it ends or the watcher goes away."""
        return self.store.watch(check_job_id(job_id), is_active, interval)

    def close(self) -> None:
        """Stops after the calls in flight. Units not done stay queued (NATS:
        given to another gateway; local: queued again at the next start)."""
        self._stop.set()
        self.store.wake(len(self._threads))
        for thread in self._threads:
            thread.join(timeout=30)
        self.store.close()

    # -- working ---------------------------------------------------------

    def _serve(self, kind: str) -> None:
        """One worker: claims units of ``kind`` and works on them until close.
        Nothing a unit or the store raises ends it: it logs, waits a little
        longer after each failure in a row (up to 30 s) and goes on."""
        failures = 0
        while not self._stop.is_set():
            try:
                work = self.store.claim(kind, timeout=1.0)
                if work is not None:
                    self._work_on(kind, work)
                failures = 0
            except Exception as exc:  # the store is down, or a bug: wait, go on
                failures += 1
                if isinstance(exc, errors.ServiceError):
                    logs.event(log, "job.claim_failed", logging.WARNING, error=exc.message)
                else:
                    log.exception("job.worker_error", extra={"fields": {"kind": kind}})
                self._stop.wait(min(2.0 * failures, 30.0))

    def _work_on(self, kind: str, work: Work) -> None:
        handle = self._walk_unit if kind == WALK else self._chunk_unit
        if work.delivered > 1:
            JOB_REDELIVERED.inc()
        stop = threading.Event()
        key = next(self._ids)
        with self._lock:
            self._working[key] = (work, stop)
        JOBS_RUNNING.inc()
        try:
            handle(work, stop)
        except errors.ServiceError as exc:  # the store failed: the unit comes back
            logs.event(
                log, "job.unit_unsaved", logging.WARNING, job_id=work.job_id, error=exc.message
            )
            if self.store.shared:  # given out again after a pause growing with its tries
                work.retry(RETRY_DELAYS_S[min(work.delivered, len(RETRY_DELAYS_S)) - 1])
            else:  # an in-process queue does not give it back itself
                self._stop.wait(1.0)
                chunks = [work.chunk] if kind == CHUNK else []
                self.store.requeue(work.job_id, walk=kind == WALK, chunks=chunks)
        except Exception as exc:
            log.exception("job.crash", extra={"fields": {"job_id": work.job_id}})
            self._fail(
                work.job_id,
                f"internal error ({type(exc).__name__}); the gateway's log has the details. "
                "ResumeJob continues from here",
            )
            work.ack()
            raise  # the worker backs off
        finally:
            JOBS_RUNNING.dec()
            with self._lock:
                del self._working[key]

    def _keep_working(self) -> None:
        """Every second: stops units whose job ended (a cancel on any gateway)
        or when the gateway closes; every third of GATEWAY_JOBS_ACK_WAIT_S,
        tells a shared queue the units are still in work."""
        touch_every = self.settings.jobs_ack_wait_s / 3
        last_touch = time.monotonic()
        while True:
            closing = self._stop.wait(min(CHECK_S, touch_every))
            with self._lock:
                working = list(self._working.values())
            touch = self.store.shared and time.monotonic() - last_touch >= touch_every
            if touch:
                last_touch = time.monotonic()
            for work, stop in working:
                try:
                    if closing or self.store.get(work.job_id).terminal:
                        stop.set()
                    elif touch:
                        work.touch()
                except errors.ServiceError as exc:
                    if exc.code == grpc.StatusCode.NOT_FOUND:
                        stop.set()
                    else:
                        logs.event(log, "job.touch_failed", logging.WARNING, error=exc.message)
                except Exception:  # a bug: this thread must go on for the others
                    log.exception("job.touch_failed", extra={"fields": {"job_id": work.job_id}})
            if closing and not working:
                return

    def _job_of(self, work: Work) -> JobRecord | None:
        """The unit's job; None (the unit is done with) when it is gone, or
        when the unit is poison: it names no job of the form StartIndexJob
        gives, or its job's record cannot be read (terminated, counted)."""
        try:
            return self.store.get(check_job_id(work.job_id))
        except errors.ServiceError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND and JOB_ID.fullmatch(work.job_id):
                work.ack()  # expired: its units are dropped
                return None
            if exc.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DATA_LOSS):
                reason = "bad_job_id" if exc.code == grpc.StatusCode.NOT_FOUND else "job_damaged"
                work.reject(reason)
                return None
            raise

    def _outside(self, job: JobRecord, paths: Iterable[str]) -> str:
        """The first of ``paths`` (the job's folder, or a chunk's files) that
        is not under the allowed roots and the job's folder, read from the
        names alone (nothing is opened); "" when all are. A job record or
        chunk put into a shared store by hand is checked as one StartIndexJob
        made."""
        folder = os.path.normpath(job.folder)
        if not os.path.isabs(folder) or not self.roots.contains(Path(folder)):
            return job.folder
        for path in paths:
            if not os.path.isabs(path):
                return path
            if os.path.commonpath([folder, os.path.normpath(path)]) != folder:
                return path
        return ""

    def _refuse_forged(self, work: Work, job: JobRecord, outside: str) -> None:
        self._fail(
            job.job_id,
            f"PERMISSION_DENIED: {display_path(outside)[:200]} {OUTSIDE}; the job's record or "
            "its chunks were not made by StartIndexJob (or the allowed roots changed since)",
        )
        work.reject("outside_roots")

    def _walk_unit(self, work: Work, stop: threading.Event) -> None:
        job = self._job_of(work)
        if job is None:
            return
        if job.terminal or job.walk_complete:
            work.ack()
            return
        outside = self._outside(job, ())
        if outside:
            self._refuse_forged(work, job, outside)
            return
        if work.delivered > self.settings.jobs_max_deliver:
            self._fail(
                job.job_id,
                f"walking the folder stopped {work.delivered - 1} times with its gateway "
                "(GATEWAY_JOBS_MAX_DELIVER); ResumeJob tries again",
            )
            work.ack()
            return
        self.store.update(job.job_id, lambda j: j.state == PENDING, state=RUNNING, message="")
        try:
            if self._walk(job, stop):
                work.ack()
        except WalkFailed as exc:
            self._fail(job.job_id, f"{exc}. ResumeJob walks on from the last file found")
            work.ack()

    def _walk(self, job: JobRecord, stop: threading.Event) -> bool:
        """Publishes the chunks the walk finds after ``walk_last``; True when
        it ended (walked to the end, or the job ended), False when the gateway
        is closing (the walk comes back)."""
        number = job.walked_chunks
        paths = _walk(Path(job.folder), job.recursive, self.roots, job.walk_last)
        for files in chunked(paths, job.chunk_size, CHUNK_NAME_BYTES):
            if self._stop.is_set():
                return False
            self.store.put_chunk(job.job_id, number, files)
            if number == 0:
                self._make_collection_soon(job)
            more = partial(walked, files=len(files), last=files[-1])
            counted = self.store.change(job.job_id, unless_ended(more))
            if counted is None:
                return True  # canceled or failed meanwhile
            number += 1
        ended = self.store.change(job.job_id, unless_ended(walk_ended))
        if ended is not None:
            logs.event(log, "job.walked", job_id=job.job_id, files=ended.total, chunks=number)
        return True

    def _make_collection_soon(self, job: JobRecord) -> None:
        """Has the index make the job's collection, if it is new, while the
        first chunks are embedded: making one takes about a second (Milvus),
        which the first chunks' Upserts would otherwise wait for, with the
        embedder idle. Only once the walk has found files: an empty folder
        makes no collection. A failure here is left to those Upserts."""

        def make() -> None:
            try:
                if self.ingestor.backends.make_collection(
                    job.collection, Deadline.after(60), job.model
                ):
                    logs.event(log, "job.collection_made", job_id=job.job_id)
            except errors.ServiceError as exc:
                logs.event(
                    log,
                    "job.collection_not_made",
                    logging.DEBUG,
                    job_id=job.job_id,
                    error=exc.message,
                    note="the job's first Upsert makes it or says why",
                )

        threading.Thread(target=make, name="collection", daemon=True).start()

    def _chunk_unit(self, work: Work, stop: threading.Event) -> None:
        job = self._job_of(work)
        if job is None:
            return
        if job.terminal or job.recorded(work.chunk):
            work.ack()  # ended (its queued chunks are dropped), or done already
            return
        try:
            files = self.store.chunk_files(job.job_id, work.chunk)
        except errors.ServiceError as exc:
            if exc.code != grpc.StatusCode.DATA_LOSS:
                raise
            self._fail(job.job_id, exc.message)
            work.ack()
            return
        outside = self._outside(job, files)
        if outside:
            self._refuse_forged(work, job, outside)
            return
        if work.delivered > self.settings.jobs_max_deliver:
            self._record(job.job_id, work.chunk, self._given_up(files, work.delivered - 1))
            work.ack()
            return
        self.store.update(job.job_id, lambda j: j.state == PENDING, state=RUNNING, message="")
        try:
            results = self._chunk(job, files, stop)
        except errors.ServiceError as exc:
            if not self._stop.is_set():
                self._fail(job.job_id, f"{exc.message}. ResumeJob continues from here")
                work.ack()
            return
        if stop.is_set() and any(overloaded(r) for r in results):
            # Stopped while riding out overload: not a result. A canceled job's
            # chunk is dropped (ResumeJob queues it again); a closing
            # gateway's comes back.
            if not self._stop.is_set():
                work.ack()
            return
        self._record(job.job_id, work.chunk, results)
        work.ack()

    def _given_up(self, files: list[str], tries: int) -> list[Result]:
        reason = (
            f"given up after {tries} tries: the gateway working on it stopped each time "
            "(GATEWAY_JOBS_MAX_DELIVER); the gateways' logs say why"
        )
        return [
            Result(
                display_path(f),
                Outcome.FAILED,
                reason=f"{display_path(f)}: {reason}",
                code=grpc.StatusCode.ABORTED,
            )
            for f in files
        ]

    def _fail(self, job_id: str, message: str) -> None:
        try:
            self.store.update(job_id, not_terminal, state=FAILED, message=message)
            logs.event(log, "job.failed", logging.WARNING, job_id=job_id, reason=message)
        except errors.ServiceError as exc:  # the store is down too: the job stays unfinished
            logs.event(log, "job.state_unsaved", logging.ERROR, job_id=job_id, error=exc.message)

    def _chunk(self, job: JobRecord, paths: list[str], cancel: threading.Event) -> list[Result]:
        """One chunk, read and sent in groups that fit the jobs' byte budget."""
        budget = self.budget
        cap = max(1, budget.limit // self.settings.job_concurrency)
        results: list[Result] = []
        for group, size in byte_groups(paths, cap):
            taken = budget.acquire(size)
            try:
                sources = [self._read(p) for p in group]
                results += self._ingest(job, sources, cancel)
            finally:
                budget.release(taken)
        return results

    def _ingest(
        self, job: JobRecord, sources: list[Source], cancel: threading.Event
    ) -> list[Result]:
        """Ingests ``sources``, riding out an outage or overload with backoff for
        up to GATEWAY_JOB_OUTAGE_S: whole calls that fail UNAVAILABLE, time out
        or find the embedder full are repeated, and so are the images the
        embedder refused as overload (RESOURCE_EXHAUSTED). Each try has
        GATEWAY_JOB_CHUNK_TIMEOUT_S."""
        backoff = Backoff(self.settings.job_outage_s)
        results = self._try(job, sources, cancel, backoff)
        busy = [i for i, r in enumerate(results) if overloaded(r)]
        while busy and not cancel.is_set() and backoff.may_retry():
            backoff.wait(cancel, f"{len(busy)} images refused as overload")
            again = self._try(job, [sources[i] for i in busy], cancel, backoff)
            for i, r in zip(busy, again, strict=True):
                results[i] = r
            busy = [i for i in busy if overloaded(results[i])]
        return results

    def _try(
        self, job: JobRecord, sources: list[Source], cancel: threading.Event, backoff: Backoff
    ) -> list[Result]:
        while True:
            try:
                deadline = Deadline.after(self.settings.job_chunk_timeout_s)
                return self.ingestor.ingest(
                    job.collection, sources, deadline, index_pb2.PATH_ORIGIN_SERVER, model=job.model
                )
            except errors.ServiceError as exc:
                if exc.code not in RETRYABLE or cancel.is_set():
                    raise
                if not backoff.may_retry():
                    raise errors.ServiceError(
                        exc.code,
                        f"{exc.message} (still failing after {backoff.elapsed():.0f}s, "
                        "GATEWAY_JOB_OUTAGE_S)",
                    ) from None
                backoff.wait(cancel, exc.message)

    def _read(self, path: str) -> Source:
        """The file's bytes under its display name (``path`` itself unless it
        is not valid UTF-8; jobfiles.display_path), or a per-file error."""
        name = display_path(path)
        try:
            data = self.ingestor.limit.read(self.roots, path, name)
            return Source(name, data)
        except errors.ServiceError as exc:
            return Source.failed(exc, name)
        except OSError as exc:
            return Source(
                name,
                error=f"{name}: cannot read ({exc.strerror or exc})",
                code=grpc.StatusCode.NOT_FOUND,
            )

    def _record(self, job_id: str, chunk: int, results: list[Result]) -> None:
        if self.store.record(job_id, chunk, results):
            for r in results:
                JOB_FILES.labels(r.outcome.value).inc()
