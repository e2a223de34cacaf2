"""Cross-request dynamic batching.

Every Embed call hands its images to ``Batcher.submit``. Images are decoded in
a thread pool; decoded ones join one queue; a single model thread takes up to
``max_batch`` of them and runs the model, so images of concurrent calls share
batches while the next batch is being decoded. A batch waits ``max_wait`` for
more images, or longer (up to ``busy_wait``) while accepted images are still
being decoded: those are certain to come, and one full batch is cheaper than
several small ones. A compiled model runs a few batch sizes and pads a batch
up to the next (``sizes``); a batch that would be mostly padding is cut to
the size below, and the rest go first into the next batch (12 images run
as 8, then 4 with whatever has come, instead of as 32: at batch 8 an int8
ResNet50 spends no more per image than at 32). The number of images in
flight is bounded: past ``queue_size`` a call is refused with
RESOURCE_EXHAUSTED instead of queueing without limit. Images of a call that is canceled, or whose deadline passes,
are dropped wherever they wait (``Batcher.cancel``): not decoded if they
are still queued for decoding, not run through the model if they wait for
a batch.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from embedder_service.decode import Decoded, DecodeError, Decoder
from imagesearch import errors, logs

log = logging.getLogger(__name__)

# A batch that fills at least this share of the size it is padded to runs
# padded; a smaller one is cut to the size below.
FULL_ENOUGH = 0.75

BATCH_SIZE = Histogram(
    "imagesearch_embedder_batch_size",
    "Images per model batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
QUEUE_DEPTH = Gauge("imagesearch_embedder_queue_depth", "Images accepted and not yet embedded")
MODEL_SECONDS = Histogram("imagesearch_embedder_model_seconds", "Model time per batch in seconds")
CANCELED = Counter(
    "imagesearch_embedder_images_canceled_total",
    "Images dropped before the model because their call was canceled or timed out",
)


@dataclass(frozen=True)
class Result:
    vector: np.ndarray | None  # (dim,) float32 on success
    width: int = 0
    height: int = 0
    error: DecodeError | None = None
    thumbnail: bytes = b""
    rotated: tuple[np.ndarray, ...] = ()  # with rotations: 90, 180, 270 degrees
    text: np.ndarray | None = None  # (text_dim,) where the model has a text side


# What a model call gives: the vectors, or the vectors and their text vectors.
Embedded = np.ndarray | tuple[np.ndarray, np.ndarray | None]


def _resolve(fut: Future[Result], result: Result) -> None:
    """Sets a result unless the caller has canceled meanwhile."""
    with contextlib.suppress(InvalidStateError):
        fut.set_result(result)


@dataclass
class _Item:
    decoded: Decoded
    future: Future[Result]
    rotations: bool = False
    text: str = ""  # composed with the image, for a composing model

    @property
    def views(self) -> int:
        """Rows this image takes in a model batch."""
        return 4 if self.rotations else 1

    def pixels(self) -> list[np.ndarray]:
        p = self.decoded.pixels
        # Turning the center crop is turning the image, then cropping: the
        # crop is square and centred, and resizing commutes with turning.
        return [p, *(np.rot90(p, k) for k in (1, 2, 3))] if self.rotations else [p]


class Batcher:
    def __init__(
        self,
        embed: Callable[[np.ndarray, Sequence[str]], Embedded],
        decoder: Decoder,
        *,
        max_batch: int,
        max_wait_s: float,
        queue_size: int,
        decode_workers: int,
        sizes: Callable[[], Sequence[int]] = tuple,
    ) -> None:
        """``embed``: pixels and texts -> the vectors, or (vectors, text
        vectors or None) from a runner with a text side. ``sizes``: the batch
        sizes the model pads a batch up to, ascending (none: it runs any size
        as it is)."""
        self._embed = embed
        self._sizes = sizes
        self._decoder = decoder
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self._ready: queue.Queue[_Item | None] = queue.Queue()
        self._pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="decode")
        self._in_flight = 0
        self._decoding = 0  # accepted, not yet decoded
        self.busy_wait_s = max(max_wait_s, 0.1)
        self._lock = threading.Lock()
        self._closed = False
        self.embedded = 0  # images run through the model
        self.canceled = 0  # images dropped before the model
        # Taken from the queue and not run yet: too big for the last batch, or
        # cut from it (then marked running already), with that mark.
        self._back: deque[tuple[_Item, bool]] = deque()
        self._thread = threading.Thread(target=self._run, name="model", daemon=True)
        self._thread.start()

    def submit(
        self,
        images: Sequence[tuple[str, bytes]],
        thumbnail_px: int = 0,
        rotations: bool = False,
        texts: Sequence[str] = (),
    ) -> list[Future[Result]]:
        """Queues images; each future resolves to a vector or a per-image error
        (and a JPEG thumbnail with ``thumbnail_px``; the vectors of the image
        turned by 90, 180 and 270 degrees with ``rotations``). ``texts``: one
        per image ('' for none), composed with it by a composing model."""
        with self._lock:
            if self._closed:
                raise errors.unavailable("the embedder is shutting down; retry on another replica")
            if self._in_flight + len(images) > self.queue_size:
                raise errors.resource_exhausted(
                    f"embedder queue is full ({self._in_flight} images waiting, limit "
                    f"{self.queue_size}, EMBEDDER_QUEUE_SIZE); retry later or add replicas"
                )
            self._in_flight += len(images)
            self._decoding += len(images)
            QUEUE_DEPTH.set(self._in_flight)
        futures: list[Future[Result]] = []
        for i, (name, data) in enumerate(images):
            fut: Future[Result] = Future()
            fut.add_done_callback(self._release)
            text = texts[i] if texts else ""
            self._pool.submit(self._decode, name, data, fut, thumbnail_px, rotations, text)
            futures.append(fut)
        return futures

    def cancel(self, futures: Sequence[Future[Result]]) -> int:
        """Drops the images of ``futures`` that are not embedded yet (their
        caller has gone); returns how many were dropped."""
        dropped = sum(fut.cancel() for fut in futures)
        if dropped:
            with self._lock:
                self.canceled += dropped
            CANCELED.inc(dropped)
        return dropped

    def _release(self, _fut: Future[Result]) -> None:
        with self._lock:
            self._in_flight -= 1
            QUEUE_DEPTH.set(self._in_flight)

    def _decode(
        self,
        name: str,
        data: bytes,
        fut: Future[Result],
        thumbnail_px: int,
        rotations: bool,
        text: str,
    ) -> None:
        """Decodes one image into the ready queue, or resolves its future with
        the error; it no longer counts as decoding, whatever happens."""
        try:
            if fut.cancelled():
                return
            try:
                decoded = self._decoder.decode(data, name, thumbnail_px)
            except DecodeError as exc:
                _resolve(fut, Result(None, error=exc))
                return
            except Exception as exc:  # a decoder bug must not hang the caller
                log.exception("decode.crash", extra={"fields": {"image": name}})
                error = DecodeError(
                    grpc.StatusCode.INTERNAL,
                    f"{name}: the decoder failed ({type(exc).__name__}); the embedder's log has the details",
                )
                _resolve(fut, Result(None, error=error))
                return
            self._ready.put(_Item(decoded, fut, rotations, text))
        finally:
            with self._lock:
                self._decoding -= 1

    def _take_batch(self) -> list[_Item] | None:
        """Images whose callers still wait, up to max_batch model rows (an
        image with rotations takes four); None: stop."""
        batch: list[_Item] = []
        rows = 0
        started = time.monotonic()
        while rows < self.max_batch:
            if self._back:
                item, running = self._back.popleft()
            else:
                try:
                    got = (
                        self._ready.get(timeout=self._wait(started)) if batch else self._ready.get()
                    )
                except queue.Empty:
                    break
                if got is None:
                    if not batch:
                        return None
                    self._ready.put(None)  # let the loop see the stop after this batch
                    break
                item, running = got, False
            if rows + item.views > self.max_batch:
                self._back.appendleft((item, running))  # first in the next batch
                break
            # Taking an image into a batch marks its future running: from then
            # on it can no longer be canceled, and ``canceled`` counts only drops.
            if running or item.future.set_running_or_notify_cancel():
                if not batch:
                    started = time.monotonic()
                batch.append(item)
                rows += item.views
        return self._fit(batch, rows)

    def _wait(self, started: float) -> float:
        """How long a batch begun at ``started`` still waits for images."""
        wait = self.busy_wait_s if self._decoding > 0 else self.max_wait_s
        return max(0.0, started + wait - time.monotonic())

    def _fit(self, batch: list[_Item], rows: int) -> list[_Item]:
        """``batch``, or its head that fills the model size below when the
        model would pad the whole to a size it fills less than FULL_ENOUGH;
        the rest go back, first in the next batch."""
        sizes = self._sizes()
        upper = next((s for s in sizes if s >= rows), 0)
        lower = max((s for s in sizes if s < rows), default=0)
        if not upper or lower <= 1 or rows >= upper * FULL_ENOUGH:
            return batch
        kept = kept_rows = 0
        while kept < len(batch) and kept_rows + batch[kept].views <= lower:
            kept_rows += batch[kept].views
            kept += 1
        if not kept:
            return batch
        self._back.extendleft((it, True) for it in reversed(batch[kept:]))
        return batch[:kept]

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            started = time.perf_counter()
            try:
                pixels = np.stack([p for it in batch for p in it.pixels()])
                out = self._embed(pixels, [it.text for it in batch for _ in range(it.views)])
                vectors, texts = out if isinstance(out, tuple) else (out, None)
            except Exception as exc:
                log.exception("model.crash", extra={"fields": {"batch": len(batch)}})
                failure = errors.ServiceError(
                    grpc.StatusCode.INTERNAL,
                    f"the model failed on a batch ({type(exc).__name__}); the embedder's log "
                    "has the details",
                )
                for it in batch:
                    with contextlib.suppress(InvalidStateError):
                        it.future.set_exception(failure)
                continue
            seconds = time.perf_counter() - started
            BATCH_SIZE.observe(len(vectors))
            MODEL_SECONDS.observe(seconds)
            logs.event(
                log, "model.batch", logging.DEBUG, size=len(batch), ms=round(seconds * 1000, 1)
            )
            self.embedded += len(batch)
            row = 0
            for it in batch:
                d = it.decoded
                views = vectors[row : row + it.views]
                text = None if texts is None else texts[row]
                row += it.views
                _resolve(
                    it.future,
                    Result(
                        views[0],
                        d.width,
                        d.height,
                        thumbnail=d.thumbnail,
                        rotated=tuple(views[1:]),
                        text=text,
                    ),
                )

    def close(self) -> None:
        """Finishes queued work, then stops the model thread."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True)
        self._ready.put(None)
        self._thread.join(timeout=30)
