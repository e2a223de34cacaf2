"""Jobs in files under ``<data_dir>/jobs``, for the one gateway that owns
them (the embedded default, GATEWAY_JOBS_URL empty).

- ``<id>.json``: the state, replaced atomically after every change;
- ``<id>.chunks``: the chunks the walk published, one JSON line each
  (``{"n": number, "files": [...]}``), appended and fsynced before the state
  counts them; a chunk written twice (a walk resumed after a crash) is read
  from its last line;
- ``<id>.files``: an older version's whole file list, still read.

The queue is in memory: a restarted gateway queues again what its unfinished
jobs have left (``JobManager.resume_interrupted``).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc

from gateway.jobfiles import read_file_list, write_atomic
from gateway.jobstore import (
    CHUNK,
    WALK,
    Change,
    ChangeStore,
    JobRecord,
    Work,
    encoded,
    follow,
    newest_first,
    not_found,
    now_ms,
    rejected,
    to_forget,
)
from imagesearch import errors, logs

log = logging.getLogger(__name__)


class LocalJobStore(ChangeStore):
    """Jobs in files under one folder, with an in-process queue."""

    shared = False

    def __init__(self, folder: Path, max_errors_kept: int) -> None:
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_errors_kept = max_errors_kept
        self._jobs: dict[str, JobRecord] = {}
        self._offsets: dict[str, dict[int, int]] = {}  # job -> chunk -> line offset
        self._queues: dict[str, queue.Queue[Work | None]] = {
            WALK: queue.Queue(),
            CHUNK: queue.Queue(),
        }
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        for path in sorted(self.dir.glob("*.json")):
            try:
                job = JobRecord.load(json.loads(path.read_text()))
            except (ValueError, TypeError, OSError) as exc:
                job = self._damaged(path, exc)
            self._jobs[job.job_id] = job

    def _path(self, job_id: str, suffix: str) -> Path:
        return self.dir / f"{job_id}.{suffix}"

    def _damaged(self, path: Path, exc: Exception) -> JobRecord:
        """A state file that cannot be read: kept aside as ``.damaged`` and
        reported as a FAILED job, never skipped silently."""
        logs.event(log, "job.damaged", logging.ERROR, file=str(path), error=str(exc))
        os.replace(path, path.with_suffix(".damaged"))
        job = JobRecord.damaged(
            path.stem, type(exc).__name__, f"it is kept as {path.stem}.damaged", now_ms()
        )
        with self._lock:
            self._apply(job, {})
        return job

    def _apply(self, job: JobRecord, changes: dict[str, object]) -> None:
        """Applies changes, persists, wakes watchers; call with the lock held."""
        for key, value in changes.items():
            setattr(job, key, value)
        job.updated_at_ms = now_ms()
        job.version += 1
        write_atomic(self._path(job.job_id, "json"), encoded(job))
        self._changed.notify_all()

    def create(self, job: JobRecord) -> JobRecord:
        with self._lock:
            self._jobs[job.job_id] = job
            self._apply(job, {})
            created = replace(job, errors=list(job.errors))
        self._queues[WALK].put(self._work(WALK, job.job_id))
        return created

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise not_found(job_id)
            return replace(job, errors=list(job.errors))

    def page(
        self, collection: str, size: int, after: tuple[int, str] | None
    ) -> tuple[list[JobRecord], bool]:
        with self._lock:
            jobs, more = newest_first(self._jobs.values(), collection, size, after)
            return [replace(j, errors=list(j.errors)) for j in jobs], more

    def change(self, job_id: str, change: Change) -> JobRecord | None:
        """The job after ``change(job)``'s changes; None, changing nothing,
        when it gives None."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise not_found(job_id)
            changes = change(job)
            if changes is None:
                return None
            self._apply(job, changes)
            return replace(job, errors=list(job.errors))

    # -- work ----------------------------------------------------------------

    def put_chunk(self, job_id: str, number: int, files: list[str]) -> None:
        line = (json.dumps({"n": number, "files": files}) + "\n").encode("ascii")
        path = self._path(job_id, "chunks")
        with self._lock:
            offsets = self._index(job_id)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            try:
                offset = os.lseek(fd, 0, os.SEEK_END)
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            offsets[number] = offset
        self._queues[CHUNK].put(self._work(CHUNK, job_id, number))

    def _index(self, job_id: str) -> dict[int, int]:
        """Where each chunk's line starts (read once); call with the lock held."""
        offsets = self._offsets.get(job_id)
        if offsets is None:
            offsets = {}
            path = self._path(job_id, "chunks")
            if path.exists():
                with path.open("rb") as f:
                    offset = 0
                    for line in f:
                        if line.endswith(b"\n"):  # a line cut short by a crash is not a chunk
                            offsets[json.loads(line)["n"]] = offset
                        offset += len(line)
            self._offsets[job_id] = offsets
        return offsets

    def chunk_files(self, job_id: str, number: int) -> list[str]:
        job = self.get(job_id)
        try:
            with self._lock:
                offset = self._index(job_id).get(number)
            if offset is None:
                old = self._path(job_id, "files")  # an older version's whole list
                size = job.chunk_size
                return read_file_list(old)[number * size : (number + 1) * size]
            with self._path(job_id, "chunks").open("rb") as f:
                f.seek(offset)
                files = json.loads(f.readline())["files"]
            if not isinstance(files, list):
                raise ValueError("a chunk's files are not a list")
            return [str(name) for name in files]
        except (OSError, ValueError, KeyError) as exc:
            logs.event(
                log, "job.file_list_unreadable", logging.ERROR, job_id=job_id, error=str(exc)
            )
            raise errors.ServiceError(
                grpc.StatusCode.DATA_LOSS,
                f"the job's file list cannot be read ({type(exc).__name__}); start the job again",
            ) from None

    @staticmethod
    def _work(kind: str, job_id: str, chunk: int = -1) -> Work:
        def reject(reason: str) -> None:  # dropped from the queue already: counted
            rejected(reason, job_id=job_id[:64], kind=kind, chunk=chunk)

        return Work(kind, job_id, chunk, reject=reject)

    def claim(self, kind: str, timeout: float) -> Work | None:
        try:
            return self._queues[kind].get(timeout=timeout)
        except queue.Empty:
            return None

    def wake(self, workers: int) -> None:
        """A None for each worker: its claim answers "nothing" at once."""
        for q in self._queues.values():
            for _ in range(workers):
                q.put(None)

    def requeue(self, job_id: str, walk: bool, chunks: Iterable[int]) -> None:
        if walk:
            self._queues[WALK].put(self._work(WALK, job_id))
        for number in chunks:
            self._queues[CHUNK].put(self._work(CHUNK, job_id, number))

    # -- reading -------------------------------------------------------------

    def watch(
        self, job_id: str, is_active: Callable[[], bool], interval: float
    ) -> Iterator[JobRecord]:
        def until_changed(seen: int) -> None:
            with self._lock:
                job = self._jobs.get(job_id)
                if job is not None and job.version == seen:
                    self._changed.wait(timeout=1.0)

        return follow(lambda: self.get(job_id), is_active, interval, until_changed)

    def unfinished(self) -> list[JobRecord]:
        with self._lock:
            return [replace(j) for j in self._jobs.values() if not j.terminal]

    def open_jobs(self) -> int:
        with self._lock:
            return sum(not j.terminal for j in self._jobs.values())

    def expire(self, older_than_ms: int, keep_finished: int) -> int:
        """Forgets finished jobs last changed before ``older_than_ms``, and
        the least recently changed beyond ``keep_finished`` (state and
        files); returns how many went."""
        with self._lock:
            old = to_forget(self._jobs.values(), older_than_ms, keep_finished)
            for job in old:
                del self._jobs[job.job_id]
                self._offsets.pop(job.job_id, None)
                for suffix in ("json", "chunks", "files"):
                    self._path(job.job_id, suffix).unlink(missing_ok=True)
        return len(old)

    def close(self) -> None:
        """Nothing to let go: every change is on disk already."""
