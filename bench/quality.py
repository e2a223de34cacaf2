"""Retrieval quality through the running stack (the gateway, as users call
it), for each model setting and query option:

  copies   every clothing-64 photo edited ten ways (built here, in code:
           JPEG q15, 20% size, 70% center crop, turned 90 degrees, mirrored,
           grayscale, brighter, blurred, padded, overlaid text); each copy
           queries the collection of the 64 originals: is its original the
           first hit (R@1), among the first ten (R@10)?
  classes  each original queries the same collection (edited copies are not
           in it): of its nearest others, how many share its class (P@5, of 7
           possible), and the mean average precision over all 63 others (mAP).

    .venv/bin/python bench/quality.py
        [--configs mobilenet_v2/avg,mobilenet_v2/gem,efficientnet_lite0/avg,...]
        [--weights bundled]
    .venv/bin/python bench/quality.py --text [--configs efficientnet_lite0/avg]

With --text: search by words instead (bench/quality_text.py): precision@10 of
each class's name in plain words, misspelled and in other words.

Each config (EMBEDDER_MODEL/EMBEDDER_POOLING[/CROP][@EMBEDDER_DTYPE]; CROP
sets EMBEDDER_IMAGE_SIZE, and EMBEDDER_RESIZE in the same 256:224 ratio;
@int8 beside @bfloat16 compares precisions, int8 compiled) starts
its own services; every option (as it is, any_rotation) runs on the same
collection.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CLOTHING, machine, services
from imagesearch.client import Client, Query


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    img.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def _crop(img: Image.Image, keep: float) -> Image.Image:
    w, h = img.size
    dw, dh = int(w * (1 - keep) / 2), int(h * (1 - keep) / 2)
    return img.crop((dw, dh, w - dw, h - dh))


def _text(img: Image.Image) -> Image.Image:
    out = img.copy()
    draw = ImageDraw.Draw(out)
    size = max(12, img.height // 8)
    font = ImageFont.load_default(size=size)
    draw.text((img.width // 20, img.height // 2), "SALE -50% today", fill=(255, 255, 0), font=font)
    return out


EDITS: dict[str, Callable[[Image.Image], bytes]] = {
    "jpeg q15": lambda im: jpeg(im, 15),
    "20% size": lambda im: jpeg(im.resize((max(1, im.width // 5), max(1, im.height // 5)))),
    "70% crop": lambda im: jpeg(_crop(im, 0.7)),
    "turned 90": lambda im: jpeg(im.transpose(Image.Transpose.ROTATE_90)),
    "mirrored": lambda im: jpeg(ImageOps.mirror(im)),
    "grayscale": lambda im: jpeg(ImageOps.grayscale(im)),
    "brighter": lambda im: jpeg(ImageEnhance.Brightness(im).enhance(1.6)),
    "blurred": lambda im: jpeg(im.filter(ImageFilter.GaussianBlur(3))),
    "padded": lambda im: jpeg(ImageOps.expand(im, border=max(im.size) // 5, fill=(255, 255, 255))),
    "text": lambda im: jpeg(_text(im)),
}


def originals() -> list[tuple[str, str]]:
    import csv

    with (CLOTHING / "labels.csv").open() as f:
        return [(row["path"], row["label"]) for row in csv.DictReader(f)]


def edited_copies(names: list[str]) -> dict[str, list[bytes]]:
    """Every edit of every photo (in ``names`` order), made once per run."""
    upright = []
    for name in names:
        with Image.open(CLOTHING / name) as src:
            upright.append(ImageOps.exif_transpose(src).convert("RGB"))
    return {kind: [edit(img) for img in upright] for kind, edit in EDITS.items()}


def average_precision(ranked: list[bool], relevant: int) -> float:
    hits, total = 0, 0.0
    for n, ok in enumerate(ranked, start=1):
        if ok:
            hits += 1
            total += hits / n
    return total / relevant if relevant else 0.0


def measure(
    client: Client,
    rows: list[tuple[str, str]],
    copies: dict[str, list[bytes]],
    any_rotation: bool,
) -> dict[str, float]:
    """``copies``: ``edited_copies`` of the photos of ``rows``."""
    label = dict(rows)
    names = [n for n, _ in rows]
    out: dict[str, float] = {}
    # Copies.
    ranks: dict[str, list[int]] = defaultdict(list)
    for kind, edited in copies.items():
        results = client.search_many(
            [Query(image=data) for data in edited],
            collection="quality",
            top_k=10,
            any_rotation=any_rotation,
        )
        for name, hits in zip(names, results, strict=True):
            paths = [h.path for h in hits]
            ranks[kind].append(paths.index(name) + 1 if name in paths else 99)
    for kind, r in ranks.items():
        out[f"R@1 {kind}"] = sum(x == 1 for x in r) / len(r)
        out[f"R@10 {kind}"] = sum(x <= 10 for x in r) / len(r)
    every = [x for r in ranks.values() for x in r]
    out["R@1 all"] = sum(x == 1 for x in every) / len(every)
    out["R@10 all"] = sum(x <= 10 for x in every) / len(every)
    # Classes.
    results = client.search_many(
        [Query(image=(CLOTHING / n).read_bytes()) for n in names],
        collection="quality",
        top_k=len(names),
        any_rotation=any_rotation,
    )
    p5, p10, aps = [], [], []
    for name, hits in zip(names, results, strict=True):
        others = [h.path for h in hits if h.path != name]
        same = [label.get(p) == label[name] for p in others]
        relevant = sum(1 for n in names if n != name and label[n] == label[name])
        p5.append(sum(same[:5]) / 5)
        p10.append(sum(same[:10]) / 10)
        aps.append(average_precision(same, relevant))
    out["class P@5"] = sum(p5) / len(p5)
    out["class P@10 (0.7 at most)"] = sum(p10) / len(p10)
    out["class mAP"] = sum(aps) / len(aps)
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--configs",
        default="mobilenet_v2/avg,mobilenet_v2/gem,efficientnet_lite0/avg,efficientnet_lite0/gem",
        help="MODEL/POOLING[/CROP][@DTYPE] configs to compare",
    )
    p.add_argument("--weights", default="bundled")
    p.add_argument("--text", action="store_true", help="search by words (quality_text.py)")
    args = p.parse_args()
    rows = originals()
    if args.text:
        from bench.quality_text import run

        configs = args.configs if "--configs" in sys.argv else "efficientnet_lite0/avg"
        return run(configs, args.weights, rows)
    print(f"machine: {machine()}")
    print(
        f"weights {args.weights}; {len(rows)} originals, "
        f"{len(EDITS)} edits each ({len(rows) * len(EDITS)} copies)"
    )
    copies = edited_copies([n for n, _ in rows])
    table: dict[str, dict[str, float]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="imgsearch-quality-"))
    try:
        for config in args.configs.split(","):
            spec, _, dtype = config.partition("@")
            model, pooling, *crop = spec.split("/")
            env = {
                "EMBEDDER_MODEL": model,
                "EMBEDDER_WEIGHTS": args.weights,
                "EMBEDDER_POOLING": pooling,
                # int8 runs compiled only; the others eager (the same vectors, sooner).
                "EMBEDDER_COMPILE": "auto" if dtype == "int8" else "false",
                "GATEWAY_MAX_QUERIES": "64",
            }
            if dtype:
                env["EMBEDDER_DTYPE"] = dtype
            if crop:
                env["EMBEDDER_IMAGE_SIZE"] = crop[0]
                env["EMBEDDER_RESIZE"] = str(round(int(crop[0]) * 256 / 224))
            started = time.perf_counter()
            with services(tmp / config.replace("/", "-"), env) as ports:
                client = Client(f"127.0.0.1:{ports['gateway']}", timeout=600)
                client.index_images(
                    [(n, (CLOTHING / n).read_bytes()) for n, _ in rows], collection="quality"
                )
                for any_rotation in (False, True):
                    column = f"{config}{' + any_rotation' if any_rotation else ''}"
                    table[column] = measure(client, rows, copies, any_rotation)
                    print(f"measured {column} ({time.perf_counter() - started:.0f} s)", flush=True)
                client.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    columns = list(table)
    print("\n| measure | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for key in table[columns[0]]:
        print(f"| {key} | " + " | ".join(f"{table[c][key]:.3f}" for c in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
