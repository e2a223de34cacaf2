"""The work a chaos run keeps going while parts fail: photos that arrive as
folder jobs and as client streams, and clients that search all the time (gRPC
by bytes and by id, and the web face). Every search is recorded."""

from __future__ import annotations

import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from imagesearch.client import Client, ImageSearchError, Job
from imagesearch.ids import image_id

COLLECTION = "chaos"
JOB_PHOTOS = 100  # photos in the folder of one job
STREAM_PHOTOS = 25  # photos in one client stream
SEARCH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Photo:
    path: Path
    image_id: int


def make_photos(folder: Path, sources: Sequence[Path], n: int) -> list[Path]:
    """N distinct 320x240 JPEGs from ``sources``: each a different crop and
    mirror of one source (cached: a folder with ``.complete`` is reused). The
    first half are laid out in job folders, the rest in stream folders."""
    if (folder / ".complete").exists():
        return sorted(folder.rglob("*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    jobs = n // 2
    for i in range(n):
        src = sources[i % len(sources)]
        k = i // len(sources)
        with Image.open(src) as raw:
            img = raw.convert("RGB")
        w, h = img.size
        dx, dy = (k % 6) * w // 40, (k // 6 % 6) * h // 40  # a 6x6 grid of crops
        img = img.crop((dx, dy, dx + w * 3 // 4, dy + h * 3 // 4))
        if k // 36 % 2:
            img = ImageOps.mirror(img)
        if k // 72 % 2:
            img = ImageOps.flip(img)
        group = f"job-{i // JOB_PHOTOS:03d}" if i < jobs else f"stream-{i // STREAM_PHOTOS:03d}"
        path = folder / group / f"p{i:05d}.jpg"
        path.parent.mkdir(exist_ok=True)
        img.resize((320, 240)).save(path, quality=85)
        paths.append(path)
    (folder / ".complete").touch()
    return sorted(paths)


@dataclass
class Unit:
    kind: str  # "job" or "stream"
    photos: list[Photo]
    folder: Path
    job_id: str = ""
    done: bool = False


def plan(paths: Sequence[Path]) -> list[Unit]:
    """The photos by folder, job folders and stream batches interleaved."""
    folders: dict[Path, list[Photo]] = {}
    for path in paths:
        folders.setdefault(path.parent, []).append(Photo(path, image_id(path.read_bytes())))
    jobs = [Unit("job", p, f) for f, p in folders.items() if f.name.startswith("job-")]
    streams = [Unit("stream", p, f) for f, p in folders.items() if f.name.startswith("stream-")]
    units: list[Unit] = []
    ratio = max(1, len(streams) // max(1, len(jobs)))
    while jobs or streams:
        if jobs:
            units.append(jobs.pop(0))
        for _ in range(ratio):
            if streams:
                units.append(streams.pop(0))
    return units


@dataclass
class SearchRecord:
    client: str
    started: float  # monotonic
    seconds: float
    ok: bool
    error: str = ""


@dataclass
class Stored:
    """Photos known stored (a stream answered, a job SUCCEEDED): what
    searchers may look for."""

    photos: list[Photo] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, photos: Sequence[Photo]) -> None:
        with self.lock:
            self.photos.extend(photos)

    def pick(self, rng: random.Random) -> Photo | None:
        with self.lock:
            return rng.choice(self.photos) if self.photos else None


class Ingest:
    """Starts the units at a pace spread over ``spread_s`` (a folder job, or
    a stream retried until it is answered), and follows the jobs to their end."""

    def __init__(self, target: str, units: list[Unit], stored: Stored, spread_s: float) -> None:
        self.client = Client(target, timeout=120, retries=5)
        self.units = units
        self.stored = stored
        self.spread_s = spread_s
        self.stop = threading.Event()
        self.stream_retries = 0
        self.start_retries = 0
        self.lock = threading.Lock()
        self.started_at = 0.0
        self.threads: list[threading.Thread] = []
        self.pending = list(enumerate(units))  # (its place in the pace, unit)
        self.final: dict[str, Job] = {}  # job id -> its end
        self.failed: dict[str, Job] = {}  # job id -> how it ended when it did not succeed
        self.resumes = 0

    def run(self) -> None:
        self.started_at = time.monotonic()
        for n in range(2):
            self.threads.append(threading.Thread(target=self._work, name=f"ingest-{n}"))
        self.threads.append(threading.Thread(target=self._follow, name="jobs"))
        for t in self.threads:
            t.start()

    def _due(self, index: int) -> float:
        return self.started_at + self.spread_s * index / max(1, len(self.units))

    def _next(self) -> tuple[int, Unit] | None:
        with self.lock:
            if not self.pending:
                return None
            return self.pending.pop(0)

    def _work(self) -> None:
        while not self.stop.is_set():
            got = self._next()
            if got is None:
                return
            index, unit = got
            self.stop.wait(max(0.0, self._due(index) - time.monotonic()))
            if unit.kind == "job":
                self._start_job(unit)
            else:
                self._stream(unit)

    def _start_job(self, unit: Unit) -> None:
        while not self.stop.is_set():
            try:
                unit.job_id = self.client.start_job(
                    str(unit.folder), collection=COLLECTION, timeout=30
                ).job_id
                return
            except ImageSearchError:
                self.start_retries += 1
                self.stop.wait(1.0)

    def _stream(self, unit: Unit) -> None:
        images = [
            (f"streams/{p.path.parent.name}/{p.path.name}", p.path.read_bytes())
            for p in unit.photos
        ]
        while not self.stop.is_set():
            try:
                report = self.client.index_images(images, collection=COLLECTION, timeout=120)
            except ImageSearchError:
                self.stream_retries += 1
                self.stop.wait(1.0)
                continue
            if report.failed:
                self.stream_retries += 1
                self.stop.wait(1.0)
                continue
            unit.done = True
            self.stored.add(unit.photos)
            return

    def _follow(self) -> None:
        """Polls the started jobs until each ends."""
        while not self.stop.is_set():
            open_jobs = [u for u in self.units if u.kind == "job" and u.job_id and not u.done]
            for unit in open_jobs:
                try:
                    job = self.client.get_job(unit.job_id, timeout=10)
                except ImageSearchError:
                    continue
                if not job.state.terminal:
                    continue
                self.final[unit.job_id] = job
                if job.state.name == "SUCCEEDED":
                    unit.done = True
                    self.stored.add(unit.photos)
                    continue
                # A job that needed a human: the run resumes it, and counts it.
                self.failed[unit.job_id] = job
                try:
                    self.client.resume_job(unit.job_id, timeout=30)
                    self.resumes += 1
                except ImageSearchError:
                    pass
            if self.finished():
                return
            self.stop.wait(1.0)

    def finished(self) -> bool:
        return all(u.done for u in self.units)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return self.finished()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        self.client.close()


class Searchers:
    """Four clients that search all the time: two by bytes and one by id
    over gRPC, one by upload through the web face."""

    def __init__(
        self, target: str, web_url: str, stored: Stored, seed: int, pause_s: float
    ) -> None:
        self.client = Client(target, timeout=SEARCH_TIMEOUT_S, retries=3)
        self.web_url = web_url
        self.stored = stored
        self.pause_s = pause_s
        self.records: list[SearchRecord] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        kinds = ("grpc-bytes-1", "grpc-bytes-2", "grpc-id", "web")
        self.threads = [
            threading.Thread(target=self._loop, args=(k, random.Random(seed + n)), name=k)
            for n, k in enumerate(kinds)
        ]

    def run(self) -> None:
        for t in self.threads:
            t.start()

    def _loop(self, kind: str, rng: random.Random) -> None:
        while not self.stop.is_set():
            photo = self.stored.pick(rng)
            if photo is None:
                self.stop.wait(0.5)
                continue
            started = time.monotonic()
            error = ""
            try:
                self._search(kind, photo)
            except Exception as exc:  # every failure is a figure
                error = _describe(exc)
            record = SearchRecord(kind, started, time.monotonic() - started, not error, error)
            with self.lock:
                self.records.append(record)
            self.stop.wait(self.pause_s)

    def _search(self, kind: str, photo: Photo) -> None:
        if kind == "grpc-id":
            hits = self.client.search(image_id=photo.image_id, collection=COLLECTION, top_k=5)
        elif kind == "web":
            self._web(photo)
            return
        else:
            hits = self.client.search(image=photo.path.read_bytes(), collection=COLLECTION, top_k=5)
        if not hits:
            raise LookupError("no hits")

    def _web(self, photo: Photo) -> None:
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                f'filename="q.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
            ).encode()
            + photo.path.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            f"{self.web_url}/v1/collections/{COLLECTION}/search",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=SEARCH_TIMEOUT_S) as reply:
            if reply.status != 200 or b'"hits":[{' not in reply.read():
                raise LookupError(f"HTTP {reply.status} without hits")

    def snapshot(self) -> list[SearchRecord]:
        with self.lock:
            return list(self.records)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(SEARCH_TIMEOUT_S + 5)
        self.client.close()


def _describe(exc: Exception) -> str:
    if isinstance(exc, ImageSearchError):
        return f"{exc.code.name}: {exc.message[:120]}"
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    return f"{type(exc).__name__}: {str(exc)[:120]}"
