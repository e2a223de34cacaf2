"""Image bytes -> fixed-size RGB uint8 arrays, safely.

Refuses images over the pixel limit from their header, before decoding;
decodes JPEGs at reduced size (draft mode) when they are much larger than
needed; applies EXIF orientation; turns every mode into RGB (transparent
pixels over white, 16-bit and float images rescaled); then resizes the shorter
side and center-crops, as torchvision's ImageNet preprocessing does, or, for
a model that must see the whole image (tirg_css), squashes it to a square.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from embedder_service.budget import PixelBudget
from imagesearch.errors import ServiceError
from imagesearch.formats import PHOTO_FORMATS, allowed, looks_like

log = logging.getLogger(__name__)

# A truncated file is an error, never a partly grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow warns about odd metadata it skips (bad EXIF, MPO headers): not
# actionable for a caller, and the image itself is fine.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


class DecodeError(ServiceError):
    """One image could not be used; ``code`` says why (INVALID_ARGUMENT: never
    usable here; RESOURCE_EXHAUSTED: the embedder is busy) and the message
    names the image."""


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray  # (size, size, 3) uint8
    width: int  # after EXIF orientation
    height: int
    thumbnail: bytes = b""  # JPEG, when asked for


MAX_THUMBNAIL_PX = 1024
# Largest resized image, in squares of the resize side (an aspect ratio of 16:1);
# a longer strip is cropped before it is resized (found by tools/fuzz.py).
MAX_RESIZED = 16
THUMBNAIL_QUALITY = 80


def thumbnail_jpeg(img: Image.Image, px: int) -> bytes:
    """A JPEG of ``img`` (RGB) whose longer side is ``px`` at most."""
    small = img.copy()
    small.thumbnail((px, px), Image.Resampling.BILINEAR, reducing_gap=2.0)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=THUMBNAIL_QUALITY)
    return out.getvalue()


def squash(img: Image.Image, size: int) -> np.ndarray:
    """The whole RGB image resized to size x size, aspect not kept (nothing at
    the edges is cut off), as (size, size, 3) uint8."""
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = float(arr.max()) if arr.size else 0.0
        if top > 255.0:
            arr = arr * (255.0 / top)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


class Decoder:
    """Decodes and preprocesses one image at a time; thread-safe."""

    def __init__(
        self,
        max_pixels: int,
        resize: int = 256,
        crop: int = 224,
        budget: PixelBudget | None = None,
        whole: bool = False,
        formats: Sequence[str] = PHOTO_FORMATS,
    ) -> None:
        """``whole``: squash the whole image to crop x crop instead of
        resizing its shorter side to ``resize`` and cropping the centre.
        ``formats``: the only formats opened (EMBEDDER_IMAGE_FORMATS)."""
        self.formats = allowed(formats)
        if not self.formats:
            raise ValueError(f"none of the image formats {', '.join(formats)} can be opened here")
        self.max_pixels = max_pixels
        self.resize = resize
        self.crop = crop
        self.whole = whole
        self.budget = budget or PixelBudget(max(max_pixels, 1))
        # Pillow's own bomb check (raises above 2x this) backs ours up for
        # formats that decode several frames or sub-images.
        Image.MAX_IMAGE_PIXELS = max_pixels

    def decode(self, data: bytes, name: str, thumbnail_px: int = 0) -> Decoded:
        """``thumbnail_px``: also make a JPEG thumbnail that size (0: none)."""
        label = name or "image"
        if not data:
            raise DecodeError(grpc.StatusCode.INVALID_ARGUMENT, f"{label}: empty file (0 bytes)")
        try:
            return self._decode(data, label, min(max(thumbnail_px, 0), MAX_THUMBNAIL_PX))
        except DecodeError:
            raise
        except ServiceError as exc:  # the pixel budget
            raise DecodeError(exc.code, exc.message) from None
        except Image.DecompressionBombError as exc:
            raise DecodeError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{label}: refused before decoding, over the limit of "
                f"{self.max_pixels / 1e6:.1f} Mpx (EMBEDDER_MAX_PIXELS): {exc}",
            ) from None
        except UnidentifiedImageError:
            raise DecodeError(
                grpc.StatusCode.INVALID_ARGUMENT, self._unreadable(data, label)
            ) from None
        except (
            OSError,
            ValueError,
            SyntaxError,
            EOFError,
            TypeError,
            IndexError,
            KeyError,
            ZeroDivisionError,
            MemoryError,
        ) as exc:
            raise DecodeError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{label}: corrupt or truncated image ({type(exc).__name__}: {exc})",
            ) from None

    def _unreadable(self, data: bytes, label: str) -> str:
        shown = ", ".join(self.formats)
        seen = looks_like(data)
        if seen is not None and seen not in self.formats:
            return (
                f"{label}: looks like {seen}, a format this embedder does not open "
                f"(allowed: {shown}; EMBEDDER_IMAGE_FORMATS)"
            )
        return f"{label}: not an image in a format we can read ({shown})"

    def _decode(self, data: bytes, label: str, thumbnail_px: int) -> Decoded:
        img: Image.Image = Image.open(io.BytesIO(data), formats=self.formats)
        width, height = img.size
        if width <= 0 or height <= 0:
            raise DecodeError(
                grpc.StatusCode.INVALID_ARGUMENT, f"{label}: image has no pixels ({width}x{height})"
            )
        if width * height > self.max_pixels:
            raise DecodeError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{label}: {width}x{height} is {width * height / 1e6:.1f} Mpx, over the "
                f"limit of {self.max_pixels / 1e6:.1f} Mpx (EMBEDDER_MAX_PIXELS); "
                "downscale it first",
            )
        if img.format == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale when that still covers the
            # resize (and the thumbnail).
            side = max(self.resize, thumbnail_px)
            img.draft(img.mode, (side, side))
        decoded_w, decoded_h = img.size
        with self.budget.hold(decoded_w * decoded_h, label):
            img.load()
            try:
                oriented = ImageOps.exif_transpose(img)
                if oriented is not None:
                    img = oriented
            except Exception as exc:  # broken EXIF must not lose an otherwise good image
                log.debug("exif.ignored", extra={"fields": {"image": label, "error": str(exc)}})
            rgb = _to_rgb(img)
            # Report the full-resolution size after orientation (draft mode may
            # have decoded the pixels smaller).
            out_w, out_h = (height, width) if _swaps_axes(img, width, height) else (width, height)
            pixels, resized = self._resize_crop(rgb)
            thumbnail = b""
            if thumbnail_px:
                # From the resized image where it is a downscale that still
                # covers the thumbnail (a photo: 14% of the decode thread's
                # time went to shrinking the full decode again).
                source = rgb
                if resized is not None and max(resized.size) >= thumbnail_px:
                    source = resized
                thumbnail = thumbnail_jpeg(source, thumbnail_px)
            return Decoded(pixels, out_w, out_h, thumbnail)

    def _resize_crop(self, img: Image.Image) -> tuple[np.ndarray, Image.Image | None]:
        """The model's pixels, and the whole image resized on the way when
        that was a downscale (None otherwise)."""
        if self.whole:
            return squash(img, self.crop), None
        w, h = img.size
        scale = self.resize / min(w, h)
        new_w, new_h = resized_size(w, h, self.resize, self.crop)
        if new_w * new_h > MAX_RESIZED * self.resize * self.resize:
            # A strip (62965 x 3 px, a few hundred bytes of GIF) would become
            # gigabytes at full width before the crop: resize only the part
            # of the source that the centre crop keeps.
            side = self.crop / scale
            left, top = (w - side) / 2, (h - side) / 2
            box = (max(0.0, left), max(0.0, top), min(w, left + side), min(h, top + side))
            img = img.resize((self.crop, self.crop), Image.Resampling.BILINEAR, box=box)
            return np.asarray(img, dtype=np.uint8), None
        resized = img.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
        left, top = (new_w - self.crop) // 2, (new_h - self.crop) // 2
        centre = resized.crop((left, top, left + self.crop, top + self.crop))
        return np.asarray(centre, dtype=np.uint8), resized if new_w < w else None


def resized_size(width: int, height: int, resize: int, crop: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``resize``, each side rounded to
    the nearest pixel and at least ``crop``. Every decoder resizes to this size,
    so their centre crops line up to the pixel."""
    scale = resize / min(width, height)
    return max(crop, round(width * scale)), max(crop, round(height * scale))


def _swaps_axes(img: Image.Image, width: int, height: int) -> bool:
    """True when EXIF orientation turned a width x height image on its side."""
    w, h = img.size
    if width == height:
        return False
    return (w > h) != (width > height)
