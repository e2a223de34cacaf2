"""Server-side folder ingest jobs.

A job lists the image files under a folder once (sorted, saved beside the job
state), then indexes them in fixed-size batches, a few batches in flight so
that embedding one overlaps inserting another. After every batch the job's
state is written atomically to ``<data_dir>/jobs/<id>.json``: counters,
the first errors, and which batches are done. A job stopped by an outage
(FAILED), by a cancel, or by a gateway restart continues from there with
ResumeJob (a restarted gateway resumes running jobs by itself), so every
file is counted once.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from prometheus_client import Counter, Gauge

from gateway.budget import ByteBudget
from gateway.deadline import Deadline
from gateway.jobfiles import read_file_list, write_atomic, write_file_list
from gateway.orchestrator import Ingestor, Outcome, Result, Source
from gateway.paths import AllowedRoots, display_path, walk_images
from gateway.settings import GatewaySettings
from imagesearch import errors, logs
from imagesearch.batching import byte_groups
from imagesearch.v1 import index_pb2

log = logging.getLogger(__name__)

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED = (
    "pending",
    "running",
    "succeeded",
    "failed",
    "canceled",
)
TERMINAL = {SUCCEEDED, FAILED, CANCELED}
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


@dataclass
class JobState:
    job_id: str
    collection: str
    folder: str
    recursive: bool
    state: str = PENDING
    total: int = 0
    done: int = 0
    indexed: int = 0
    duplicates: int = 0
    failed: int = 0
    errors: list[dict[str, object]] = field(default_factory=list)
    message: str = ""
    batch_size: int = 32
    batch_cursor: int = 0  # every batch below this number is done
    batches_ahead: list[int] = field(default_factory=list)  # done batches above it
    created_at_ms: int = 0
    updated_at_ms: int = 0
    version: int = 0  # bumps on every change, for watchers
    model: str = ""  # of a collection the job creates (StartIndexJob's model)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


def advance(cursor: int, ahead: list[int], batch: int) -> tuple[int, list[int]]:
    """Marks ``batch`` done: (new cursor, done batches above it). Every batch
    below the cursor is done, so a resumed job skips exactly those and the
    ones ahead, whatever order the batches finished in."""
    done = {*ahead, batch}
    while cursor in done:
        done.discard(cursor)
        cursor += 1
    return cursor, sorted(done)


DEFAULT_PAGE, MAX_PAGE = 100, 1000
# How long CancelJob waits for a runner to finish its batches in flight
# before answering that it is still stopping.
CANCEL_WAIT_S = 10.0


def _make_token(job: JobState) -> str:
    return base64.urlsafe_b64encode(f"{job.created_at_ms}:{job.job_id}".encode()).decode()


def _parse_token(token: str) -> tuple[int, str] | None:
    if not token:
        return None
    try:
        created, job_id = base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)
        return int(created), job_id
    except (ValueError, UnicodeDecodeError):
        raise errors.invalid_argument(
            f"page_token {token!r} is not one ListJobs gave; start again without it"
        ) from None


def _copy(job: JobState) -> JobState:
    """A snapshot of ``job`` for callers (taken with the lock held)."""
    return JobState(**{**asdict(job), "errors": list(job.errors)})


def _now_ms() -> int:
    return int(time.time() * 1000)


class JobManager:
    def __init__(
        self,
        settings: GatewaySettings,
        ingestor: Ingestor,
        roots: AllowedRoots,
        inflight: ByteBudget | None = None,
    ) -> None:
        self.settings = settings
        self.inflight = inflight  # the gateway's total, shared with streams
        self.ingestor = ingestor
        self.roots = roots
        self.dir = settings.jobs_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self._jobs: dict[str, JobState] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._starting = 0  # StartIndexJob calls walking their folder now
        self._changed = threading.Condition(self._lock)
        self._slots = threading.Semaphore(settings.max_jobs)
        self._closed = False
        self._load()

    # -- persistence -----------------------------------------------------

    def _state_path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.json"

    def _files_path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.files"

    def _save(self, job: JobState) -> None:
        """Atomic, durable write (jobfiles.write_atomic); call with the lock held."""
        write_atomic(self._state_path(job.job_id), json.dumps(asdict(job)).encode())

    def _load(self) -> None:
        for path in sorted(self.dir.glob("*.json")):
            try:
                job = JobState(**json.loads(path.read_text()))
            except (ValueError, TypeError, OSError) as exc:
                job = self._damaged(path, exc)
            self._jobs[job.job_id] = job
        self.expire()

    def _damaged(self, path: Path, exc: Exception) -> JobState:
        """A state file that cannot be read: kept aside as ``.damaged`` and
        reported as a FAILED job, never skipped silently."""
        logs.event(log, "job.damaged", logging.ERROR, file=str(path), error=str(exc))
        os.replace(path, path.with_suffix(".damaged"))
        job = JobState(
            job_id=path.stem,
            collection="",
            folder="",
            recursive=False,
            state=FAILED,
            message=f"the job's state file was damaged ({type(exc).__name__}); it is "
            f"kept as {path.stem}.damaged. Start the job again: files already indexed "
            "count as duplicates",
            created_at_ms=_now_ms(),
        )
        with self._lock:
            self._update(job)
        return job

    def resume_interrupted(self) -> None:
        """Jobs a previous gateway left running: resume them, or mark them failed."""
        for job in list(self._jobs.values()):
            if job.state in (PENDING, RUNNING):
                if self.settings.resume_jobs:
                    logs.event(
                        log, "job.resuming", job_id=job.job_id, done=job.done, total=job.total
                    )
                    with self._lock:
                        self._launch(job)
                else:
                    with self._lock:
                        self._update(
                            job,
                            state=FAILED,
                            message="interrupted by a gateway restart; ResumeJob continues it",
                        )

    def _update(self, job: JobState, **changes: object) -> None:
        """Applies changes, persists, wakes watchers; call with the lock held."""
        for key, value in changes.items():
            setattr(job, key, value)
        job.updated_at_ms = _now_ms()
        job.version += 1
        self._save(job)
        self._changed.notify_all()

    # -- API -------------------------------------------------------------

    def start(self, collection: str, folder: str, recursive: bool, model: str = "") -> JobState:
        real = self.roots.resolve(folder)
        if not real.is_dir():
            raise errors.invalid_argument(f"{folder} is not a folder on the gateway's machine")
        self.expire()
        with self._lock:
            open_jobs = self._starting + sum(not j.terminal for j in self._jobs.values())
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
        job_id = uuid.uuid4().hex[:12]
        job = JobState(
            job_id=job_id,
            collection=collection,
            folder=str(real),
            recursive=recursive,
            model=model,
            batch_size=self.settings.embed_batch,
            created_at_ms=_now_ms(),
        )
        total = write_file_list(
            self._files_path(job_id), (str(p) for p in walk_images(real, recursive, self.roots))
        )
        with self._lock:
            self._jobs[job_id] = job
            self._update(job, total=total)
        logs.event(
            log,
            "job.started",
            job_id=job_id,
            collection=collection,
            folder=str(real),
            files=total,
        )
        with self._lock:
            self._launch(job)
        return self.get(job_id)

    def get(self, job_id: str) -> JobState:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise errors.not_found(f"job {job_id!r} does not exist (ListJobs shows the jobs)")
            return _copy(job)

    def list_jobs(
        self, collection: str = "", page_size: int = DEFAULT_PAGE, page_token: str = ""
    ) -> tuple[list[JobState], str]:
        """A page of jobs, newest first, and the token of the next page ("" at
        the end). The token names the last job given, so pages stay right
        while jobs start or expire in between."""
        self.expire()
        size = min(max(page_size or DEFAULT_PAGE, 1), MAX_PAGE)
        after = _parse_token(page_token)
        with self._lock:
            ordered = sorted(
                (j for j in self._jobs.values() if not collection or j.collection == collection),
                key=lambda j: (j.created_at_ms, j.job_id),
                reverse=True,
            )
            if after is not None:
                ordered = [j for j in ordered if (j.created_at_ms, j.job_id) < after]
            page = ordered[: size + 1]
        jobs = [self.get(j.job_id) for j in page[:size]]
        more = len(page) > size
        token = _make_token(jobs[-1]) if more and jobs else ""
        return jobs, token

    def expire(self) -> int:
        """Forgets finished jobs older than GATEWAY_JOB_RETENTION_H (state and
        file list); returns how many went."""
        cutoff = _now_ms() - int(self.settings.job_retention_h * 3600 * 1000)
        with self._lock:
            old = [j for j in self._jobs.values() if j.terminal and j.updated_at_ms < cutoff]
            for job in old:
                del self._jobs[job.job_id]
                self._cancel.pop(job.job_id, None)
                self._threads.pop(job.job_id, None)
                for path in (self._state_path(job.job_id), self._files_path(job.job_id)):
                    path.unlink(missing_ok=True)
        if old:
            logs.event(log, "jobs.expired", count=len(old))
        return len(old)

    def _runner(self, job_id: str) -> threading.Thread | None:
        """The job's live runner thread, if any; call with the lock held."""
        thread = self._threads.get(job_id)
        return thread if thread is not None and thread.is_alive() else None

    def cancel(self, job_id: str) -> JobState:
        """Asks the runner to stop after its batches in flight and waits up to
        CANCEL_WAIT_S for it. A job whose runner is still finishing stays
        RUNNING, says so, and ends CANCELED by itself."""
        self.get(job_id)  # NOT_FOUND for an unknown job
        with self._lock:
            real = self._jobs[job_id]
            if real.terminal:
                return self.get(job_id)
            event = self._cancel.get(job_id)
            if event is not None:
                event.set()
            thread = self._runner(job_id)
        if thread is not None:
            thread.join(timeout=CANCEL_WAIT_S)
        with self._lock:
            if not real.terminal:
                if self._runner(job_id) is None:
                    self._update(real, state=CANCELED, message="canceled; ResumeJob continues it")
                else:
                    self._update(
                        real, message="cancel requested: stopping after the batches in flight"
                    )
        return self.get(job_id)

    def resume(self, job_id: str) -> JobState:
        """Starts a runner for a job that has none. A job with a live runner
        is left alone (at most one runner per job) and the answer says so."""
        self.get(job_id)
        while True:
            with self._lock:
                real = self._jobs[job_id]
                if real.state == SUCCEEDED:
                    break
                thread = self._runner(job_id)
                if thread is None:
                    self._update(real, state=PENDING, message="resumed")
                    self._launch(real)
                    break
                if not real.terminal:  # running (or waiting for a slot): nothing to do
                    job = _copy(real)
                    job.message = "already running; nothing to resume"
                    return job
            thread.join(timeout=5)  # a runner that has just finished: let it exit
        return self.get(job_id)

    def watch(
        self, job_id: str, is_active: Callable[[], bool], interval: float = 0.25
    ) -> Iterator[JobState]:
        """Yields the job now and at every change (at most every ``interval``)
        until it ends or the watcher goes away."""
        seen = -1
        while is_active():
            job = self.get(job_id)
            if job.version != seen:
                seen = job.version
                yield job
                if job.terminal:
                    return
                time.sleep(interval)
            with self._lock:
                real = self._jobs[job_id]
                if real.version == seen:
                    self._changed.wait(timeout=1.0)

    def close(self) -> None:
        """Stops running jobs after their in-flight batches; they resume at the next start."""
        self._closed = True
        for event in self._cancel.values():
            event.set()
        for thread in list(self._threads.values()):
            thread.join(timeout=30)

    # -- running ---------------------------------------------------------

    def _launch(self, job: JobState) -> None:
        """Starts the job's runner; call with the lock held, after checking it has none."""
        cancel = threading.Event()
        self._cancel[job.job_id] = cancel
        thread = threading.Thread(
            target=self._run, args=(job.job_id, cancel), name=f"job-{job.job_id}", daemon=True
        )
        self._threads[job.job_id] = thread
        thread.start()

    def _run(self, job_id: str, cancel: threading.Event) -> None:
        while not self._slots.acquire(timeout=0.5):  # a slot, unless canceled meanwhile
            if cancel.is_set():
                with self._lock:
                    job = self._jobs[job_id]
                    if not job.terminal and not self._closed:
                        self._update(job, state=CANCELED, message="canceled before it started")
                return
        try:
            JOBS_RUNNING.inc()
            try:
                self._execute(job_id, cancel)
            except errors.ServiceError as exc:
                if self._closed:
                    return
                with self._lock:
                    self._update(
                        self._jobs[job_id],
                        state=FAILED,
                        message=f"{exc.message}. ResumeJob continues from here",
                    )
                logs.event(log, "job.failed", logging.WARNING, job_id=job_id, reason=exc.message)
            except Exception as exc:
                log.exception("job.crash", extra={"fields": {"job_id": job_id}})
                with self._lock:
                    self._update(
                        self._jobs[job_id],
                        state=FAILED,
                        message=f"internal error ({type(exc).__name__}); the gateway's log has "
                        "the details. ResumeJob continues from here",
                    )
            finally:
                JOBS_RUNNING.dec()
        finally:
            self._slots.release()

    def _execute(self, job_id: str, cancel: threading.Event) -> None:
        job = self._jobs[job_id]
        try:
            files = read_file_list(self._files_path(job_id))
        except (OSError, ValueError) as exc:
            logs.event(
                log, "job.file_list_unreadable", logging.ERROR, job_id=job_id, error=str(exc)
            )
            raise errors.ServiceError(
                grpc.StatusCode.DATA_LOSS,
                f"the job's file list cannot be read ({type(exc).__name__}); start the job again",
            ) from None
        size = job.batch_size
        ahead = set(job.batches_ahead)
        todo = [
            b for b in range(job.batch_cursor, (len(files) + size - 1) // size) if b not in ahead
        ]
        with self._lock:
            self._update(job, state=RUNNING, message="")
        in_flight: dict[Future[list[Result]], int] = {}
        budget = ByteBudget(self.settings.max_inflight_bytes, self.inflight)
        failure: errors.ServiceError | None = None
        with ThreadPoolExecutor(
            self.settings.job_concurrency, thread_name_prefix=f"job-{job_id}"
        ) as pool:
            pending = iter(todo)
            while True:
                while (
                    failure is None
                    and not cancel.is_set()
                    and len(in_flight) < self.settings.job_concurrency
                ):
                    batch = next(pending, None)
                    if batch is None:
                        break
                    chunk = files[batch * size : (batch + 1) * size]
                    in_flight[pool.submit(self._batch, job, chunk, cancel, budget)] = batch
                if not in_flight:
                    break
                finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for fut in finished:
                    batch = in_flight.pop(fut)
                    try:
                        self._record(job, batch, fut.result())
                    except errors.ServiceError as exc:
                        failure = failure or exc
        if failure is not None:
            raise failure
        if self._closed:
            return  # gateway shutting down: stays RUNNING on disk, resumed at next start
        with self._lock:
            if cancel.is_set():
                if not job.terminal:
                    self._update(job, state=CANCELED, message="canceled; ResumeJob continues it")
            else:
                self._update(job, state=SUCCEEDED, message="")
        logs.event(
            log,
            "job.finished",
            job_id=job_id,
            state=job.state,
            indexed=job.indexed,
            duplicates=job.duplicates,
            failed=job.failed,
        )

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

    def _record(self, job: JobState, batch: int, results: list[Result]) -> None:
        with self._lock:
            errs = list(job.errors)
            counts = {Outcome.INDEXED: 0, Outcome.DUPLICATE: 0, Outcome.FAILED: 0}
            for r in results:
                counts[r.outcome] += 1
                JOB_FILES.labels(r.outcome.value).inc()
                if r.outcome is Outcome.FAILED and len(errs) < self.settings.max_errors_kept:
                    errs.append({"path": r.name, "reason": r.reason, "code": r.code.name})
            cursor, ahead = advance(job.batch_cursor, job.batches_ahead, batch)
            self._update(
                job,
                done=job.done + len(results),
                indexed=job.indexed + counts[Outcome.INDEXED],
                duplicates=job.duplicates + counts[Outcome.DUPLICATE],
                failed=job.failed + counts[Outcome.FAILED],
                errors=errs,
                batch_cursor=cursor,
                batches_ahead=ahead,
            )
