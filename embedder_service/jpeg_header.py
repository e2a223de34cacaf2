"""What a JPEG's header says, read without decoding or Pillow: its size, its
kind of frame, its channels and its EXIF orientation.

The device decoder (``embedder_service.device_decode``) reads this for every
image in the servicer's thread, so it must cost microseconds: Pillow's
``Image.open`` and ``getexif`` took ~55 us a photo here, this walk of the
markers ~5-10 us. Anything it cannot read with certainty is ``None``, and the
image then goes to Pillow, which says what is wrong with it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SOI = b"\xff\xd8"
EXIF = b"Exif\x00\x00"
ORIENTATION_TAG = 0x0112
# Start-of-frame markers: every one but DHT (C4), JPG (C8) and DAC (CC).
SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
# Baseline and extended sequential Huffman frames: what nvJPEG's batched
# decode takes (with 1 or 3 channels of 8 bits).
SEQUENTIAL = frozenset((0xC0, 0xC1))
STANDALONE = frozenset((0x01, *range(0xD0, 0xD8)))  # TEM, RST0-7: no length
SOS, EOI, APP1 = 0xDA, 0xD9, 0xE1


@dataclass(frozen=True)
class JpegHeader:
    width: int  # as stored, before orientation
    height: int
    channels: int
    precision: int
    sequential: bool  # baseline or extended Huffman (not progressive, lossless, arithmetic)
    orientation: int  # EXIF orientation, 1..8 (1: none or no EXIF)

    @property
    def sideways(self) -> bool:
        """True when orientation swaps width and height (5-8)."""
        return self.orientation >= 5

    @property
    def oriented_size(self) -> tuple[int, int]:
        """(width, height) after the EXIF orientation."""
        return (self.height, self.width) if self.sideways else (self.width, self.height)

    @property
    def device_decodable(self) -> bool:
        """A frame nvJPEG's batched decode takes: sequential, 8-bit, gray or YCbCr."""
        return self.sequential and self.precision == 8 and self.channels in (1, 3)


def read_header(data: bytes) -> JpegHeader | None:
    """The header of a JPEG in ``data``; None when it is not one, or when any
    part this needs (the frame, an EXIF block) is not as the standard says."""
    if not data.startswith(SOI):
        return None
    orientation, pos, end = 1, 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in STANDALONE:
            pos += 2
            continue
        if marker in (SOS, EOI):
            return None  # no frame before the scan
        (length,) = struct.unpack_from(">H", data, pos + 2)
        body = pos + 4
        if length < 2 or body + length - 2 > end:
            return None
        if marker == APP1 and data.startswith(EXIF, body) and orientation == 1:
            got = _orientation(data[body + 6 : body + length - 2])
            if got is None:
                return None  # an EXIF block that Pillow may read otherwise
            orientation = got
        elif marker in SOF:
            if length < 8:
                return None
            precision, height, width, channels = struct.unpack_from(">BHHB", data, body)
            if not (width and height):
                return None  # height in a DNL marker after the scan: rare, Pillow's
            return JpegHeader(width, height, channels, precision, marker in SEQUENTIAL, orientation)
        pos = body + length - 2
    return None


def _orientation(tiff: bytes) -> int | None:
    """The orientation tag of IFD0 in a TIFF block: 1 when absent or out of
    range (as Pillow's exif_transpose then leaves the image), None when the
    block itself is malformed."""
    if len(tiff) < 8:
        return None
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return None
    magic, ifd = struct.unpack_from(order + "HI", tiff, 2)
    if magic != 42 or ifd + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    if ifd + 2 + 12 * count > len(tiff):
        return None
    for i in range(count):
        tag, kind, n = struct.unpack_from(order + "HHI", tiff, ifd + 2 + 12 * i)
        if tag != ORIENTATION_TAG:
            continue
        if kind != 3 or n != 1:  # SHORT, one value
            return None
        (value,) = struct.unpack_from(order + "H", tiff, ifd + 2 + 12 * i + 8)
        return value if 1 <= value <= 8 else 1
    return 1
