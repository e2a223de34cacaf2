"""Cross-request dynamic batching.

Every Embed call hands its images to ``Batcher.submit``. Images are decoded in
a thread pool; decoded ones join one queue. With a device decoder
(EMBEDDER_GPU_DECODE), a JPEG it takes skips the pool: only its header is read
(microseconds) and it joins the queue still encoded, to be decoded with its
whole batch. A preparing thread takes up to ``max_batch`` images from the
queue, decodes the batch's JPEGs on the device and stacks the batch; a model
thread runs it. So batch n+1 is prepared (decoded, copied to the device on a
stream of its own) while the model runs batch n, and images of concurrent
calls share batches.

A batch waits ``max_wait`` for more images, or longer (up to ``busy_wait``)
while accepted images are still being decoded: those are certain to come, and
one full batch is cheaper than several small ones. A compiled model runs a few
batch sizes and pads a batch up to the next (``sizes``); a batch that would be
mostly padding is cut to the size below, and the rest go first into the next
batch (12 images run as 8, then 4 with whatever has come, instead of as 32: at
batch 8 an int8 ResNet50 spends no more per image than at 32). The number of
images in flight is bounded: past ``queue_size`` a call is refused with
RESOURCE_EXHAUSTED instead of queueing without limit. Images of a call that
is canceled, or whose deadline passes, are dropped wherever they wait
(``Batcher.cancel``): not decoded if they are still queued for decoding, not
run through the model if they wait for a batch.
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
import torch
from prometheus_client import Counter, Gauge, Histogram

from embedder_service.decode import Decoded, DecodeError, Decoder
from embedder_service.device_decode import DeviceDecoder, Encoded, OnDevice
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
PREPARE_SECONDS = Histogram(
    "imagesearch_embedder_prepare_seconds",
    "Time per batch to decode its JPEGs on the device (EMBEDDER_GPU_DECODE) and stack it",
)
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


Pixels = np.ndarray | torch.Tensor  # (N, H, W, 3) on the host, or (N, 3, H, W) on the device


@dataclass
class _Item:
    decoded: Decoded | OnDevice | None  # None: still encoded, for the device decoder
    future: Future[Result]
    rotations: bool = False
    text: str = ""  # composed with the image, for a composing model
    encoded: Encoded | None = None

    @property
    def views(self) -> int:
        """Rows this image takes in a model batch."""
        return 4 if self.rotations else 1

    def pixels(self) -> list[np.ndarray | torch.Tensor]:
        assert self.decoded is not None
        p = self.decoded.pixels
        if not self.rotations:
            return [p]
        # Turning the center crop is turning the image, then cropping: the
        # crop is square and centred, and resizing commutes with turning.
        if isinstance(p, torch.Tensor):
            return [p, *(torch.rot90(p, k, dims=(1, 2)) for k in (1, 2, 3))]
        return [p, *(np.rot90(p, k) for k in (1, 2, 3))]


@dataclass
class _Prepared:
    items: list[_Item]
    pixels: Pixels
    event: torch.cuda.Event | None = None  # the device decoder's work on ``pixels``


def _running(batch: list[_Item], pixels: Pixels) -> tuple[list[_Item], Pixels]:
    """Marks each image's future running; the images whose caller canceled
    meanwhile leave the batch, and their rows the pixels."""
    live = [it.future.set_running_or_notify_cancel() for it in batch]
    if all(live):
        return batch, pixels
    rows: list[int] = []
    row = 0
    for it, keep in zip(batch, live, strict=True):
        if keep:
            rows.extend(range(row, row + it.views))
        row += it.views
    kept = [it for it, keep in zip(batch, live, strict=True) if keep]
    if isinstance(pixels, torch.Tensor):
        return kept, pixels[torch.tensor(rows, dtype=torch.long, device=pixels.device)]
    return kept, pixels[rows]


class Batcher:
    def __init__(
        self,
        embed: Callable[[Pixels, Sequence[str]], Embedded],
        decoder: Decoder,
        *,
        max_batch: int,
        max_wait_s: float,
        queue_size: int,
        decode_workers: int,
        sizes: Callable[[], Sequence[int]] = tuple,
        device: DeviceDecoder | None = None,
        busy_wait_s: float = 0.1,
    ) -> None:
        """``embed``: pixels and texts -> the vectors, or (vectors, text
        vectors or None) from a runner with a text side. ``sizes``: the batch
        sizes the model pads a batch up to, ascending (none: it runs any size
        as it is). ``device``: decodes the JPEGs it takes in batches (the
        rest go through ``decoder``). ``busy_wait_s``: how long a batch waits
        at most for images still being decoded."""
        self._embed = embed
        self._sizes = sizes
        self._decoder = decoder
        self._device = device
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self._ready: queue.Queue[_Item | None] = queue.Queue()
        # One batch prepared ahead of the one the model runs.
        self._prepared: queue.Queue[_Prepared | None] = queue.Queue(maxsize=1)
        self._pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="decode")
        self._in_flight = 0
        self._decoding = 0  # accepted, not yet decoded
        self.busy_wait_s = max(max_wait_s, busy_wait_s)
        self._lock = threading.Lock()
        self._closed = False
        self.embedded = 0  # images run through the model
        self.canceled = 0  # images dropped before the model
        # Taken from the queue and not run yet: too big for the last batch, or
        # cut from it.
        self._back: deque[_Item] = deque()
        self._threads = [
            threading.Thread(target=self._run_prepare, name="prepare", daemon=True),
            threading.Thread(target=self._run_model, name="model", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

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
        # What the device decoder takes waits for its batch still encoded;
        # the rest is decoded in the pool.
        device = self._device
        encoded = [device.accept(d, name, thumbnail_px) if device else None for name, d in images]
        with self._lock:
            if self._closed:
                raise errors.unavailable("the embedder is shutting down; retry on another replica")
            if self._in_flight + len(images) > self.queue_size:
                raise errors.resource_exhausted(
                    f"embedder queue is full ({self._in_flight} images waiting, limit "
                    f"{self.queue_size}, EMBEDDER_QUEUE_SIZE); retry later or add replicas"
                )
            self._in_flight += len(images)
            self._decoding += sum(e is None for e in encoded)
            QUEUE_DEPTH.set(self._in_flight)
        futures: list[Future[Result]] = []
        for i, ((name, data), jpeg) in enumerate(zip(images, encoded, strict=True)):
            fut: Future[Result] = Future()
            fut.add_done_callback(self._release)
            text = texts[i] if texts else ""
            if jpeg is not None:
                self._ready.put(_Item(None, fut, rotations, text, jpeg))
            else:
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
                item = self._back.popleft()
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
                item = got
            if rows + item.views > self.max_batch:
                self._back.appendleft(item)  # first in the next batch
                break
            # Its caller may still cancel it until the model takes the batch
            # (``_run_model``); one canceled already is dropped here.
            if not item.future.cancelled():
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
        self._back.extendleft(reversed(batch[kept:]))
        return batch[:kept]

    def _run_prepare(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                self._prepared.put(None)
                return
            started = time.perf_counter()
            try:
                prepared = self._prepare(batch)
            except Exception as exc:
                log.exception("prepare.crash", extra={"fields": {"batch": len(batch)}})
                self._fail(batch, f"the decoder failed on a batch ({type(exc).__name__})")
                continue
            PREPARE_SECONDS.observe(time.perf_counter() - started)
            if prepared is not None:
                self._prepared.put(prepared)

    def _prepare(self, batch: list[_Item]) -> _Prepared | None:
        """The batch's JPEGs decoded on the device, the images that failed
        answered, the rest stacked for the model (None: none are left)."""
        device = self._device
        if device is None:
            return _Prepared(batch, np.stack([p for it in batch for p in it.pixels()]))
        batch = [it for it in batch if not it.future.cancelled()]
        waiting = [it for it in batch if it.decoded is None]
        if waiting:
            outcomes = device.decode([it.encoded for it in waiting if it.encoded is not None])
            for it, outcome in zip(waiting, outcomes, strict=True):
                if isinstance(outcome, DecodeError):
                    _resolve(it.future, Result(None, error=outcome))
                else:
                    it.decoded = outcome
            batch = [it for it in batch if it.decoded is not None]
        if not batch:
            return None
        pixels = device.batch([p for it in batch for p in it.pixels()])
        return _Prepared(batch, pixels, device.mark())

    def _fail(self, batch: list[_Item], what: str) -> None:
        failure = errors.ServiceError(
            grpc.StatusCode.INTERNAL, f"{what}; the embedder's log has the details"
        )
        for it in batch:
            with contextlib.suppress(InvalidStateError):
                it.future.set_exception(failure)

    def _run_model(self) -> None:
        while True:
            prepared = self._prepared.get()
            if prepared is None:
                return
            batch, pixels = prepared.items, prepared.pixels
            if isinstance(pixels, torch.Tensor) and self._device is not None:
                pixels = self._device.take(pixels, prepared.event)
            # From here on an image can no longer be canceled; those that were
            # while their batch was prepared are dropped now.
            batch, pixels = _running(batch, pixels)
            if not batch:
                continue
            started = time.perf_counter()
            try:
                out = self._embed(pixels, [it.text for it in batch for _ in range(it.views)])
                vectors, texts = out if isinstance(out, tuple) else (out, None)
            except Exception as exc:
                log.exception("model.crash", extra={"fields": {"batch": len(batch)}})
                self._fail(batch, f"the model failed on a batch ({type(exc).__name__})")
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
                assert d is not None
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
        for thread in self._threads:
            thread.join(timeout=30)
