"""Batched JPEG decoding on the model's device (EMBEDDER_GPU_DECODE).

The servicer's thread reads each JPEG's header (``jpeg_header``: microseconds,
no Pillow) and the image waits, still encoded, for its batch. The batch step
then decodes all its JPEGs in one ``decode_jpeg`` call (torchvision's batched
nvJPEG on CUDA; libjpeg-turbo in a loop on the CPU, where this path is slower
than Pillow's reduced-size decode and there for tests and comparison), turns
them as their EXIF orientation says, resizes and centre-crops them in groups
of one size, and makes their thumbnails in one ``encode_jpeg`` call: the
pixels stay on the device and only the thumbnails' bytes come back. No image
costs Python per pixel, and the GIL is free while the device works.

Pillow (``Decoder``) stays the authority: what nvJPEG cannot take (other
formats; progressive, 12-bit or CMYK JPEGs; a header this cannot read with
certainty; images over EMBEDDER_MAX_PIXELS or too narrow a strip) never comes
here, and a JPEG that fails here is decoded by Pillow, which takes it or says
what is wrong with it, in the same words as without this path.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg
from torchvision.transforms.v2 import functional as F

from embedder_service.decode import (
    MAX_RESIZED,
    MAX_THUMBNAIL_PX,
    THUMBNAIL_QUALITY,
    Decoded,
    DecodeError,
    Decoder,
    resized_size,
)
from embedder_service.jpeg_header import JpegHeader, read_header

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec (whose
# decode_jpeg takes the same arguments); they work, and we pin torchvision.
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)
# The encoded bytes are read, never written: a view on them needs no copy.
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)


@dataclass(frozen=True)
class Encoded:
    """A JPEG waiting for its batch."""

    data: bytes
    name: str
    header: JpegHeader
    thumbnail_px: int = 0  # 0: none


@dataclass(frozen=True)
class OnDevice:
    """A JPEG decoded here: its model pixels stay on the device."""

    pixels: torch.Tensor  # (3, crop, crop) uint8
    width: int  # after EXIF orientation
    height: int
    thumbnail: bytes = b""


Outcome = OnDevice | Decoded | DecodeError


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) turned as EXIF ``orientation`` says, as Pillow's
    ``ImageOps.exif_transpose`` turns it."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(image, -1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(image, 1, dims=(-2, -1))
    return image


def thumbnail_size(width: int, height: int, px: int) -> tuple[int, int]:
    """The size Pillow's ``Image.thumbnail((px, px))`` gives a width x height
    image: the aspect kept, each side rounded towards it, at least 1."""
    if width <= px and height <= px:
        return width, height
    aspect = width / height

    def nearest(value: float, error: object) -> int:
        return max(min(math.floor(value), math.ceil(value), key=error), 1)  # type: ignore[call-overload]

    if aspect >= 1:
        return px, nearest(px / aspect, lambda n: 0 if n == 0 else abs(aspect - px / n))
    return nearest(px * aspect, lambda n: abs(aspect - n / px)), px


def draft_scale(width: int, height: int, side: int) -> int:
    """The reduction Pillow's ``draft`` picks for a width x height JPEG that
    must still cover ``side`` x ``side``: 8, 4, 2 or 1."""
    scale = min(width // side, height // side)
    return next((s for s in (8, 4, 2) if scale >= s), 1)


class DeviceDecoder:
    """Decodes batches of JPEGs on ``device``; ``fallback`` (Pillow) takes
    the rest and has the last word."""

    def __init__(self, device: torch.device, fallback: Decoder, chunk_pixels: int) -> None:
        """``chunk_pixels``: decoded pixels at most in one decode call (the
        batch is decoded in as many calls as that needs)."""
        self.device = device
        self.fallback = fallback
        self.chunk_pixels = max(chunk_pixels, fallback.max_pixels)
        self.opens_jpeg = "JPEG" in fallback.formats and not fallback.whole
        # Decodes and copies for batch n+1 go on a stream of their own, so
        # they overlap the model's work on batch n.
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def accept(self, data: bytes, name: str, thumbnail_px: int = 0) -> Encoded | None:
        """``data`` as a JPEG for the batch, or None: Pillow decodes it."""
        if not self.opens_jpeg:
            return None
        header = read_header(data)
        if header is None or not header.device_decodable:
            return None
        w, h = header.width, header.height
        if w * h > self.fallback.max_pixels or max(w, h) > MAX_RESIZED * min(w, h):
            return None  # refused, or a strip Pillow crops before resizing
        return Encoded(data, name, header, min(max(thumbnail_px, 0), MAX_THUMBNAIL_PX))

    def decode(self, items: Sequence[Encoded]) -> list[Outcome]:
        """Each item decoded, turned, resized and cropped on the device; an
        item the device could not decode is Pillow's ``Decoded`` or error."""
        out: list[Outcome] = []
        with self.on_stream():
            for chunk in self._chunks(items):
                out.extend(self._decode_chunk(chunk))
        return out

    def on_stream(self) -> contextlib.AbstractContextManager[object]:
        """Work on the decoder's own CUDA stream (nothing on a CPU)."""
        if self.stream is None:
            return contextlib.nullcontext()
        return torch.cuda.stream(self.stream)

    def _chunks(self, items: Sequence[Encoded]) -> Iterator[Sequence[Encoded]]:
        start, pixels = 0, 0
        for i, item in enumerate(items):
            size = item.header.width * item.header.height
            if i > start and pixels + size > self.chunk_pixels:
                yield items[start:i]
                start, pixels = i, 0
            pixels += size
        if start < len(items):
            yield items[start:]

    def _decode_chunk(self, chunk: Sequence[Encoded]) -> list[Outcome]:
        images = self._decode_jpegs([torch.frombuffer(e.data, dtype=torch.uint8) for e in chunk])
        oriented = [
            None if img is None else orient(img, e.header.orientation)
            for img, e in zip(images, chunk, strict=True)
        ]
        crops = self._resize_crop(oriented, chunk)
        thumbs = self._thumbnails(oriented, [e.thumbnail_px for e in chunk])
        out: list[Outcome] = []
        for e, crop, thumb in zip(chunk, crops, thumbs, strict=True):
            if crop is None:
                out.append(self._by_pillow(e))
            else:
                w, h = e.header.oriented_size
                out.append(OnDevice(crop, w, h, thumb))
        return out

    def _decode_jpegs(self, raw: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """One batched decode; when it fails (one bad file fails them all),
        each alone, None for the ones that fail again."""
        try:
            return list(decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device))
        except Exception:
            pass
        images: list[torch.Tensor | None] = []
        for r in raw:
            try:
                images.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=self.device))
            except Exception:
                images.append(None)
        return images

    def _resize_crop(
        self, images: list[torch.Tensor | None], items: Sequence[Encoded]
    ) -> list[torch.Tensor | None]:
        """Each image reduced as Pillow's draft mode reduces it, its shorter
        side resized to ``resize`` and its centre cropped, as ``Decoder`` does
        it: one resize per group of a size."""
        fb = self.fallback
        groups: dict[tuple[int, int, int], list[int]] = {}
        for i, (img, item) in enumerate(zip(images, items, strict=True)):
            if img is not None:
                side = max(fb.resize, item.thumbnail_px)
                scale = draft_scale(item.header.width, item.header.height, side)
                groups.setdefault((img.shape[-2], img.shape[-1], scale), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(images)
        for (_, _, scale), members in groups.items():
            stack = torch.stack([images[i] for i in members])  # type: ignore[misc]
            if scale > 1:
                # Pillow decodes a large JPEG at 1/2, 1/4 or 1/8 of its size
                # (libjpeg's DCT scaling), close to averaging scale x scale
                # blocks; without this, pixels differed by 2.3 on 0..255.
                pooled = torch.nn.functional.avg_pool2d(stack.float(), scale, ceil_mode=True)
                stack = pooled.round_().clamp_(0, 255).to(torch.uint8)
            height, width = stack.shape[-2:]
            # Not F.resize(x, [resize]): it truncates the longer side where
            # Decoder rounds it, which moved the crop half a pixel.
            new_w, new_h = resized_size(width, height, fb.resize, fb.crop)
            resized = F.resize(stack, [new_h, new_w], antialias=True)
            top, left = (new_h - fb.crop) // 2, (new_w - fb.crop) // 2
            crops = resized[:, :, top : top + fb.crop, left : left + fb.crop]
            for i, crop in zip(members, crops, strict=True):
                out[i] = crop
        return out

    def _thumbnails(self, images: list[torch.Tensor | None], sizes: list[int]) -> list[bytes]:
        """JPEG thumbnails of the images that ask for one (b'' for the
        others), encoded in one call; their bytes come back in one copy."""
        wanted = [
            (i, img, px)
            for i, (img, px) in enumerate(zip(images, sizes, strict=True))
            if px and img is not None
        ]
        out = [b""] * len(images)
        if not wanted:
            return out
        small = []
        for _, img, px in wanted:
            w, h = thumbnail_size(img.shape[-1], img.shape[-2], px)
            same = (w, h) == (img.shape[-1], img.shape[-2])
            small.append((img if same else F.resize(img, [h, w], antialias=True)).contiguous())
        encoded = encode_jpeg(small, quality=THUMBNAIL_QUALITY)
        joined = torch.cat(encoded).cpu().numpy().tobytes()
        start = 0
        for (i, _, _), jpeg in zip(wanted, encoded, strict=True):
            out[i] = joined[start : start + jpeg.numel()]
            start += jpeg.numel()
        return out

    def _by_pillow(self, item: Encoded) -> Decoded | DecodeError:
        try:
            return self.fallback.decode(item.data, item.name, item.thumbnail_px)
        except DecodeError as exc:
            return exc

    def batch(self, parts: Sequence[torch.Tensor | np.ndarray]) -> torch.Tensor:
        """(N, 3, crop, crop) uint8 on the device from each image's pixels:
        this decoder's (on the device) or Pillow's ((crop, crop, 3) arrays)."""
        with self.on_stream():
            host = [i for i, p in enumerate(parts) if isinstance(p, np.ndarray)]
            moved: dict[int, torch.Tensor] = {}
            if host:
                arrays = np.stack([parts[i] for i in host])
                tensor = torch.from_numpy(arrays).permute(0, 3, 1, 2)
                if self.device.type == "cuda":
                    tensor = tensor.contiguous().pin_memory()
                tensor = tensor.to(self.device, non_blocking=True)
                moved = dict(zip(host, tensor, strict=True))
            return torch.stack([moved[i] if i in moved else parts[i] for i in range(len(parts))])  # type: ignore[misc]

    def mark(self) -> torch.cuda.Event | None:
        """An event for the work queued so far on the decoder's stream (None
        on a CPU, where that work is done when its call returns)."""
        if self.stream is None:
            return None
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

    def take(self, tensor: torch.Tensor, event: torch.cuda.Event | None) -> torch.Tensor:
        """``tensor``, made on the decoder's stream, for the calling thread's
        stream: that stream waits for ``event``, and the allocator keeps the
        memory until that stream is done with it."""
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            tensor.record_stream(current)
        return tensor
