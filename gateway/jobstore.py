"""Where folder jobs live: their state, their work, their progress.

A job is a state record plus units of work: one walk (the folder listed in
sorted order, gateway/walk.py, resumable after the last file it published)
and chunks of at most ``chunk_size`` files, numbered in walk order, which the
walk publishes as it goes. Gateways claim units from the store's queue
(``claim``), so a job's chunks run on every gateway that shares the store.

- ``create`` saves a new job and queues its walk; ``put_chunk`` keeps a
  chunk's files and queues it; ``requeue`` queues again what a stopped job
  has left (ResumeJob);
- ``record`` adds one chunk's results, once: a chunk recorded again (a
  queue delivers at least once) changes nothing; the record of the last
  chunk of a walked job ends it SUCCEEDED;
- ``change``/``update`` change a job's state, optionally only when a
  condition holds (compare and set); every change bumps ``version``;
- ``watch`` yields a job at every change; ``get``, ``page``, ``expire`` and
  ``unfinished`` read and prune.

Two stores: ``LocalJobStore`` (gateway/localjobs.py, files under the data
folder and an in-process queue: the embedded default, one gateway) and
``NatsJobStore`` (gateway/natsjobs.py, NATS JetStream: any number).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Protocol, get_args, get_origin, get_type_hints

import grpc
from prometheus_client import Counter

from gateway.orchestrator import Outcome, Result
from imagesearch import errors, logs
from imagesearch.client import FileError, Job, JobState

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
# A job's record (its JSON) stays under RECORD_MAX_BYTES whatever its errors
# (a NATS message is 1 MiB at most, and every change rewrites it): the file
# errors kept take ERRORS_MAX_BYTES at most, each path and reason cut to
# ERROR_TEXT_MAX characters; ``failed`` counts them all.
RECORD_MAX_BYTES = 64 * 1024
ERRORS_MAX_BYTES = 32 * 1024
ERROR_TEXT_MAX = 600
WALK, CHUNK = "walk", "chunk"


# Saved records keep the names that gateways before the chunk renames read
# (CHANGELOG.md), so that gateways of both versions can share a NATS job store
# during a rolling upgrade; ``JobRecord.load`` reads either.
STORED_AS = {
    "chunk_size": "batch_size",
    "chunk_cursor": "batch_cursor",
    "chunks_ahead": "batches_ahead",
    "walk_complete": "walk_done",
}
FIELD_OF = {saved: name for name, saved in STORED_AS.items()}


@dataclass
class JobRecord:
    job_id: str
    collection: str
    folder: str
    recursive: bool
    state: str = PENDING
    total: int = 0  # files the walk has found so far
    done: int = 0
    indexed: int = 0
    duplicates: int = 0
    failed: int = 0
    errors: list[dict[str, object]] = field(default_factory=list)
    message: str = ""
    chunk_size: int = 32  # files per chunk
    chunk_cursor: int = 0  # every chunk below this number is recorded
    chunks_ahead: list[int] = field(default_factory=list)  # recorded chunks above it
    created_at_ms: int = 0
    updated_at_ms: int = 0
    version: int = 0  # bumps on every change, for watchers
    model: str = ""  # of a collection the job creates (StartIndexJob's model)
    walk_complete: bool = False  # the walk has ended: total is final
    walked_chunks: int = 0  # chunks the walk has published
    walk_last: str = ""  # the last file it published (a new walk starts after it)
    unreadable: bool = False  # stands for a record that cannot be loaded (kept until the cap)

    @classmethod
    def load(cls, data: object) -> JobRecord:
        """A state as saved, by this version or an older one (which listed the
        whole folder before the job began, and knew no walk). ValueError for
        anything else: not an object, a field missing or of the wrong type,
        counts that cannot be."""
        if not isinstance(data, dict):
            raise ValueError(f"a job's record is a JSON object, not {type(data).__name__}")
        data = {FIELD_OF.get(k, k): v for k, v in data.items()}
        known = {f.name for f in fields(cls)}
        hints = get_type_hints(cls)
        for name, value in data.items():
            if name in known and not _of_type(value, hints[name]):
                raise ValueError(f"field {name} is {type(value).__name__}, not {hints[name]}")
        try:
            job = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:  # a field without a default is missing
            raise ValueError(str(exc)) from None
        if job.chunk_size < 1 or min(job.total, job.done, job.chunk_cursor) < 0:
            raise ValueError("chunk_size, total, done or chunk_cursor out of range")
        if job.state not in {PENDING, RUNNING, *TERMINAL}:
            raise ValueError(f"state {job.state!r} is unknown")
        if not all({"path", "reason", "code"} <= e.keys() for e in job.errors):
            raise ValueError("a file error lacks its path, reason or code")
        if "walk_complete" not in data:
            job.walk_complete = True
            job.walked_chunks = (job.total + job.chunk_size - 1) // job.chunk_size
        return job

    @classmethod
    def damaged(cls, job_id: str, why: str, kept: str, created_at_ms: int = 0) -> JobRecord:
        """What a record that cannot be loaded is listed as: a FAILED job that
        says so (never a stopped listing, never silently left out)."""
        return cls(
            job_id=job_id,
            collection="",
            folder="",
            recursive=False,
            state=FAILED,
            message=f"the job's record is damaged ({why}); {kept}. Start the job again: "
            "files already indexed count as duplicates",
            created_at_ms=created_at_ms,
            updated_at_ms=created_at_ms,
            unreadable=True,
        )

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def view(self, with_errors: bool = True) -> Job:
        """The job as clients see it (the typed client's ``Job``, which the
        gateway sends as ``to_proto()``): ``errors_omitted`` counts the failed
        files not listed."""
        listed = self.errors if with_errors else []
        return Job(
            job_id=self.job_id,
            state=JobState[self.state.upper()],
            collection=self.collection,
            folder=self.folder,
            recursive=self.recursive,
            total=self.total,
            done=self.done,
            indexed=self.indexed,
            duplicates=self.duplicates,
            failed=self.failed,
            message=self.message,
            errors=tuple(
                FileError(str(e["path"]), str(e["reason"]), code_of(e["code"])) for e in listed
            ),
            created_at_ms=self.created_at_ms,
            updated_at_ms=self.updated_at_ms,
            model=self.model,
            walk_complete=self.walk_complete,
            errors_omitted=max(0, self.failed - len(self.errors)),
        )

    @property
    def chunks(self) -> int:
        return self.walked_chunks

    def recorded(self, chunk: int) -> bool:
        return chunk < self.chunk_cursor or chunk in self.chunks_ahead

    def left(self) -> list[int]:
        """The chunks published and not recorded."""
        return [n for n in range(self.chunk_cursor, self.walked_chunks) if not self.recorded(n)]

    def complete(self) -> bool:
        """Walked to the end, and every chunk recorded."""
        return (
            self.walk_complete and self.chunk_cursor + len(self.chunks_ahead) >= self.walked_chunks
        )


def code_of(stored: object) -> grpc.StatusCode:
    """A job error's code as saved (a status name; numbers in older files)."""
    text = str(stored)
    if text.isdigit():
        return errors.code_from_number(int(text))
    return grpc.StatusCode[text]


