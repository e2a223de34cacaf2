"""EMBEDDER_GPU_DECODE's batched device decoder (torchvision decode_jpeg,
EXIF orientation, resize, crop and thumbnails on the model's device).
Without a GPU the same code runs on the CPU: pixels must agree with the PIL
path on real photos and on every EXIF orientation, and every odd image must
load or fail exactly as with PIL, with PIL's message. With a GPU, the same
checks run on CUDA and the service's vectors are compared with the CPU's."""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from embedder_service.batcher import Batcher, Pixels
from embedder_service.decode import Decoded, DecodeError, Decoder
from embedder_service.device_decode import (
    DeviceDecoder,
    Encoded,
    OnDevice,
    Outcome,
    thumbnail_size,
)
from embedder_service.jpeg_header import read_header
from embedder_service.model import make_runner
from embedder_service.settings import EmbedderSettings
from imagesearch.v1 import embedder_pb2, embedder_pb2_grpc
from tests.conftest import (
    CLOTHING,
    ODD,
    channel,
    clothing_images,
    odd_manifest,
    start_embedder,
    wait_until,
)
from tests.embedder_service.test_accuracy import agreement

MAX_PIXELS = EmbedderSettings().max_pixels
CPU = torch.device("cpu")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def decoders(device: torch.device = CPU, chunk: int = MAX_PIXELS) -> tuple[Decoder, DeviceDecoder]:
    pil = Decoder(MAX_PIXELS)
    return pil, DeviceDecoder(device, pil, chunk)


def through_device(
    dev: DeviceDecoder, files: list[tuple[str, bytes]], px: int = 0
) -> list[Outcome]:
    """Each file as the batcher treats it: taken by the device decoder in one
    batch, or decoded by PIL when the device decoder does not take it."""
    taken = {i: dev.accept(data, name, px) for i, (name, data) in enumerate(files)}
    batch = [e for e in taken.values() if e is not None]
    decoded = iter(dev.decode(batch))
    out: list[Outcome] = []
    for i, (name, data) in enumerate(files):
        if taken[i] is not None:
            out.append(next(decoded))
        else:
            try:
                out.append(dev.fallback.decode(data, name, px))
            except DecodeError as exc:
                out.append(exc)
    return out


def host_pixels(outcome: Outcome) -> np.ndarray:
    assert not isinstance(outcome, DecodeError), outcome.message
    if isinstance(outcome, OnDevice):
        return outcome.pixels.permute(1, 2, 0).cpu().numpy()
    return outcome.pixels


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def rotated_jpegs(progressive: bool = False) -> list[tuple[str, bytes]]:
    """A 400x300 photo saved with each EXIF orientation, 1 to 8."""
    photo = Image.open(CLOTHING / clothing_images()[0][0]).convert("RGB").resize((400, 300))
    out = []
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        photo.save(buf, "JPEG", quality=92, exif=exif, progressive=progressive)
        out.append((f"orientation-{orientation}.jpg", buf.getvalue()))
    return out


def clothing_files() -> list[tuple[str, bytes]]:
    return [(p, (CLOTHING / p).read_bytes()) for p, _ in clothing_images()]


def check_pixels_agree(device: torch.device, files: list[tuple[str, bytes]]) -> None:
    pil, dev = decoders(device)
    got = through_device(dev, files)
    assert all(isinstance(g, OnDevice) for g in got), [type(g).__name__ for g in got]
    for (name, data), outcome in zip(files, got, strict=True):
        want = pil.decode(data, name)
        assert isinstance(outcome, OnDevice)
        assert (outcome.width, outcome.height) == (want.width, want.height), name
        # The same size and crop to the pixel: libjpeg-turbo both ways, only
        # the resize filters differ.
        assert mean_difference(host_pixels(outcome), want.pixels) < 0.5, name


def test_pixels_and_vectors_agree_with_the_pil_path() -> None:
    files = clothing_files()
    check_pixels_agree(CPU, files)
    runner = make_runner(EmbedderSettings(model="mobilenet_v2", weights="bundled", compile="false"))
    pil, dev = decoders()
    a = runner.embed(np.stack([pil.decode(d, p).pixels for p, d in files]))
    b = runner.embed(dev.batch([host_pixels(o) for o in through_device(dev, files)]))
    cosine, overlap = agreement(a, b)
    assert cosine >= 0.99 and overlap >= 0.9, (cosine, overlap)


def test_exif_orientations_are_applied_as_pil_applies_them() -> None:
    """torchvision's CUDA decode ignores apply_exif_orientation; the device
    decoder turns images itself, from the header, the same on every device."""
    files = rotated_jpegs()
    check_pixels_agree(CPU, files)
    for (name, _), outcome in zip(files, through_device(decoders()[1], files), strict=True):
        sideways = int(name.split("-")[1][0]) >= 5
        assert isinstance(outcome, OnDevice)
        assert (outcome.width, outcome.height) == ((300, 400) if sideways else (400, 300))


