"""JPEG decoding on the GPU (EMBEDDER_GPU_DECODE): torchvision's
``decode_jpeg`` on a CUDA device uses nvJPEG, and the resize and crop run there
too; only the 224x224 result comes back. The same code runs on the CPU
(libjpeg-turbo through torchvision), which is how it is tested without a GPU.

The PIL ``Decoder`` stays the authority: every image that is not a JPEG, that
declares too many pixels, or that this path cannot decode (CMYK, corrupt,
truncated, ...) goes through it, so errors and limits are the same either way.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from embedder_service.budget import PixelBudget
from embedder_service.decode import (
    MAX_RESIZED,
    MAX_THUMBNAIL_PX,
    Decoded,
    DecodeError,
    Decoder,
    resized_size,
    thumbnail_jpeg,
)
from imagesearch.errors import ServiceError
from imagesearch.formats import PHOTO_FORMATS

log = logging.getLogger(__name__)

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec (whose
# decode_jpeg takes the same arguments); they work, and we pin torchvision.
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)

JPEG_MAGIC = b"\xff\xd8\xff"
EXIF_ORIENTATION = 0x0112
SIDEWAYS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class TorchJpegDecoder(Decoder):
    """Decodes JPEGs with torchvision on ``device``; falls back to PIL."""

    def __init__(
        self,
        device: torch.device,
        max_pixels: int,
        resize: int = 256,
        crop: int = 224,
        budget: PixelBudget | None = None,
        formats: Sequence[str] = PHOTO_FORMATS,
    ) -> None:
        super().__init__(max_pixels, resize, crop, budget, formats=formats)
        self.device = device

    def decode(self, data: bytes, name: str, thumbnail_px: int = 0) -> Decoded:
        if not data.startswith(JPEG_MAGIC):
            return super().decode(data, name, thumbnail_px)
        try:
            header = Image.open(io.BytesIO(data), formats=("JPEG",))  # the header only
            width, height = header.size
            sideways = header.getexif().get(EXIF_ORIENTATION, 1) in SIDEWAYS
        except Exception:
            return super().decode(data, name, thumbnail_px)  # PIL says what is wrong
        if not (0 < width * height <= self.max_pixels):
            return super().decode(data, name, thumbnail_px)  # refused with the usual message
        if max(width, height) > MAX_RESIZED * min(width, height):
            return super().decode(data, name, thumbnail_px)  # a strip: PIL crops it first
        try:
            with self.budget.hold(width * height, name):
                raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                image = decode_jpeg(
                    raw, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True
                )
                # Not F.resize(image, [self.resize]): it truncates the longer
                # side where Decoder rounds it, which moved the crop half a
                # pixel for some aspect ratios (seen on an H200 first).
                new_w, new_h = resized_size(
                    image.shape[-1], image.shape[-2], self.resize, self.crop
                )
                resized = F.resize(image, [new_h, new_w], antialias=True)
                pixels = self._crop_tensor(resized)
                thumbnail = b""
                if thumbnail_px:
                    # From the resized image (shorter side ``resize``): a
                    # thumbnail larger than that is a little soft.
                    rgb = Image.fromarray(resized.permute(1, 2, 0).contiguous().cpu().numpy())
                    thumbnail = thumbnail_jpeg(rgb, min(thumbnail_px, MAX_THUMBNAIL_PX))
        except ServiceError as exc:  # the decode budget is full
            raise DecodeError(exc.code, exc.message) from None
        except Exception as exc:  # CMYK, corrupt, truncated, ...: PIL decides
            log.debug(
                "decode.torch_fallback",
                extra={"fields": {"image": name, "error": f"{type(exc).__name__}: {exc}"}},
            )
            return super().decode(data, name, thumbnail_px)
        out_w, out_h = (height, width) if sideways else (width, height)
        return Decoded(pixels, out_w, out_h, thumbnail)

    def _crop_tensor(self, image: torch.Tensor) -> np.ndarray:
        """(3, H, W) uint8 on the device, shorter side already ``resize`` ->
        (crop, crop, 3) uint8 on the CPU, center-cropped as ``Decoder`` does it."""
        height, width = image.shape[-2:]
        top, left = (height - self.crop) // 2, (width - self.crop) // 2  # as Decoder rounds
        image = F.crop(image, top, left, self.crop, self.crop)
        return image.permute(1, 2, 0).contiguous().cpu().numpy()
