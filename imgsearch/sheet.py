"""Contact sheet: the query image and its hits as one PNG, like the seeds'
matplotlib grids, with Pillow only."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from imagesearch.formats import PHOTO_FORMATS

THUMB = 200
CAPTION = 36
PAD = 8
MAX_COLUMNS = 6


@dataclass(frozen=True)
class Tile:
    title: str
    subtitle: str
    image: bytes | None  # None: not readable on this machine


HEADING = 22


def sheet_size(tiles: int, heading: bool = False) -> tuple[int, int]:
    """Pixel size of a sheet with ``tiles`` tiles (query included) and
    perhaps a heading line."""
    columns = min(tiles, MAX_COLUMNS)
    rows = (tiles + MAX_COLUMNS - 1) // MAX_COLUMNS
    top = HEADING if heading else 0
    return columns * (THUMB + PAD) + PAD, rows * (THUMB + CAPTION + PAD) + PAD + top


def _thumb(data: bytes | None) -> Image.Image:
    canvas = Image.new("RGB", (THUMB, THUMB), (230, 230, 230))
    if data is None:
        ImageDraw.Draw(canvas).text((10, THUMB // 2 - 6), "not readable here", fill=(90, 90, 90))
        return canvas
    try:
        img = ImageOps.exif_transpose(Image.open(io.BytesIO(data), formats=PHOTO_FORMATS))
        img = img.convert("RGB")
        img.thumbnail((THUMB, THUMB))
    except Exception:
        ImageDraw.Draw(canvas).text((10, THUMB // 2 - 6), "cannot decode", fill=(150, 40, 40))
        return canvas
    canvas.paste(img, ((THUMB - img.width) // 2, (THUMB - img.height) // 2))
    return canvas


def render(tiles: list[Tile], out: Path, heading: str = "") -> tuple[int, int]:
    """``heading``: a line above the tiles (a composed query's text)."""
    width, height = sheet_size(len(tiles), bool(heading))
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    top = HEADING if heading else 0
    if heading:
        draw.text((PAD, PAD), heading[:120], fill=(30, 110, 220))
    for n, tile in enumerate(tiles):
        x = PAD + (n % MAX_COLUMNS) * (THUMB + PAD)
        y = top + PAD + (n // MAX_COLUMNS) * (THUMB + CAPTION + PAD)
        page.paste(_thumb(tile.image), (x, y))
        if n == 0:
            draw.rectangle(
                (x - 3, y - 3, x + THUMB + 2, y + THUMB + 2), outline=(30, 110, 220), width=3
            )
        draw.text((x, y + THUMB + 4), tile.title[:32], fill="black")
        draw.text((x, y + THUMB + 18), tile.subtitle[:32], fill=(80, 80, 80))
    page.save(out, "PNG")
    return width, height