def test_exif_rotated_odd_image_agrees_with_pil() -> None:
    name = "hopper_orientation_6.jpg"
    check_pixels_agree(CPU, [(name, (ODD / name).read_bytes())])


def test_odd_images_load_or_fail_as_with_pil() -> None:
    pil, dev = decoders()
    files = [(name, (ODD / name).read_bytes()) for name, _ in odd_manifest()]
    # All in one batch: the corrupt JPEGs among them fail the batched decode,
    # which then goes image by image.
    for (name, data), (_, expect), got in zip(
        files, odd_manifest(), through_device(dev, files), strict=True
    ):
        try:
            want: Decoded | str = pil.decode(data, name)
        except DecodeError as exc:
            want = exc.message
        if expect == "ok":
            assert not isinstance(got, DecodeError), f"{name}: {got.message}"
            assert isinstance(want, Decoded)
            assert (got.width, got.height) == (want.width, want.height), name
            pixels = host_pixels(got)
            assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
            assert mean_difference(pixels, want.pixels) < 0.5, name
        else:
            assert isinstance(got, DecodeError) and got.message == want and name in want, name


def test_only_sequential_8_bit_jpegs_are_taken() -> None:
    _, dev = decoders()
    photo = Image.open(CLOTHING / clothing_images()[0][0])
    for kind, save in {
        "progressive": {"progressive": True},
        "cmyk": {},
    }.items():
        buf = io.BytesIO()
        (photo.convert("CMYK") if kind == "cmyk" else photo).save(buf, "JPEG", **save)
        assert dev.accept(buf.getvalue(), kind) is None, kind
    png = io.BytesIO()
    photo.save(png, "PNG")
    assert dev.accept(png.getvalue(), "png") is None
    assert dev.accept((CLOTHING / clothing_images()[0][0]).read_bytes(), "photo") is not None
    # Progressive JPEGs with EXIF orientations go through PIL and still agree.
    files = rotated_jpegs(progressive=True)
    got = through_device(dev, files)
    assert all(isinstance(g, Decoded) for g in got)


def test_headers_read_as_pil_reads_them() -> None:
    files = [
        *clothing_files(),
        *rotated_jpegs(),
        *((p.name, p.read_bytes()) for p in ODD.iterdir()),
    ]
    checked = 0
    for name, data in files:
        header = read_header(data)
        if header is None:
            continue
        with Image.open(io.BytesIO(data)) as img:
            assert img.format in ("JPEG", "MPO"), name
            assert (header.width, header.height) == img.size, name
            assert header.orientation == img.getexif().get(0x0112, 1), name
            checked += 1
    assert checked >= 70
    assert read_header(b"\xff\xd8\xff\xe1\x00") is None
    assert read_header(b"GIF89a") is None


def test_thumbnails_come_from_the_device_batch() -> None:
    pil, dev = decoders()
    files = [*clothing_files()[:4], *rotated_jpegs()[5:6]]
    for outcome, (name, data) in zip(through_device(dev, files, px=96), files, strict=True):
        assert isinstance(outcome, OnDevice)
        with (
            Image.open(io.BytesIO(outcome.thumbnail)) as thumb,
            Image.open(io.BytesIO(pil.decode(data, name, 96).thumbnail)) as want,
        ):
            assert thumb.format == "JPEG"
            assert thumb.size == want.size == thumbnail_size(outcome.width, outcome.height, 96)
            # The same picture, turned the same way (filters and encoders differ).
            assert mean_difference(np.asarray(thumb), np.asarray(want)) < 3, name
    # Smaller than asked: the whole image, turned (orientation 5 is a transposed view).
    turned = rotated_jpegs()[4:6]
    for outcome in through_device(dev, turned, px=1024):
        assert isinstance(outcome, OnDevice)
        with Image.open(io.BytesIO(outcome.thumbnail)) as thumb:
            assert thumb.size == (300, 400)
    for w, h in [(400, 300), (300, 400), (97, 1000), (1000, 97), (50, 60), (333, 333)]:
        img = Image.new("RGB", (w, h))
        img.thumbnail((96, 96))
        assert thumbnail_size(w, h, 96) == img.size, (w, h)


