"""The image formats that are ever decoded: those a photo library needs.

Pillow picks a decoder from the bytes, not the file name, and can open some
forty formats; several hand the data to other programs or parse rarely used
structures (EPS runs Ghostscript, FITS, PSD, SPIDER, ...). Every decode here
passes ``formats=`` to ``Image.open``, so bytes of any other format are
refused before a decoder of theirs runs; ``looks_like`` names what they seem
to be from their first bytes (Pillow's own signature checks, which parse
nothing) for the caller's error message.
"""

from __future__ import annotations

from collections.abc import Iterable

from PIL import Image

# JPEG (MPO photos included), PNG (APNG), WebP, GIF, BMP, TIFF, ICO (favicons:
# BMP or PNG inside), and HEIF/AVIF where a plugin (pillow-heif, Pillow's
# libavif build) provides them.
PHOTO_FORMATS: tuple[str, ...] = (
    "JPEG",
    "PNG",
    "WEBP",
    "GIF",
    "BMP",
    "TIFF",
    "ICO",
    "HEIF",
    "AVIF",
)


def registered() -> set[str]:
    """The formats this Pillow can open (all plugins loaded)."""
    Image.init()
    return set(Image.OPEN)


def allowed(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` (any case) that this Pillow can open, in order; the others
    (a plugin that is not installed) are left out."""
    known = registered()
    wanted = [n.strip().upper() for n in names if n.strip()]
    return tuple(n for n in dict.fromkeys(wanted) if n in known)


def looks_like(data: bytes) -> str | None:
    """The format whose signature ``data`` starts with, by Pillow's accept
    checks (a prefix comparison each); None when none matches."""
    Image.init()
    prefix = data[:16]
    for name, (_factory, accept) in Image.OPEN.items():
        if accept is None:
            continue
        try:
            if accept(prefix):
                return name
        except Exception:  # a check that cannot read so few bytes
            continue
    return None
