"""What thumbnails cost: bytes stored per image (and per million images) and
decode time with and without making one, in one run, on the clothing photos
as they are and re-encoded at camera size (6000x4000).

    .venv/bin/python bench/thumbnails.py [--px 256] [--rounds 3] [--camera 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CLOTHING, machine, make_camera_photos, percentile
from embedder_service.decode import Decoder


def measure(decoder: Decoder, files: list[bytes], px: int, rounds: int) -> tuple[float, list[int]]:
    """(seconds per image, thumbnail sizes) over ``rounds`` passes."""
    sizes: list[int] = []
    started = time.perf_counter()
    for _ in range(rounds):
        sizes = [len(decoder.decode(data, "bench", px).thumbnail) for data in files]
    return (time.perf_counter() - started) / (rounds * len(files)), sizes


def report(label: str, files: list[bytes], px: int, rounds: int) -> None:
    decoder = Decoder(max_pixels=200_000_000)
    measure(decoder, files[:4], px, 1)  # warm-up
    plain, _ = measure(decoder, files, 0, rounds)
    with_thumb, sizes = measure(decoder, files, px, rounds)
    mean = statistics.mean(sizes)
    print(
        f"{label}: {len(files)} images, thumbnail {px} px: mean {mean / 1024:.1f} KiB, "
        f"median {statistics.median(sizes) / 1024:.1f}, p95 {percentile([float(s) for s in sizes], 95) / 1024:.1f}, "
        f"max {max(sizes) / 1024:.1f} -> {mean * 1e6 / 1e9:.1f} GB per million images"
    )
    print(
        f"{label}: decode {plain * 1000:.2f} ms/image without, {with_thumb * 1000:.2f} ms with "
        f"a thumbnail: x{with_thumb / plain:.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--px", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--camera", type=int, default=8, help="camera-size photos (0: skip)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    photos = [p.read_bytes() for p in sorted(CLOTHING.rglob("*.jpg"))]
    report("clothing-64", photos, args.px, args.rounds)
    if args.camera:
        folder = make_camera_photos(args.camera)
        camera = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))[: args.camera]]
        report("camera 6000x4000", camera, args.px, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