def test_a_batch_larger_than_the_pixel_chunk_is_decoded_in_chunks() -> None:
    files = clothing_files()[:10]
    _, whole = decoders()
    _, chunked = decoders(chunk=1)  # never less than max_pixels: one photo a call
    chunked.chunk_pixels = 300 * 400 * 2
    a = [host_pixels(o) for o in through_device(whole, files)]
    b = [host_pixels(o) for o in through_device(chunked, files)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


class HeldBatcher:
    """A batcher of 4-image batches on the CPU's device decoder whose model
    holds each batch until ``release`` is set; it records the rows the model
    got and the names the device decoder decoded, batch by batch."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.rows: list[int] = []
        self.decoded: list[list[str]] = []
        pil, held = Decoder(MAX_PIXELS), self

        class Recording(DeviceDecoder):
            def decode(self, items: Sequence[Encoded]) -> list[Outcome]:
                held.decoded.append([e.name for e in items])
                return super().decode(items)

        self.batcher = Batcher(
            self.model,
            pil,
            max_batch=4,
            max_wait_s=0.001,
            queue_size=64,
            decode_workers=1,
            device=Recording(CPU, pil, MAX_PIXELS),
        )

    def model(self, pixels: Pixels, texts: Sequence[str]) -> np.ndarray:
        self.rows.append(len(pixels))
        self.entered.set()
        assert self.release.wait(120)
        return np.ones((len(pixels), 4), np.float32)

    def close(self) -> None:
        self.release.set()
        self.batcher.close()


def test_the_next_batch_is_decoded_while_the_model_runs_one() -> None:
    """Two batches in flight: while the model holds batch 1, the preparing
    thread takes batch 2 and decodes it on the device."""
    held = HeldBatcher()
    try:
        files = clothing_files()[:8]
        first = held.batcher.submit(files[:4])
        assert held.entered.wait(120)
        second = held.batcher.submit(files[4:])
        # batch 1 still in the model
        wait_until(lambda: [len(b) for b in held.decoded] == [4, 4], timeout=120)
        assert not any(f.done() for f in first)
        held.release.set()
        results = [f.result(timeout=120) for f in first + second]
        assert all(r.vector is not None and r.error is None for r in results)
    finally:
        held.close()


def test_images_canceled_while_their_batch_is_prepared_never_reach_the_model() -> None:
    held = HeldBatcher()
    try:
        files = clothing_files()[:8]
        first = held.batcher.submit(files[:4])
        assert held.entered.wait(120)
        second = held.batcher.submit(files[4:6])
        third = held.batcher.submit(files[6:8])
        # Taken into a batch and decoded while the model holds the first.
        wait_until(lambda: {n for n, _ in files[4:6]} <= {n for b in held.decoded for n in b})
        assert held.batcher.cancel(second) == 2  # its caller has gone
        held.release.set()
        assert all(f.result(timeout=120).vector is not None for f in first + third)
        assert all(f.cancelled() for f in second) and held.batcher.canceled == 2
        assert sum(held.rows) == 6, held.rows  # the canceled rows left their batch
    finally:
        held.close()


def embed(port: int, files: list[tuple[str, bytes]]) -> list[embedder_pb2.Embedding]:
    """Every file, with its rotations' vectors and a 64 px thumbnail."""
    stub = embedder_pb2_grpc.EmbedderServiceStub(channel(port))
    images = [embedder_pb2.Image(name=n, data=d) for n, d in files]
    request = embedder_pb2.EmbedderServiceEmbedRequest(
        images=images, rotations=True, thumbnail_px=64
    )
    reply = stub.Embed(request, timeout=300)
    return list(reply.embeddings)


def vectors(embeddings: list[embedder_pb2.Embedding]) -> np.ndarray:
    return np.stack([np.frombuffer(e.vector, "<f4") for e in embeddings])


def check_service(device: str) -> None:
    """The device decoder's service against the PIL path's on CPU: the same
    answers, image for image."""
    files = [
        *clothing_files()[:24],
        *rotated_jpegs(),
        *((n, (ODD / n).read_bytes()) for n, _ in odd_manifest()),
    ]
    servers = [start_embedder(device="cpu"), start_embedder(gpu_decode=True, device=device)]
    try:
        pil, dev = (embed(s.running.port, files) for s in servers)
        for a, b in zip(pil, dev, strict=True):
            assert (a.name, a.error, a.error_code) == (b.name, b.error, b.error_code)
            assert (a.width, a.height) == (b.width, b.height), a.name
            assert bool(a.thumbnail) == bool(b.thumbnail), a.name
        ok = [i for i, e in enumerate(pil) if not e.error]
        cosine, _ = agreement(vectors([pil[i] for i in ok]), vectors([dev[i] for i in ok]))
        assert cosine >= 0.99, cosine
        for i in ok:
            turned_a = [np.frombuffer(v, "<f4") for v in pil[i].rotated_vectors]
            turned_b = [np.frombuffer(v, "<f4") for v in dev[i].rotated_vectors]
            assert len(turned_a) == len(turned_b) == 3
            assert min(float(x @ y) for x, y in zip(turned_a, turned_b, strict=True)) >= 0.98
    finally:
        for s in servers:
            s.running.stop(1)


def test_service_with_device_decode_on_a_cpu_answers_as_the_pil_path_exif_included() -> None:
    check_service("cpu")


@CUDA
def test_cuda_decode_agrees_with_pil_exif_included() -> None:
    check_pixels_agree(torch.device("cuda"), [*clothing_files(), *rotated_jpegs()])


@CUDA
def test_cuda_service_with_gpu_decode_answers_as_the_cpu_path_exif_included() -> None:
    check_service("cuda")


def test_fixture_paths_exist() -> None:
    assert isinstance(ODD, Path) and (ODD / "hopper_orientation_6.jpg").exists()
