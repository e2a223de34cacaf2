"""Jobs kept in NATS JetStream (GATEWAY_JOBS_URL=nats://...), shared by every
gateway that names the same server and GATEWAY_JOBS_PREFIX.

- A job's state is one key of the key-value bucket ``<prefix>_jobs``; every
  change is a revision-checked update (compare and set), so gateways that
  record chunks of one job at the same time never lose a count, and a chunk
  recorded twice is counted once (``JobState.recorded``).
- A chunk's files are one key of the bucket ``<prefix>_chunks``
  (``<job>.<number>``), kept until the job expires, so ResumeJob can queue
  again what a stopped job has left.
- The work is the stream ``<prefix>_work`` (work-queue retention): walks on
  ``<prefix>.work.walk``, chunks on ``<prefix>.work.chunk``, each with one
  durable pull consumer every gateway fetches from. A unit is acked after its
  results are recorded; one whose gateway stops touching it (``in_progress``)
  is given to another after GATEWAY_JOBS_ACK_WAIT_S.

nats-py is asyncio; this store runs its own event loop on a thread and the
threaded gateway calls it synchronously. NATS unreachable is UNAVAILABLE,
naming the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import Any, TypeVar

import grpc
import nats
from nats.js.api import ConsumerConfig, RetentionPolicy, StreamConfig
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError

from gateway.jobstore import (
    CHUNK,
    WALK,
    Change,
    JobState,
    Work,
    conditional,
    count_results,
    follow,
    newest_first,
    not_found,
    now_ms,
)
from gateway.orchestrator import Result
from gateway.settings import GatewaySettings
from imagesearch import errors, logs

log = logging.getLogger(__name__)

T = TypeVar("T")
CALL_TIMEOUT_S = 30.0
CAS_TRIES = 100  # revision-checked updates retried this often under contention


def _unavailable(url: str, exc: BaseException) -> errors.ServiceError:
    return errors.ServiceError(
        grpc.StatusCode.UNAVAILABLE,
        f"the job store at {url} (GATEWAY_JOBS_URL) cannot be reached "
        f"({type(exc).__name__}); jobs wait until it is back",
    )


def connect_options(settings: GatewaySettings) -> dict[str, Any]:
    """nats.connect's credentials and TLS from GATEWAY_JOBS_CREDS and
    GATEWAY_JOBS_TLS_*."""
    options: dict[str, Any] = {}
    if settings.jobs_creds:
        options["user_credentials"] = settings.jobs_creds
    if settings.jobs_tls_ca or settings.jobs_tls_cert:
        context = ssl.create_default_context(cafile=settings.jobs_tls_ca or None)
        if settings.jobs_tls_cert:
            context.load_cert_chain(settings.jobs_tls_cert, settings.jobs_tls_key or None)
        options["tls"] = context
    return options


class NatsJobStore:
    """The JobStore on NATS JetStream: state and chunks' files in KV buckets,
    the work in a work-queue stream."""

    shared = True

    def __init__(
        self,
        url: str,
        prefix: str,
        max_errors_kept: int,
        ack_wait_s: float = 60.0,
        replicas: int = 1,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._jobs_bucket = f"{prefix}_jobs"
        self.max_errors_kept = max_errors_kept
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="nats-jobs", daemon=True
        )
        self._thread.start()
        self._subs: dict[str, Any] = {}
        self._fetching: dict[str, asyncio.Lock] = {}
        try:
            self._call(self._connect(ack_wait_s, replicas, connect_options or {}), timeout=20)
        except BaseException:
            self._stop_loop()
            raise
        logs.event(log, "jobs.store", kind="nats", url=url, prefix=prefix)

    @classmethod
    def open(cls, settings: GatewaySettings) -> NatsJobStore:
        return cls(
            settings.jobs_url,
            settings.jobs_prefix,
            settings.max_errors_kept,
            ack_wait_s=settings.jobs_ack_wait_s,
            replicas=settings.jobs_replicas,
            connect_options=connect_options(settings),
        )

    def _subject(self, kind: str) -> str:
        return f"{self.prefix}.work.{kind}"

    async def _connect(self, ack_wait_s: float, replicas: int, options: dict[str, Any]) -> None:
        self._nc = await nats.connect(
            self.url,
            name="imagesearch-gateway",
            connect_timeout=5,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            **options,
        )
        self._js = js = self._nc.jetstream()
        self._kv = await js.create_key_value(bucket=self._jobs_bucket, history=1, replicas=replicas)
        self._chunks = await js.create_key_value(
            bucket=f"{self.prefix}_chunks", history=1, replicas=replicas
        )
        stream = f"{self.prefix}_work"
        await js.add_stream(
            StreamConfig(
                name=stream,
                subjects=[self._subject(WALK), self._subject(CHUNK)],
                retention=RetentionPolicy.WORK_QUEUE,
                num_replicas=replicas,
            )
        )
        for kind in (WALK, CHUNK):
            self._fetching[kind] = asyncio.Lock()
            self._subs[kind] = await js.pull_subscribe(
                self._subject(kind),
                durable=f"{self.prefix}_{kind}s",
                stream=stream,
                config=ConsumerConfig(ack_wait=ack_wait_s, max_deliver=-1),
            )

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT_S) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except errors.ServiceError:
            raise
        except (KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError):
            raise
        except Exception as exc:  # timeouts, connection errors
            future.cancel()
            logs.event(log, "jobs.store_error", logging.WARNING, error=repr(exc))
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
        return JobState.load(json.loads(entry.value)), int(entry.revision or 0)

    def create(self, job: JobState) -> JobState:
        job.version, job.updated_at_ms = 1, now_ms()
        self._call(self._kv.create(job.job_id, json.dumps(asdict(job)).encode()))
        self.requeue(job.job_id, walk=True, chunks=())
        return job

    def get(self, job_id: str) -> JobState:
        return self._read(job_id)[0]

    def _all(self) -> list[JobState]:
        """Every job, read in one round of concurrent gets (a job expired
        between the listing and its get is left out). The keys are the
        subjects of the bucket's stream, as the server lists them: nats-py's
        ``KeyValue.keys()`` reads them through a watch, which lists a job
        that changes meanwhile twice, or not at all."""
        bucket = self._jobs_bucket

        async def read_all() -> list[Any]:
            info = await self._js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.>")
            keys = [s.removeprefix(f"$KV.{bucket}.") for s in info.state.subjects or {}]
            got = await asyncio.gather(*(self._kv.get(k) for k in keys), return_exceptions=True)
            for entry in got:
                if isinstance(entry, BaseException) and not isinstance(entry, KeyNotFoundError):
                    raise entry
            return [e for e in got if not isinstance(e, BaseException) and e.value is not None]

        return [JobState.load(json.loads(e.value)) for e in self._call(read_all())]

    def page(
        self, collection: str, size: int, after: tuple[int, str] | None
    ) -> tuple[list[JobState], bool]:
        return newest_first(self._all(), collection, size, after)

    def change(self, job_id: str, change: Change) -> JobState | None:
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
        return self.change(job_id, conditional(when, changes))

    # -- work ----------------------------------------------------------------

    def put_chunk(self, job_id: str, number: int, files: list[str]) -> None:
        self._call(self._chunks.put(f"{job_id}.{number}", json.dumps(files).encode("ascii")))
        self.requeue(job_id, walk=False, chunks=(number,))

    def chunk_files(self, job_id: str, number: int) -> list[str]:
        try:
            entry = self._call(self._chunks.get(f"{job_id}.{number}"))
        except KeyNotFoundError:
            entry = None
        if entry is None or entry.value is None:
            raise errors.ServiceError(
                grpc.StatusCode.DATA_LOSS,
                f"chunk {number} of job {job_id} is gone from the job store; start the job again",
            )
        return [str(name) for name in json.loads(entry.value)]

    def claim(self, kind: str, timeout: float) -> Work | None:
        async def fetch() -> Any:
            async with self._fetching[kind]:  # one fetch per consumer at a time
                try:
                    msgs = await self._subs[kind].fetch(1, timeout=timeout)
                except nats.errors.TimeoutError:
                    return None
                return msgs[0] if msgs else None

        msg = self._call(fetch(), timeout=CALL_TIMEOUT_S + timeout)
        if msg is None:
            return None
        unit = json.loads(msg.data)
        return Work(
            kind,
            str(unit["job"]),
            int(unit.get("chunk", -1)),
            delivered=msg.metadata.num_delivered,
            ack=lambda: self._call(msg.ack()),
            touch=lambda: self._call(msg.in_progress()),
        )

    def requeue(self, job_id: str, walk: bool, chunks: Iterable[int]) -> None:
        async def publish() -> None:
            if walk:
                await self._js.publish(self._subject(WALK), json.dumps({"job": job_id}).encode())
            for number in chunks:
                unit = json.dumps({"job": job_id, "chunk": number}).encode()
                await self._js.publish(self._subject(CHUNK), unit)

        self._call(publish(), timeout=120)

    def record(self, job_id: str, chunk: int, results: Sequence[Result]) -> bool:
        def change(job: JobState) -> dict[str, object] | None:
            if job.recorded(chunk):
                return None
            return count_results(job, chunk, results, self.max_errors_kept)

        return self.change(job_id, change) is not None

    # -- reading -------------------------------------------------------------

    def watch(
        self, job_id: str, is_active: Callable[[], bool], interval: float
    ) -> Iterator[JobState]:
        """Yields the job now and whenever its key changes in the bucket (a
        KV watch, so a job worked on by other gateways is followed too), at
        most every ``interval``, until it ends or the watcher goes away."""
        watcher = self._call(self._kv.watch(job_id, meta_only=True))

        async def next_change() -> None:
            with contextlib.suppress(nats.errors.TimeoutError):
                await watcher.updates(timeout=1.0)

        try:
            yield from follow(
                lambda: self.get(job_id),
                is_active,
                interval,
                lambda _: self._call(next_change(), timeout=10),
            )
        finally:
            with contextlib.suppress(errors.ServiceError):
                self._call(watcher.stop(), timeout=5)

    def unfinished(self) -> list[JobState]:
        return [j for j in self._all() if not j.terminal]

    def open_jobs(self) -> int:
        return len(self.unfinished())

    def expire(self, older_than_ms: int) -> int:
        """Forgets finished jobs last changed before ``older_than_ms``: their
        state and their chunks' files (units still queued are dropped when
        delivered: their job is gone)."""
        old = [j for j in self._all() if j.terminal and j.updated_at_ms < older_than_ms]
        for job in old:
            self._call(self._kv.delete(job.job_id))
            bucket = f"{self.prefix}_chunks"
            self._call(
                self._js.purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.{job.job_id}.>")
            )
        return len(old)
