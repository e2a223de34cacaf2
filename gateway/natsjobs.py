"""Jobs kept in NATS JetStream (GATEWAY_JOBS_URL=nats://...), shared by every
gateway that names the same server and GATEWAY_JOBS_PREFIX.

- A job's state is one key of the key-value bucket ``<prefix>_jobs``; every
  change is a revision-checked update (compare and set), so gateways that
  record chunks of one job at the same time never lose a count, and a chunk
  recorded twice is counted once (``JobState.recorded``).
- A job's file list is one object of the object store ``<prefix>_job_files``.
- Watching a job reads its key from the bucket, so a job runs on one gateway
  and is watched, listed, canceled and resumed through any of them.

nats-py is asyncio; this store runs its own event loop on a thread and the
threaded gateway calls it synchronously. NATS unreachable is UNAVAILABLE,
naming the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import Any, TypeVar

import grpc
import nats
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
    ObjectNotFoundError,
)

from gateway.jobfiles import decode_file_list, encode_file_list
from gateway.jobstore import JobState, count_results, follow, not_found, now_ms
from gateway.orchestrator import Result
from imagesearch import errors, logs

log = logging.getLogger(__name__)

T = TypeVar("T")
CALL_TIMEOUT_S = 30.0
CAS_TRIES = 100  # revision-checked updates retried this often under contention


def _unavailable(url: str, exc: BaseException) -> errors.ServiceError:
    return errors.ServiceError(
        grpc.StatusCode.UNAVAILABLE,
        f"the job store at {url} (GATEWAY_JOBS_URL) cannot be reached "
        f"({type(exc).__name__}: {exc}); jobs wait until it is back",
    )


class NatsJobStore:
    """The JobStore on NATS JetStream: state in a KV bucket, file lists in an
    object store."""

    shared = True

    def __init__(
        self,
        url: str,
        prefix: str,
        max_errors_kept: int,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.max_errors_kept = max_errors_kept
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="nats-jobs", daemon=True
        )
        self._thread.start()
        try:
            self._nc, self._kv, self._files = self._call(
                self._connect(url, prefix, connect_options or {}), timeout=20
            )
        except BaseException:
            self._stop_loop()
            raise
        logs.event(log, "jobs.store", kind="nats", url=url, prefix=prefix)

    async def _connect(self, url: str, prefix: str, options: dict[str, Any]) -> tuple[Any, ...]:
        nc = await nats.connect(
            url,
            name="imagesearch-gateway",
            connect_timeout=5,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            **options,
        )
        js = nc.jetstream()
        kv = await js.create_key_value(bucket=f"{prefix}_jobs", history=1)
        files = await js.create_object_store(bucket=f"{prefix}_job_files")
        return nc, kv, files

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT_S) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except errors.ServiceError:
            raise
        except (KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError, ObjectNotFoundError):
            raise
        except Exception as exc:  # timeouts, connection errors
            future.cancel()
            raise _unavailable(self.url, exc) from None

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def close(self) -> None:
        with contextlib.suppress(errors.ServiceError):
            self._call(self._nc.close(), timeout=5)
        self._stop_loop()

    # -- state ---------------------------------------------------------------

    def _read(self, job_id: str) -> tuple[JobState, int]:
        try:
            entry = self._call(self._kv.get(job_id))
        except KeyNotFoundError:
            raise not_found(job_id) from None
        if entry.value is None:
            raise not_found(job_id)
        return JobState(**json.loads(entry.value)), int(entry.revision or 0)

    def create(self, job: JobState, files: Iterable[str]) -> JobState:
        data, total = encode_file_list(files)
        self._call(self._files.put(job.job_id, data), timeout=120)
        job.total, job.version, job.updated_at_ms = total, 1, now_ms()
        self._call(self._kv.create(job.job_id, json.dumps(asdict(job)).encode()))
        return job

    def get(self, job_id: str) -> JobState:
        return self._read(job_id)[0]

    def _all(self) -> list[JobState]:
        try:
            keys = self._call(self._kv.keys())
        except NoKeysError:
            return []
        jobs = []
        for key in keys:
            try:
                jobs.append(self.get(key))
            except errors.ServiceError as exc:
                if exc.code != grpc.StatusCode.NOT_FOUND:  # expired meanwhile: skip
                    raise
        return jobs

    def page(
        self, collection: str, size: int, after: tuple[int, str] | None
    ) -> tuple[list[JobState], bool]:
        ordered = sorted(
            (j for j in self._all() if not collection or j.collection == collection),
            key=lambda j: (j.created_at_ms, j.job_id),
            reverse=True,
        )
        if after is not None:
            ordered = [j for j in ordered if (j.created_at_ms, j.job_id) < after]
        return ordered[:size], len(ordered) > size

    def _change(
        self, job_id: str, change: Callable[[JobState], dict[str, object] | None]
    ) -> JobState | None:
        """Applies ``change(job)`` (None: leave it) with a revision-checked
        update, read again and retried when another gateway wrote first."""
        for _ in range(CAS_TRIES):
            job, revision = self._read(job_id)
            changes = change(job)
            if changes is None:
                return None
            for key, value in changes.items():
                setattr(job, key, value)
            job.updated_at_ms = now_ms()
            job.version += 1
            try:
                self._call(self._kv.update(job_id, json.dumps(asdict(job)).encode(), last=revision))
                return job
            except KeyWrongLastSequenceError:
                time.sleep(0.005)
        raise errors.ServiceError(
            grpc.StatusCode.ABORTED, f"job {job_id} changed too often to update; try again"
        )

    def update(
        self, job_id: str, when: Callable[[JobState], bool] | None = None, **changes: object
    ) -> JobState | None:
        return self._change(job_id, lambda j: changes if when is None or when(j) else None)

    def todo(self, job_id: str) -> Iterator[tuple[int, list[str]]]:
        job = self.get(job_id)
        try:
            result = self._call(self._files.get(job_id), timeout=120)
        except ObjectNotFoundError:
            raise errors.ServiceError(
                grpc.StatusCode.DATA_LOSS,
                "the job's file list is gone from the job store; start the job again",
            ) from None
        files = decode_file_list(result.data or b"", f"job {job_id}'s file list")
        size = job.batch_size
        chunks = range(job.batch_cursor, (len(files) + size - 1) // size)
        return ((n, files[n * size : (n + 1) * size]) for n in chunks if n not in job.batches_ahead)

    def record(self, job_id: str, chunk: int, results: Sequence[Result]) -> bool:
        def change(job: JobState) -> dict[str, object] | None:
            if job.recorded(chunk):
                return None
            return count_results(job, chunk, results, self.max_errors_kept)

        return self._change(job_id, change) is not None

    def watch(
        self, job_id: str, is_active: Callable[[], bool], interval: float
    ) -> Iterator[JobState]:
        """Yields the job now and whenever its version changes, read from the
        bucket at most every ``interval`` (so a job running on another gateway
        is seen too), until it ends or the watcher goes away."""
        return follow(lambda: self.get(job_id), is_active, interval, lambda _: time.sleep(interval))

    def unfinished(self) -> list[JobState]:
        return [j for j in self._all() if not j.terminal]

    def open_jobs(self) -> int:
        return len(self.unfinished())

    def expire(self, older_than_ms: int) -> int:
        old = [j for j in self._all() if j.terminal and j.updated_at_ms < older_than_ms]
        for job in old:
            self._call(self._kv.delete(job.job_id))
            with contextlib.suppress(ObjectNotFoundError):
                self._call(self._files.delete(job.job_id))
        return len(old)
