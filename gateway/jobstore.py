"""Where folder jobs live: their state, their work in chunks, their progress.

The runner (gateway/jobs.py) never touches a job's files or records itself;
it goes through a ``JobStore``:

- ``create`` saves a new job with its file list, cut into chunks of
  ``batch_size`` files (chunk n is files [n * size, (n + 1) * size));
- ``todo`` gives the chunks not yet recorded, ``record`` adds one chunk's
  results, once: a chunk recorded again (delivered twice) changes nothing;
- ``update`` changes a job's state, optionally only when a condition on the
  current state holds (compare and set); every change bumps ``version``;
- ``watch`` yields a job at every change; ``get``, ``page``, ``expire`` and
  ``unfinished`` read and prune.

``LocalJobStore`` keeps them under ``<data_dir>/jobs`` (``<id>.json`` state,
written atomically after every change, and ``<id>.files``): the embedded
default, one gateway.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import grpc

from gateway.jobfiles import read_file_list, write_atomic, write_file_list
from gateway.orchestrator import Outcome, Result
from gateway.settings import GatewaySettings
from imagesearch import errors, logs

log = logging.getLogger(__name__)

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED = (
    "pending",
    "running",
    "succeeded",
    "failed",
    "canceled",
)
TERMINAL = {SUCCEEDED, FAILED, CANCELED}
DEFAULT_PAGE, MAX_PAGE = 100, 1000


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
    batch_size: int = 32  # files per chunk
    batch_cursor: int = 0  # every chunk below this number is recorded
    batches_ahead: list[int] = field(default_factory=list)  # recorded chunks above it
    created_at_ms: int = 0
    updated_at_ms: int = 0
    version: int = 0  # bumps on every change, for watchers
    model: str = ""  # of a collection the job creates (StartIndexJob's model)
    runner: str = ""  # the gateway running it (shared stores)
    heartbeat_ms: int = 0  # when that gateway last said it still runs it

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def chunks(self) -> int:
        return (self.total + self.batch_size - 1) // self.batch_size

    def recorded(self, chunk: int) -> bool:
        return chunk < self.batch_cursor or chunk in self.batches_ahead


def advance(cursor: int, ahead: list[int], batch: int) -> tuple[int, list[int]]:
    """Marks ``batch`` done: (new cursor, done batches above it). Every batch
    below the cursor is done, so a resumed job skips exactly those and the
    ones ahead, whatever order the batches finished in."""
    done = {*ahead, batch}
    while cursor in done:
        done.discard(cursor)
        cursor += 1
    return cursor, sorted(done)


def count_results(
    job: JobState, chunk: int, results: Sequence[Result], max_errors: int
) -> dict[str, object]:
    """The changes that add one chunk's results to ``job``: counts, the first
    ``max_errors`` errors, and the chunk marked recorded."""
    errs = list(job.errors)
    counts = {Outcome.INDEXED: 0, Outcome.DUPLICATE: 0, Outcome.FAILED: 0}
    for r in results:
        counts[r.outcome] += 1
        if r.outcome is Outcome.FAILED and len(errs) < max_errors:
            errs.append({"path": r.name, "reason": r.reason, "code": r.code.name})
    cursor, ahead = advance(job.batch_cursor, job.batches_ahead, chunk)
    return {
        "done": job.done + len(results),
        "indexed": job.indexed + counts[Outcome.INDEXED],
        "duplicates": job.duplicates + counts[Outcome.DUPLICATE],
        "failed": job.failed + counts[Outcome.FAILED],
        "errors": errs,
        "batch_cursor": cursor,
        "batches_ahead": ahead,
    }


def follow(
    get: Callable[[], JobState],
    is_active: Callable[[], bool],
    interval: float,
    until_changed: Callable[[int], None],
) -> Iterator[JobState]:
    """A job's versions as ``get`` reads them: now, then whenever the version
    changes (``until_changed(version)`` waits for that, at most a second or
    so), at most every ``interval``, until it ends or ``is_active`` says the
    watcher left."""
    seen = -1
    while is_active():
        job = get()
        if job.version != seen:
            seen = job.version
            yield job
            if job.terminal:
                return
            time.sleep(interval)
        until_changed(seen)


def page_token(job: JobState) -> str:
    return base64.urlsafe_b64encode(f"{job.created_at_ms}:{job.job_id}".encode()).decode()


def parse_page_token(token: str) -> tuple[int, str] | None:
    if not token:
        return None
    try:
        created, job_id = base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)
        return int(created), job_id
    except (ValueError, UnicodeDecodeError):
        raise errors.invalid_argument(
            f"page_token {token!r} is not one ListJobs gave; start again without it"
        ) from None


def now_ms() -> int:
    return int(time.time() * 1000)


def not_found(job_id: str) -> errors.ServiceError:
    return errors.not_found(f"job {job_id!r} does not exist (ListJobs shows the jobs)")


class JobStore(Protocol):
    # Whether other gateways use the same jobs (then runners hold a lease).
    shared: bool

    def create(self, job: JobState, files: Iterable[str]) -> JobState: ...

    def get(self, job_id: str) -> JobState: ...

    def page(
        self, collection: str, size: int, after: tuple[int, str] | None
    ) -> tuple[list[JobState], bool]: ...

    def update(
        self, job_id: str, when: Callable[[JobState], bool] | None = None, **changes: object
    ) -> JobState | None: ...

    def todo(self, job_id: str) -> Iterator[tuple[int, list[str]]]: ...

    def record(self, job_id: str, chunk: int, results: Sequence[Result]) -> bool: ...

    def watch(
        self, job_id: str, is_active: Callable[[], bool], interval: float
    ) -> Iterator[JobState]: ...

    def unfinished(self) -> list[JobState]: ...

    def open_jobs(self) -> int: ...

    def expire(self, older_than_ms: int) -> int: ...

    def close(self) -> None: ...


def open_job_store(settings: GatewaySettings) -> JobStore:
    """GATEWAY_JOBS_URL: empty for the local files, nats://... for NATS."""
    if not settings.jobs_url:
        return LocalJobStore(settings.jobs_dir, settings.max_errors_kept)
    from gateway.natsjobs import NatsJobStore

    return NatsJobStore(settings.jobs_url, settings.jobs_prefix, settings.max_errors_kept)