def _of_type(value: object, hint: object) -> bool:
    """Whether a loaded JSON value fits a field's type (int, str, bool, a list)."""
    origin = get_origin(hint) or hint
    if origin is list:
        (item,) = get_args(hint) or (object,)
        inner = get_origin(item) or item
        return isinstance(value, list) and all(isinstance(v, inner) for v in value)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin) if isinstance(origin, type) else True


def _nothing() -> None:
    return None


# Units a store refused to work on, by why: a message that is no unit, a
# unit naming no job of the form StartIndexJob gives, a job whose record
# cannot be read, a folder or file outside GATEWAY_ALLOWED_ROOTS.
UNITS_REJECTED = Counter(
    "imagesearch_gateway_job_units_rejected_total",
    "Job walks and chunks refused (terminated, never given out again), by reason",
    ["reason"],
)


def rejected(reason: str, **where: object) -> None:
    """Logs and counts a unit refused for ``reason`` (one of a few words: a
    label; ``where`` says the rest), once: it is terminated."""
    UNITS_REJECTED.labels(reason).inc()
    logs.event(log, "job.unit_rejected", logging.WARNING, reason=reason, **where)


@dataclass
class Work:
    """A unit a gateway claimed: a job's walk, or one chunk of it. ``ack``
    says it is done (never given out again); ``touch`` says its gateway still
    works on it (a shared queue gives out again units not touched for
    GATEWAY_JOBS_ACK_WAIT_S); ``delivered`` counts how often it was given out."""

    kind: str
    job_id: str
    chunk: int = -1
    delivered: int = 1
    ack: Callable[[], None] = _nothing
    touch: Callable[[], None] = _nothing
    # Never to be given out again: the unit is poison (counted by reason).
    reject: Callable[[str], None] = lambda _reason: None
    # Give it out again after ``delay`` seconds (a failure worth another try).
    retry: Callable[[float], None] = lambda _delay: None


