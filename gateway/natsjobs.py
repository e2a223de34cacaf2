"""Jobs kept in NATS JetStream (GATEWAY_JOBS_URL=nats://...), shared by every
gateway that names the same server and GATEWAY_JOBS_PREFIX.

- A job's state is one key of the key-value bucket ``<prefix>_jobs``; every
  change is a revision-checked update (compare and set), so gateways that
  record chunks of one job at the same time never lose a count, and a chunk
  recorded twice is counted once (``JobRecord.recorded``).
- ``<prefix>_index`` lists the jobs by name alone, so that listing, counting
  and expiring read only the records they show: ``c.<created ms>.<job>.<collection>``
  for every job (newest first is the names sorted), ``open.<job>`` for each
  job not ended. A record put in ``<prefix>_jobs`` by other means is indexed
  when a gateway starts.
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
import re
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
import nats
from nats.aio.client import Client as NatsClient
from nats.js.api import ConsumerConfig, RetentionPolicy, StreamConfig
from nats.js.errors import (
    InvalidKeyError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)

from gateway.jobstore import (
    CHUNK,
    WALK,
    Change,
    ChangeStore,
    JobRecord,
    Work,
    encoded,
    follow,
    not_found,
    now_ms,
    rejected,
)
from gateway.settings import GatewaySettings
from imagesearch import errors, logs
from imagesearch.naming import COLLECTION_RE

log = logging.getLogger(__name__)

T = TypeVar("T")
CALL_TIMEOUT_S = 30.0
CAS_TRIES = 100  # revision-checked updates retried this often under contention


# Deliveries of a unit past GATEWAY_JOBS_MAX_DELIVER, so that a gateway
# still sees it once more and records it given up (the job then ends).
DELIVER_MARGIN = 3


def shown_url(url: str) -> str:
    """``url`` (one server or several, comma-separated) with any user info
    (``user:password@``, ``token@``) replaced: for messages and logs."""
    return re.sub(r"(?<=//)[^@/,]*@", "***@", url)


def _unavailable(url: str, exc: BaseException, why: str = "") -> errors.ServiceError:
    return errors.ServiceError(
        grpc.StatusCode.UNAVAILABLE,
        f"the job store at {shown_url(url)} (GATEWAY_JOBS_URL) cannot be reached "
        f"({why or type(exc).__name__}); jobs wait until it is back",
    )


def _damaged(job_id: str, exc: Exception) -> errors.ServiceError:
    return errors.ServiceError(
        grpc.StatusCode.DATA_LOSS,
        f"job {job_id!r}: its record in the job store is damaged ({exc}); ListJobs lists it "
        "as FAILED. Start the job again: files already indexed count as duplicates",
    )


def parse_unit(kind: str, data: bytes) -> tuple[str, int]:
    """(job id, chunk number; -1 for a walk) of a unit as ``requeue``
    publishes it; ValueError for anything else."""
    try:
        unit = json.loads(data)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(unit, dict) or not isinstance(unit.get("job"), str):
        raise ValueError("no job named")
    chunk = unit.get("chunk", -1)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or (kind == CHUNK) != (chunk >= 0):
        raise ValueError(f"a {kind} unit with chunk {chunk!r}")
    return unit["job"], chunk


class TlsOnlyClient(NatsClient):
    """A NATS client that, given TLS settings, refuses a server whose INFO
    does not require TLS, before it sends CONNECT and the credentials in
    it: nats-py would otherwise go on in plaintext. Checked at every
    (re)connect."""

    def __init__(self, require_tls: bool) -> None:
        super().__init__()
        self.require_tls = require_tls
        self.refused = ""
        self.refusal: asyncio.Event | None = None  # set on refusal (made on the loop)

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        """The server's greeting at each (re)connect; later INFOs (cluster
        news on a connection already in TLS) are not greetings."""
        if initial_connection and self.require_tls and not info.get("tls_required"):
            self.refused = (
                "the server does not require TLS, and GATEWAY_JOBS_TLS_* or a tls:// URL "
                "asks for it: refused before sending credentials"
            )
            logs.event(log, "jobs.store_refused", logging.ERROR, reason=self.refused)
            if self.refusal is not None:
                self.refusal.set()
            raise nats.errors.Error(self.refused)
        await super()._process_info(info, initial_connection)


def connect_options(settings: GatewaySettings) -> dict[str, Any]:
    """nats.connect's credentials and TLS from GATEWAY_JOBS_CREDS and
    GATEWAY_JOBS_TLS_*."""
    options: dict[str, Any] = {}
    if settings.jobs_creds:
        options["user_credentials"] = settings.jobs_creds
    if settings.jobs_user:
        options["user"] = settings.jobs_user
        options["password"] = settings.jobs_password
    if settings.jobs_tls_ca or settings.jobs_tls_cert:
        context = ssl.create_default_context(cafile=settings.jobs_tls_ca or None)
        if settings.jobs_tls_cert:
            context.load_cert_chain(settings.jobs_tls_cert, settings.jobs_tls_key or None)
        options["tls"] = context
    return options


class NatsJobStore(ChangeStore):
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
        max_deliver: int = 20,
    ) -> None:
        """``max_deliver``: GATEWAY_JOBS_MAX_DELIVER; the queue gives a unit
        out a few times more, for a gateway to record it given up."""
        self.url = url
        self.prefix = prefix
        self._jobs_bucket = f"{prefix}_jobs"
        self._index_bucket = f"{prefix}_index"
        self.max_errors_kept = max_errors_kept
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="nats-jobs", daemon=True
        )
        self._thread.start()
        self._subs: dict[str, Any] = {}
        self._fetching: dict[str, asyncio.Lock] = {}
        self._damaged_seen: set[str] = set()  # damaged records logged once
        options = dict(connect_options or {})
        self._nc = TlsOnlyClient("tls" in options or url.startswith("tls://"))
        try:
            self._call(self._connect(ack_wait_s, replicas, options, max_deliver), timeout=20)
        except errors.ServiceError as exc:
            self._stop_loop()
            if self._nc.refused:
                raise _unavailable(url, exc, self._nc.refused) from None
            raise
        except BaseException:
            self._stop_loop()
            raise
        try:
            self._index_missing()
        except BaseException:
            self.close()
            raise
        logs.event(log, "jobs.store", kind="nats", url=shown_url(url), prefix=prefix)

    @classmethod
    def open(cls, settings: GatewaySettings) -> NatsJobStore:
        return cls(
            settings.jobs_url,
            settings.jobs_prefix,
            settings.max_errors_kept,
            ack_wait_s=settings.jobs_ack_wait_s,
            replicas=settings.jobs_replicas,
            connect_options=connect_options(settings),
            max_deliver=settings.jobs_max_deliver,
        )

    def _subject(self, kind: str) -> str:
        return f"{self.prefix}.work.{kind}"

    async def _connect(
        self, ack_wait_s: float, replicas: int, options: dict[str, Any], max_deliver: int
    ) -> None:
        """Connects (a refused server ends the tries at once), then makes or
        checks the buckets, the stream and its consumers."""
        self._nc.refusal = asyncio.Event()
        connecting = asyncio.ensure_future(
            self._nc.connect(
                self.url,
                name="imagesearch-gateway",
                connect_timeout=5,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                **options,
            )
        )
        refused = asyncio.ensure_future(self._nc.refusal.wait())
        try:
            await asyncio.wait({connecting, refused}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when the caller gives up waiting (cancelled)
            for task in (connecting, refused):
                if not task.done():
                    task.cancel()
        if refused.done() and not refused.cancelled():
            raise ConnectionRefusedError(self._nc.refused)
        connecting.result()
        self._js = js = self._nc.jetstream()
        self._kv = await js.create_key_value(bucket=self._jobs_bucket, history=1, replicas=replicas)
        self._chunks = await js.create_key_value(
            bucket=f"{self.prefix}_chunks", history=1, replicas=replicas
        )
        self._index = await js.create_key_value(
            bucket=self._index_bucket, history=1, replicas=replicas
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
            durable = f"{self.prefix}_{kind}s"
            config = ConsumerConfig(
                durable_name=durable,
                name=durable,
                filter_subject=self._subject(kind),
                ack_wait=ack_wait_s,
                max_deliver=max_deliver + DELIVER_MARGIN,
            )
            # Made, or brought to these settings (an older version's had no bound).
            await js.add_consumer(stream, config=config)
            self._subs[kind] = await js.pull_subscribe(
                self._subject(kind), durable=durable, stream=stream
            )

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT_S) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except errors.ServiceError:
            raise
        except (KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError, InvalidKeyError):
            raise
        except Exception as exc:  # timeouts, connection errors
            future.cancel()
            logs.event(log, "jobs.store_error", logging.WARNING, error=type(exc).__name__)
            raise _unavailable(self.url, exc) from None

    def _stop_loop(self) -> None:
        """Cancels what still runs on the loop (a connect given up on, the
        client's reconnects), lets it end, then stops the loop."""

        async def settle() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(settle(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def close(self) -> None:
        with contextlib.suppress(errors.ServiceError):
            self._call(self._nc.close(), timeout=5)
        self._stop_loop()

    # -- state ---------------------------------------------------------------

    def _read(self, job_id: str) -> tuple[JobRecord, int]:
        """The job and its revision; NOT_FOUND, or DATA_LOSS for a record
        that cannot be loaded."""
        try:
            entry = self._call(self._kv.get(job_id))
        except (KeyNotFoundError, InvalidKeyError):
            raise not_found(job_id) from None
        if entry.value is None:
            raise not_found(job_id)
        try:
            return JobRecord.load(json.loads(entry.value)), int(entry.revision or 0)
        except ValueError as exc:  # JSON, UTF-8 or the record's fields
            raise _damaged(job_id, exc) from None

    def _loaded(self, key: str, value: bytes, created_at_ms: int = 0) -> JobRecord:
        """A listed record, or a FAILED job saying it is damaged (logged once)."""
        try:
            return JobRecord.load(json.loads(value))
        except ValueError as exc:
            if key not in self._damaged_seen and len(self._damaged_seen) < 10_000:
                self._damaged_seen.add(key)
                logs.event(log, "job.damaged", logging.ERROR, job_id=key, error=str(exc)[:200])
            return JobRecord.damaged(
                key,
                str(exc)[:200],
                "it stays in the job store until GATEWAY_MAX_FINISHED_JOBS forgets it",
                created_at_ms,
            )

    # -- the index -----------------------------------------------------------

    async def _keys(self, bucket: str, under: str = "") -> list[str]:
        """The keys of ``bucket`` (those starting ``under``), by their
        subjects as the server lists them: nats-py's ``KeyValue.keys()``
        reads them through a watch, which lists a key that changes meanwhile
        twice, or not at all. Keys go by purging their subject, so none is
        listed gone."""
        head = f"$KV.{bucket}."
        info = await self._js.stream_info(f"KV_{bucket}", subjects_filter=f"{head}{under}>")
        return [subject.removeprefix(head) for subject in info.state.subjects or {}]

    async def _forget_key(self, bucket: str, key: str) -> None:
        await self._js.purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}")

    def _listed(self) -> list[tuple[int, str, str]]:
        """(created ms, job id, collection) of every indexed job."""
        listed = []
        for key in self._call(self._keys(self._index_bucket, "c.")):
            parts = key.split(".")
            if len(parts) == 4 and parts[1].isdigit():
                listed.append((int(parts[1]), parts[2], parts[3]))
        return listed

    def _open_ids(self) -> list[str]:
        return [
            k.removeprefix("open.") for k in self._call(self._keys(self._index_bucket, "open."))
        ]

    def _index_key(self, job: JobRecord) -> str:
        """A damaged or forged record's collection may be anything: ``-``."""
        collection = job.collection if COLLECTION_RE.fullmatch(job.collection) else "-"
        return f"c.{max(job.created_at_ms, 0):013d}.{job.job_id}.{collection}"

    async def _mark_open(self, job_id: str, is_open: bool) -> None:
        if is_open:
            await self._index.put(f"open.{job_id}", b"")
        else:
            await self._forget_key(self._index_bucket, f"open.{job_id}")

    def _index_missing(self) -> None:
        """Indexes the records no gateway indexed (made by an older version,
        or put into the bucket by other means): read once, at start."""
        known = {job_id for _, job_id, _ in self._listed()}
        missing = [k for k in self._call(self._keys(self._jobs_bucket)) if k not in known]
        for job in self._read_many(missing):
            self._call(self._index.put(self._index_key(job), b""))
            if not job.terminal:
                self._call(self._mark_open(job.job_id, True))
        if missing:
            logs.event(log, "jobs.indexed", jobs=len(missing))

    def _read_many(self, job_ids: Sequence[str], created: Sequence[int] = ()) -> list[JobRecord]:
        """The records of ``job_ids`` (one round of concurrent gets), those
        gone left out, damaged ones as FAILED jobs saying so."""

        async def read() -> list[Any]:
            got = await asyncio.gather(*(self._kv.get(k) for k in job_ids), return_exceptions=True)
            for entry in got:
                if isinstance(entry, BaseException) and not isinstance(
                    entry, (KeyNotFoundError, InvalidKeyError)
                ):
                    raise entry
            return got

        jobs = []
        for n, entry in enumerate(self._call(read())):
            if isinstance(entry, BaseException) or entry.value is None:
                continue
            jobs.append(self._loaded(job_ids[n], entry.value, created[n] if created else 0))
        return jobs

    def create(self, job: JobRecord) -> JobRecord:
        job.version, job.updated_at_ms = 1, now_ms()
        # The open mark, then the listing, then the record: expiry, which
        # passes over open jobs, never sees this one listed and unmarked.
        self._call(self._mark_open(job.job_id, True))
        self._call(self._index.put(self._index_key(job), b""))
        self._call(self._kv.create(job.job_id, encoded(job)))
        self.requeue(job.job_id, walk=True, chunks=())
        return job

    def get(self, job_id: str) -> JobRecord:
        return self._read(job_id)[0]

    def page(
        self, collection: str, size: int, after: tuple[int, str] | None
    ) -> tuple[list[JobRecord], bool]:
        """Newest first from the index's names; only the page's records are read."""
        listed = sorted(
            (
                (created, job_id)
                for created, job_id, of in self._listed()
                if not collection or of == collection
            ),
            reverse=True,
        )
        if after is not None:
            listed = [c for c in listed if c < after]
        shown = listed[:size]
        jobs = self._read_many([j for _, j in shown], [c for c, _ in shown])
        return jobs, len(listed) > size

    def change(self, job_id: str, change: Change) -> JobRecord | None:
        """Applies ``change(job)`` (None: leave it) with a revision-checked
        update, read again and retried when another gateway wrote first."""
        for _ in range(CAS_TRIES):
            job, revision = self._read(job_id)
            changes = change(job)
            if changes is None:
                return None
            was_open = not job.terminal
            for key, value in changes.items():
                setattr(job, key, value)
            job.updated_at_ms = now_ms()
            job.version += 1
            try:
                self._call(self._kv.update(job_id, encoded(job), last=revision))
            except KeyWrongLastSequenceError:
                time.sleep(0.005)
                continue
            if was_open == job.terminal:  # ended, or resumed: the index follows
                self._call(self._mark_open(job_id, not job.terminal))
            return job
        raise errors.ServiceError(
            grpc.StatusCode.ABORTED, f"job {job_id} changed too often to update; try again"
        )

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

    def wake(self, workers: int) -> None:
        """A claim's fetch ends within its timeout (a second) by itself."""

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

        def reject(reason: str, detail: str = "") -> None:
            self._call(msg.term())
            where = {"subject": msg.subject, "sequence": msg.metadata.sequence.stream}
            rejected(reason, **where, delivered=msg.metadata.num_delivered, detail=detail)

        try:
            job_id, chunk = parse_unit(kind, msg.data)
        except ValueError as exc:
            reject("unparseable", str(exc))
            return None
        return Work(
            kind,
            job_id,
            chunk,
            delivered=msg.metadata.num_delivered,
            ack=lambda: self._call(msg.ack()),
            touch=lambda: self._call(msg.in_progress()),
            reject=reject,
            retry=lambda delay: self._call(msg.nak(delay=delay)),
        )

    def requeue(self, job_id: str, walk: bool, chunks: Iterable[int]) -> None:
        async def publish() -> None:
            if walk:
                await self._js.publish(self._subject(WALK), json.dumps({"job": job_id}).encode())
            for number in chunks:
                unit = json.dumps({"job": job_id, "chunk": number}).encode()
                await self._js.publish(self._subject(CHUNK), unit)

        self._call(publish(), timeout=120)

    # -- reading -------------------------------------------------------------

    def watch(
        self, job_id: str, is_active: Callable[[], bool], interval: float
    ) -> Iterator[JobRecord]:
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

    def unfinished(self) -> list[JobRecord]:
        """The jobs the index holds open; an open mark left by a gateway that
        stopped between ending a job and clearing it is cleared here."""
        jobs = self._read_many(self._open_ids())
        for job in jobs:
            if job.terminal:
                self._call(self._mark_open(job.job_id, False))
        return [j for j in jobs if not j.terminal]

    def open_jobs(self) -> int:
        return len(self._open_ids())

    def expire(self, older_than_ms: int, keep_finished: int) -> int:
        """Forgets finished jobs: beyond ``keep_finished`` the oldest (by
        creation, from the index's names alone), then, oldest first, those
        last changed before ``older_than_ms``, up to the first that was not
        (jobs end in about the order they start): their record, index keys
        and chunks' files (units still queued are dropped when delivered:
        their job is gone). Reads one record when none is due."""
        still_open = set(self._open_ids())
        finished = sorted(x for x in self._listed() if x[1] not in still_open)
        extra = max(0, len(finished) - keep_finished)
        gone = finished[:extra]
        for entry in finished[extra:]:
            jobs = self._read_many([entry[1]])
            if jobs and jobs[0].unreadable:  # no age to go by: kept until the cap
                continue
            if jobs and jobs[0].terminal and jobs[0].updated_at_ms >= older_than_ms:
                break
            if jobs and not jobs[0].terminal:  # an open mark was lost: leave it be
                self._call(self._mark_open(entry[1], True))
                continue
            gone.append(entry)  # old, or its record is gone already
        for created, job_id, collection in gone:
            self._forget(job_id, f"c.{created:013d}.{job_id}.{collection}")
        return len(gone)

    def _forget(self, job_id: str, index_key: str) -> None:
        async def forget() -> None:
            await self._forget_key(self._jobs_bucket, job_id)
            chunks = f"{self.prefix}_chunks"
            await self._js.purge_stream(f"KV_{chunks}", subject=f"$KV.{chunks}.{job_id}.>")
            await self._forget_key(self._index_bucket, f"open.{job_id}")
            await self._forget_key(self._index_bucket, index_key)

        self._call(forget())
