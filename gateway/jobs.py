"""Server-side folder ingest jobs: the runner.

A job lists the image files under a folder once (sorted, kept by the job
store, gateway/jobstore.py, in chunks), then indexes them chunk by chunk, a
few chunks in flight so that embedding one overlaps inserting another. After
every chunk its results are recorded in the store: counters, the first
errors, and which chunks are done. A job stopped by an outage (FAILED), by a
cancel, or by a gateway restart continues from there with ResumeJob (a
restarted gateway resumes running jobs by itself), so every file is counted
once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import grpc
from prometheus_client import Counter, Gauge

from gateway.budget import ByteBudget
from gateway.deadline import Deadline
from gateway.jobstore import (
    CANCELED,
    DEFAULT_PAGE,
    FAILED,
    MAX_PAGE,
    PENDING,
    RUNNING,
    SUCCEEDED,
    JobState,
    JobStore,
    now_ms,
    open_job_store,
    parse_page_token,
)
from gateway.jobstore import page_token as token_of
from gateway.orchestrator import Ingestor, Outcome, Result, Source
from gateway.paths import AllowedRoots, display_path, walk_images
from gateway.settings import GatewaySettings
from imagesearch import errors, logs
from imagesearch.batching import byte_groups
from imagesearch.v1 import index_pb2

log = logging.getLogger(__name__)

# A batch failing with these is retried: the backend is down, restarting,
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
        logs.event(log, "job.batch_retry", logging.WARNING, attempt=self.attempt, reason=reason)
        cancel.wait(min(0.5 * 2.0**self.attempt, 15.0))


JOB_FILES = Counter(
    "imagesearch_job_files_total", "Files processed by jobs, by outcome", ["outcome"]
)
JOBS_RUNNING = Gauge("imagesearch_jobs_running", "Jobs running now")


__all__ = ["JobManager", "JobState"]

# How long CancelJob waits for a runner to finish its batches in flight
# before answering that it is still stopping.
CANCEL_WAIT_S = 10.0


def not_terminal(job: JobState) -> bool:
    return not job.terminal


class JobManager:
    """Starts, runs, cancels and resumes jobs kept in a ``JobStore``: one
    runner thread per running job, at most GATEWAY_MAX_JOBS at a time."""

    def __init__(
        self,
        settings: GatewaySettings,
        ingestor: Ingestor,
        roots: AllowedRoots,
        inflight: ByteBudget | None = None,
        store: JobStore | None = None,
    ) -> None:
        self.settings = settings
        self.inflight = inflight  # the gateway's total, shared with streams
        self.ingestor = ingestor
        self.roots = roots
        self.store: JobStore = store or open_job_store(settings)
        # Who runs a job, in a shared store: this process, unique across restarts.
        self.me = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"
        self.lease_ms = int(settings.jobs_lease_s * 1000)
        self._cancel: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()  # the runners (the store has its own)
        self._starting = 0  # StartIndexJob calls walking their folder now
        self._slots = threading.Semaphore(settings.max_jobs)
        self._closed = False
        self._stop = threading.Event()
        self.expire()
        if self.store.shared:
            threading.Thread(target=self._keep_leases, name="job-leases", daemon=True).start()

    def held_elsewhere(self, job: JobState) -> bool:
        """A job another live gateway runs (shared stores: its heartbeat is
        younger than GATEWAY_JOBS_LEASE_S)."""
        return (
            self.store.shared
            and job.runner not in ("", self.me)
            and now_ms() - job.heartbeat_ms < self.lease_ms
        )

    def resume_interrupted(self) -> None:
        """Jobs no gateway runs (left by a stopped one): resume them, or mark
        them failed (GATEWAY_RESUME_JOBS=false)."""
        for job in self.store.unfinished():
            with self._lock:
                if self._runner(job.job_id) is not None or self.held_elsewhere(job):
                    continue
                claimed = self.store.update(
                    job.job_id,
                    lambda j: not j.terminal and not self.held_elsewhere(j),
                    runner=self.me,
                    heartbeat_ms=now_ms(),
                )
                if claimed is None:
                    continue
                if self.settings.resume_jobs:
                    logs.event(
                        log, "job.resuming", job_id=job.job_id, done=job.done, total=job.total
                    )
                    self._launch(job.job_id)
                else:
                    self.store.update(
                        job.job_id,
                        state=FAILED,
                        message="interrupted by a gateway restart; ResumeJob continues it",
                    )

    def _keep_leases(self) -> None:
        """Shared stores: every third of the lease, tells the store this gateway
        still runs its jobs, and takes over jobs whose gateway went quiet."""
        while not self._stop.wait(self.settings.jobs_lease_s / 3):
            try:
                with self._lock:
                    mine = [j for j in self._threads if self._runner(j) is not None]
                for job_id in mine:
                    self.store.update(
                        job_id,
                        lambda j: j.runner == self.me and not j.terminal,
                        heartbeat_ms=now_ms(),
                    )
                if self.settings.resume_jobs and not self._closed:
                    self.resume_interrupted()
            except errors.ServiceError as exc:  # the store is down: try again next round
                logs.event(log, "job.lease_failed", logging.WARNING, error=exc.message)

    # -- API -------------------------------------------------------------

    def start(self, collection: str, folder: str, recursive: bool, model: str = "") -> JobState:
        real = self.roots.resolve(folder)
        if not real.is_dir():
            raise errors.invalid_argument(f"{folder} is not a folder on the gateway's machine")
        self.expire()
        with self._lock:
            open_jobs = self._starting + self.store.open_jobs()
            if open_jobs >= self.settings.max_queued_jobs:
                raise errors.resource_exhausted(
                    f"{open_jobs} jobs are running or waiting on this gateway already "
                    "(GATEWAY_MAX_QUEUED_JOBS); retry when one has ended, or cancel one"
                )
            self._starting += 1
        try:
            return self._start(real, collection, recursive, model)
        finally:
            with self._lock:
                self._starting -= 1

    def _start(self, real: Path, collection: str, recursive: bool, model: str) -> JobState:
        job = JobState(
            job_id=uuid.uuid4().hex[:12],
            collection=collection,
            folder=str(real),
            recursive=recursive,
            model=model,
            batch_size=self.settings.embed_batch,
            created_at_ms=now_ms(),
            runner=self.me,
            heartbeat_ms=now_ms(),
        )
        files = (str(p) for p in walk_images(real, recursive, self.roots))
        job = self.store.create(job, files)
        logs.event(
            log,
            "job.started",
            job_id=job.job_id,
            collection=collection,
            folder=str(real),
            files=job.total,
        )
        with self._lock:
            self._launch(job.job_id)
        return self.get(job.job_id)

    def get(self, job_id: str) -> JobState:
        return self.store.get(job_id)

    def list_jobs(
        self, collection: str = "", page_size: int = DEFAULT_PAGE, page_token: str = ""
    ) -> tuple[list[JobState], str]:
        """A page of jobs, newest first, and the token of the next page ("" at
        the end). The token names the last job given, so pages stay right
        while jobs start or expire in between."""
        self.expire()
        size = min(max(page_size or DEFAULT_PAGE, 1), MAX_PAGE)
        jobs, more = self.store.page(collection, size, parse_page_token(page_token))
        return jobs, token_of(jobs[-1]) if more and jobs else ""

    def expire(self) -> int:
        """Forgets finished jobs older than GATEWAY_JOB_RETENTION_H; returns how many went."""
        gone = self.store.expire(now_ms() - int(self.settings.job_retention_h * 3600 * 1000))
        if gone:
            logs.event(log, "jobs.expired", count=gone)
        return gone

    def _runner(self, job_id: str) -> threading.Thread | None:
        """The job's live runner thread, if any; call with the lock held."""
        thread = self._threads.get(job_id)
        return thread if thread is not None and thread.is_alive() else None

    def cancel(self, job_id: str) -> JobState:
        """Asks the runner to stop after its batches in flight and waits up to
        CANCEL_WAIT_S for it. A job whose runner is still finishing stays
        RUNNING, says so, and ends CANCELED by itself."""
        if self.get(job_id).terminal:  # NOT_FOUND for an unknown job
            return self.get(job_id)
        with self._lock:
            event = self._cancel.get(job_id)
            if event is not None:
                event.set()
            thread = self._runner(job_id)
        if thread is not None:
            thread.join(timeout=CANCEL_WAIT_S)
        with self._lock:
            if self._runner(job_id) is None:
                self.store.update(
                    job_id, not_terminal, state=CANCELED, message="canceled; ResumeJob continues it"
                )
            else:
                self.store.update(
                    job_id,
                    not_terminal,
                    message="cancel requested: stopping after the batches in flight",
                )
        return self.get(job_id)

    def resume(self, job_id: str) -> JobState:
        """Starts a runner for a job that has none. A job with a live runner
        is left alone (at most one runner per job) and the answer says so."""
        self.get(job_id)
        while True:
            with self._lock:
                job = self.get(job_id)
                if job.state == SUCCEEDED:
                    break
                thread = self._runner(job_id)
                if thread is None and not job.terminal and self.held_elsewhere(job):
                    job.message = f"already running on gateway {job.runner}; nothing to resume"
                    return job
                if thread is None:
                    self.store.update(
                        job_id,
                        state=PENDING,
                        message="resumed",
                        runner=self.me,
                        heartbeat_ms=now_ms(),
                    )
                    self._launch(job_id)
                    break
                if not job.terminal:  # running (or waiting for a slot): nothing to do
                    job.message = "already running; nothing to resume"
                    return job
            thread.join(timeout=5)  # a runner that has just finished: let it exit
        return self.get(job_id)

    def watch(
        self, job_id: str, is_active: Callable[[], bool], interval: float = 0.25
    ) -> Iterator[JobState]:
        """Yields the job now and at every change (at most every ``interval``)
        until it ends or the watcher goes away."""
        return self.store.watch(job_id, is_active, interval)

    def close(self) -> None:
        """Stops running jobs after their in-flight batches; they resume at the next start."""
        self._closed = True
        self._stop.set()
        for event in self._cancel.values():
            event.set()
        for thread in list(self._threads.values()):
            thread.join(timeout=30)
        self.store.close()

    # -- running ---------------------------------------------------------

    def _launch(self, job_id: str) -> None:
        """Starts the job's runner; call with the lock held, after checking it has none."""
        cancel = threading.Event()
        self._cancel[job_id] = cancel
        thread = threading.Thread(
            target=self._run, args=(job_id, cancel), name=f"job-{job_id}", daemon=True
        )
        self._threads[job_id] = thread
        thread.start()

    def _run(self, job_id: str, cancel: threading.Event) -> None:
        while not self._slots.acquire(timeout=0.5):  # a slot, unless canceled meanwhile
            if cancel.is_set():
                if not self._closed:
                    self.store.update(
                        job_id, not_terminal, state=CANCELED, message="canceled before it started"
                    )
                return
        try:
            JOBS_RUNNING.inc()
            try:
                self._execute(job_id, cancel)
            except errors.ServiceError as exc:
                if self._closed:
                    return
                self._fail(job_id, f"{exc.message}. ResumeJob continues from here")
                logs.event(log, "job.failed", logging.WARNING, job_id=job_id, reason=exc.message)
            except Exception as exc:
                log.exception("job.crash", extra={"fields": {"job_id": job_id}})
                self._fail(
                    job_id,
                    f"internal error ({type(exc).__name__}); the gateway's log has the details. "
                    "ResumeJob continues from here",
                )
            finally:
                JOBS_RUNNING.dec()
        finally:
            self._slots.release()

    def _fail(self, job_id: str, message: str) -> None:
        try:
            self.store.update(job_id, not_terminal, state=FAILED, message=message)
        except errors.ServiceError as exc:  # the store is down too: the job stays unfinished
            logs.event(log, "job.state_unsaved", logging.ERROR, job_id=job_id, error=exc.message)

    def _execute(self, job_id: str, cancel: threading.Event) -> None:
        job = self.store.get(job_id)
        todo = self.store.todo(job_id)
        self.store.update(job_id, state=RUNNING, message="", runner=self.me, heartbeat_ms=now_ms())
        in_flight: dict[Future[list[Result]], int] = {}
        budget = ByteBudget(self.settings.max_inflight_bytes, self.inflight)
        failure: errors.ServiceError | None = None
        with ThreadPoolExecutor(
            self.settings.job_concurrency, thread_name_prefix=f"job-{job_id}"
        ) as pool:
            while True:
                while (
                    failure is None
                    and not cancel.is_set()
                    and len(in_flight) < self.settings.job_concurrency
                    and not self._ended_elsewhere(job_id)
                ):
                    chunk = next(todo, None)
                    if chunk is None:
                        break
                    number, files = chunk
                    in_flight[pool.submit(self._batch, job, files, cancel, budget)] = number
                if not in_flight:
                    break
                finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for fut in finished:
                    number = in_flight.pop(fut)
                    try:
                        self._record(job_id, number, fut.result())
                    except errors.ServiceError as exc:
                        failure = failure or exc
        if failure is not None:
            raise failure
        if self._closed:
            return  # gateway shutting down: stays RUNNING in the store, resumed at next start
        if cancel.is_set():
            self.store.update(
                job_id, not_terminal, state=CANCELED, message="canceled; ResumeJob continues it"
            )
        else:
            self.store.update(job_id, not_terminal, state=SUCCEEDED, message="")
        job = self.store.get(job_id)
        logs.event(
            log,
            "job.finished",
            job_id=job_id,
            state=job.state,
            indexed=job.indexed,
            duplicates=job.duplicates,
            failed=job.failed,
        )

    def _ended_elsewhere(self, job_id: str) -> bool:
        """Shared stores: the job was canceled (or ended) through another gateway."""
        return self.store.shared and self.store.get(job_id).terminal

    def _batch(
        self, job: JobState, paths: list[str], cancel: threading.Event, budget: ByteBudget
    ) -> list[Result]:
        """One batch, read and sent in groups that fit the job's byte budget."""
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
        self, job: JobState, sources: list[Source], cancel: threading.Event
    ) -> list[Result]:
        """Ingests ``sources``, riding out an outage or overload with backoff for
        up to GATEWAY_JOB_OUTAGE_S: whole calls that fail UNAVAILABLE, time out
        or find the embedder full are repeated, and so are the images the
        embedder refused as overload (RESOURCE_EXHAUSTED). Each try has
        GATEWAY_JOB_BATCH_TIMEOUT_S."""
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
        self, job: JobState, sources: list[Source], cancel: threading.Event, backoff: Backoff
    ) -> list[Result]:
        while True:
            try:
                deadline = Deadline.after(self.settings.job_batch_timeout_s)
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