def advance(cursor: int, ahead: list[int], chunk: int) -> tuple[int, list[int]]:
    """Marks ``chunk`` done: (new cursor, done chunks above it). Every chunk
    below the cursor is done, so a resumed job skips exactly those and the
    ones ahead, whatever order the chunks finished in."""
    done = {*ahead, chunk}
    while cursor in done:
        done.discard(cursor)
        cursor += 1
    return cursor, sorted(done)


def ended_if_complete(job: JobRecord) -> dict[str, object]:
    """The changes that end ``job`` SUCCEEDED when it is complete (and not
    ended already): apply after the change that may complete it."""
    if job.complete() and not job.terminal:
        return {"state": SUCCEEDED, "message": ""}
    return {}


def _cut(text: str) -> str:
    if len(text) <= ERROR_TEXT_MAX:
        return text
    half = ERROR_TEXT_MAX // 2 - 2
    return f"{text[:half]}...{text[-half:]}"


def _error_bytes(error: dict[str, object]) -> int:
    return len(json.dumps(error)) + 2


def count_results(
    job: JobRecord, chunk: int, results: Sequence[Result], max_errors: int
) -> dict[str, object]:
    """The changes that add one chunk's results to ``job``: counts, the first
    errors (``max_errors`` and ERRORS_MAX_BYTES at most), the chunk marked
    recorded, and SUCCEEDED when it was the last one."""
    errs = list(job.errors)
    room = ERRORS_MAX_BYTES - sum(_error_bytes(e) for e in errs)
    counts = {Outcome.INDEXED: 0, Outcome.DUPLICATE: 0, Outcome.FAILED: 0}
    for r in results:
        counts[r.outcome] += 1
        if r.outcome is Outcome.FAILED and len(errs) < max_errors:
            error: dict[str, object] = {
                "path": _cut(r.name),
                "reason": _cut(r.reason),
                "code": r.code.name,
            }
            room -= _error_bytes(error)
            if room >= 0:
                errs.append(error)
    cursor, ahead = advance(job.chunk_cursor, job.chunks_ahead, chunk)
    changes: dict[str, object] = {
        "done": job.done + len(results),
        "indexed": job.indexed + counts[Outcome.INDEXED],
        "duplicates": job.duplicates + counts[Outcome.DUPLICATE],
        "failed": job.failed + counts[Outcome.FAILED],
        "errors": errs,
        "chunk_cursor": cursor,
        "chunks_ahead": ahead,
    }
    after = replace(job, chunk_cursor=cursor, chunks_ahead=ahead)
    return {**changes, **ended_if_complete(after)}