def _copy(job: JobState) -> JobState:
    """A snapshot of ``job`` for callers (taken with the lock held)."""
    return JobState(**{**asdict(job), "errors": list(job.errors)})


class LocalJobStore:
    """Jobs in files under one folder, for the one gateway that owns it."""

    shared = False

    def __init__(self, folder: Path, max_errors_kept: int) -> None:
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_errors_kept = max_errors_kept
        self._jobs: dict[str, JobState] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        for path in sorted(self.dir.glob("*.json")):
            try:
                job = JobState(**json.loads(path.read_text()))
            except (ValueError, TypeError, OSError) as exc:
                job = self._damaged(path, exc)
            self._jobs[job.job_id] = job

    def _state_path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.json"

    def _files_path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.files"

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
            created_at_ms=now_ms(),
        )
        with self._lock:
            self._apply(job, {})
        return job

    def _apply(self, job: JobState, changes: dict[str, object]) -> None:
        """Applies changes, persists, wakes watchers; call with the lock held."""
        for key, value in changes.items():
            setattr(job, key, value)
        job.updated_at_ms = now_ms()
        job.version += 1
        write_atomic(self._state_path(job.job_id), json.dumps(asdict(job)).encode())
        self._changed.notify_all()

    def create(self, job: JobState, files: Iterable[str]) -> JobState:
        total = write_file_list(self._files_path(job.job_id), files)
        with self._lock:
            self._jobs[job.job_id] = job
            self._apply(job, {"total": total})
            return _copy(job)

    def get(self, job_id: str) -> JobState:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise not_found(job_id)
            return _copy(job)

    def page(
        self, collection: str, size: int, after: tuple[int, str] | None
    ) -> tuple[list[JobState], bool]:
        """Up to ``size`` jobs, newest first, older than ``after``; and whether
        more follow."""
        with self._lock:
            ordered = sorted(
                (j for j in self._jobs.values() if not collection or j.collection == collection),
                key=lambda j: (j.created_at_ms, j.job_id),
                reverse=True,
            )
            if after is not None:
                ordered = [j for j in ordered if (j.created_at_ms, j.job_id) < after]
            return [_copy(j) for j in ordered[:size]], len(ordered) > size

    def update(
        self, job_id: str, when: Callable[[JobState], bool] | None = None, **changes: object
    ) -> JobState | None:
        """The job after ``changes``; None, changing nothing, when ``when``
        does not hold for it now."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise not_found(job_id)
            if when is not None and not when(job):
                return None
            self._apply(job, changes)
            return _copy(job)

    def todo(self, job_id: str) -> Iterator[tuple[int, list[str]]]:
        """The chunks not recorded yet, in order, with their files."""
        job = self.get(job_id)
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
        chunks = range(job.batch_cursor, (len(files) + size - 1) // size)
        return ((n, files[n * size : (n + 1) * size]) for n in chunks if n not in job.batches_ahead)

    def record(self, job_id: str, chunk: int, results: Sequence[Result]) -> bool:
        """Adds one chunk's results to the job's counts (and its first
        errors); False, changing nothing, for a chunk already recorded."""
        with self._lock:
            job = self._jobs[job_id]
            if job.recorded(chunk):
                return False
            self._apply(job, count_results(job, chunk, results, self.max_errors_kept))
            return True

    def watch(
        self, job_id: str, is_active: Callable[[], bool], interval: float
    ) -> Iterator[JobState]:
        """Yields the job now and at every change (at most every ``interval``)
        until it ends or the watcher goes away."""

        def until_changed(seen: int) -> None:
            with self._lock:
                if self._jobs[job_id].version == seen:
                    self._changed.wait(timeout=1.0)

        return follow(lambda: self.get(job_id), is_active, interval, until_changed)

    def unfinished(self) -> list[JobState]:
        """Jobs pending or running (a gateway stopped while they were)."""
        with self._lock:
            return [_copy(j) for j in self._jobs.values() if not j.terminal]

    def open_jobs(self) -> int:
        with self._lock:
            return sum(not j.terminal for j in self._jobs.values())

    def expire(self, older_than_ms: int) -> int:
        """Forgets finished jobs last changed before ``older_than_ms`` (state
        and file list); returns how many went."""
        with self._lock:
            old = [j for j in self._jobs.values() if j.terminal and j.updated_at_ms < older_than_ms]
            for job in old:
                del self._jobs[job.job_id]
                for path in (self._state_path(job.job_id), self._files_path(job.job_id)):
                    path.unlink(missing_ok=True)
        return len(old)

    def close(self) -> None:
        """Nothing to let go: every change is on disk already."""