def encoded(job: JobRecord) -> bytes:
    """The job's record as saved, under RECORD_MAX_BYTES: should its paths
    be so long that it is not, fewer of its errors are kept."""
    data = json.dumps(stored(job)).encode()
    while len(data) > RECORD_MAX_BYTES and job.errors:
        job.errors = job.errors[: len(job.errors) // 2]
        data = json.dumps(stored(job)).encode()
    return data


def stored(job: JobRecord) -> dict[str, object]:
    """The record's fields under their saved names (STORED_AS)."""
    return {STORED_AS.get(k, k): v for k, v in asdict(job).items()}


def walked(job: JobRecord, files: int, last: str) -> dict[str, object]:
    """The changes for one more chunk of ``files`` published, ending at ``last``."""
    return {"total": job.total + files, "walked_chunks": job.walked_chunks + 1, "walk_last": last}


def walk_ended(job: JobRecord) -> dict[str, object]:
    """The changes for a walk that has ended (SUCCEEDED if every chunk is in)."""
    return {"walk_complete": True, **ended_if_complete(replace(job, walk_complete=True))}


def follow(
    get: Callable[[], JobRecord],
    is_active: Callable[[], bool],
    interval: float,
    until_changed: Callable[[int], None],
) -> Iterator[JobRecord]:
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


def page_token(job: JobRecord) -> str:
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


def newest_first(
    jobs: Iterable[JobRecord], collection: str, size: int, after: tuple[int, str] | None
) -> tuple[list[JobRecord], bool]:
    """Up to ``size`` of ``jobs`` (of ``collection``, or all), newest first,
    older than ``after``; and whether more follow."""
    ordered = sorted(
        (j for j in jobs if not collection or j.collection == collection),
        key=lambda j: (j.created_at_ms, j.job_id),
        reverse=True,
    )
    if after is not None:
        ordered = [j for j in ordered if (j.created_at_ms, j.job_id) < after]
    return ordered[:size], len(ordered) > size


def to_forget(jobs: Iterable[JobRecord], older_than_ms: int, keep_finished: int) -> list[JobRecord]:
    """The finished jobs last changed before ``older_than_ms``, and the least
    recently changed of the rest beyond ``keep_finished``."""
    finished = sorted((j for j in jobs if j.terminal), key=lambda j: (j.updated_at_ms, j.job_id))
    extra = max(0, len(finished) - keep_finished)
    return [j for n, j in enumerate(finished) if n < extra or j.updated_at_ms < older_than_ms]


def now_ms() -> int:
    return int(time.time() * 1000)


def not_found(job_id: str) -> errors.ServiceError:
    return errors.not_found(f"job {job_id!r} does not exist (ListJobs shows the jobs)")


# The ids StartIndexJob gives: 12 lower-case hex digits (new_job_id).
JOB_ID = re.compile(r"[0-9a-f]{12}")


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


def check_job_id(job_id: str) -> str:
    """``job_id`` if it has the form StartIndexJob gives, else NOT_FOUND naming
    it: checked before any store sees it (a NATS key may not be empty or
    hold ``>``, a file name may not hold ``/``)."""
    if not JOB_ID.fullmatch(job_id):
        shown = job_id if len(job_id) <= 64 else job_id[:64] + "..."
        raise errors.not_found(
            f"job {shown!r} does not exist: a job id is 12 hex digits, as StartIndexJob "
            "gives (ListJobs shows the jobs)"
        )
    return job_id


Change = Callable[[JobRecord], "dict[str, object] | None"]


class JobStore(Protocol):
    # Whether other gateways use the same jobs (and queue).
    shared: bool

    def create(self, job: JobRecord) -> JobRecord: ...

    def get(self, job_id: str) -> JobRecord: ...

    def page(
        self, collection: str, size: int, after: tuple[int, str] | None
    ) -> tuple[list[JobRecord], bool]: ...

    def change(self, job_id: str, change: Change) -> JobRecord | None: ...

    def update(
        self, job_id: str, when: Callable[[JobRecord], bool] | None = None, **changes: object
    ) -> JobRecord | None: ...

    def put_chunk(self, job_id: str, number: int, files: list[str]) -> None: ...

    def chunk_files(self, job_id: str, number: int) -> list[str]: ...

    def claim(self, kind: str, timeout: float) -> Work | None: ...

    def wake(self, workers: int) -> None:
        """Ends the waits of up to ``workers`` ``claim`` calls now (closing)."""

    def requeue(self, job_id: str, walk: bool, chunks: Iterable[int]) -> None: ...

    def record(self, job_id: str, chunk: int, results: Sequence[Result]) -> bool: ...

    def watch(
        self, job_id: str, is_active: Callable[[], bool], interval: float
    ) -> Iterator[JobRecord]: ...

    def unfinished(self) -> list[JobRecord]: ...

    def open_jobs(self) -> int: ...

    def expire(self, older_than_ms: int, keep_finished: int) -> int: ...

    def close(self) -> None: ...


def conditional(when: Callable[[JobRecord], bool] | None, changes: dict[str, object]) -> Change:
    """``changes`` when ``when`` holds for the job (or always), else none."""
    return lambda job: changes if when is None or when(job) else None


class ChangeStore:
    """What both stores build on their own ``change``: conditional updates,
    and a chunk's results counted once."""

    max_errors_kept: int

    def change(self, job_id: str, change: Change) -> JobRecord | None:
        raise NotImplementedError

    def update(
        self, job_id: str, when: Callable[[JobRecord], bool] | None = None, **changes: object
    ) -> JobRecord | None:
        return self.change(job_id, conditional(when, changes))

    def record(self, job_id: str, chunk: int, results: Sequence[Result]) -> bool:
        """Adds one chunk's results to the job's counts (and its first
        errors); False, changing nothing, for a chunk already recorded."""

        def counted(job: JobRecord) -> dict[str, object] | None:
            if job.recorded(chunk):
                return None
            return count_results(job, chunk, results, self.max_errors_kept)

        return self.change(job_id, counted) is not None
