"""The embedder's decoding alone: CPU per photo for what an ingest sends it.

The same photos bench/ingest.py makes (every 4th 4000x3000, the others
1280x960 to 3264x2448), decoded by ``embedder_service.decode.Decoder`` on
one thread as the embedder's decode thread does: JPEG draft decode, EXIF
orientation, resize and centre crop to the model's 224x224, and the
thumbnail the gateway stores (``--thumbnail-px``, 256 as by default; 0:
none). CPU time of this process per photo.

--against REF: the decoder of git revision REF (its decode.py from a
temporary worktree) on the same photos, in turn with this checkout's, for
--rounds rounds; prints both and the ratio.

    .venv/bin/python bench/decode.py [--n 160] [--thumbnail-px 256]
    .venv/bin/python bench/decode.py --against HEAD~1 [--rounds 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, make_photos, worktree


def load_decode(path: Path) -> ModuleType:
    """``decode.py`` at ``path`` as a module of its own (its imports of the
    project's other modules come from this checkout)."""
    spec = importlib.util.spec_from_file_location(f"decode_{abs(hash(path))}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def ms_per_photo(module: ModuleType, photos: list[bytes], thumbnail_px: int) -> float:
    decoder = module.Decoder(max_pixels=100_000_000)
    start = time.process_time()
    for i, data in enumerate(photos):
        decoder.decode(data, f"photo {i}", thumbnail_px)
    return (time.process_time() - start) / len(photos) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=160, help="photos (default 160)")
    parser.add_argument("--thumbnail-px", type=int, default=256)
    parser.add_argument("--against", default="", help="a git revision to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(machine())
    folder = make_photos(args.n)
    photos = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    mb = sum(map(len, photos)) / len(photos) / 1e6
    print(f"photos:  {len(photos)} JPEGs in {folder} ({mb:.2f} MB each on average)")
    from embedder_service import decode as ours

    decoders = {"this checkout": ours}
    with ExitStack() as stack:
        if args.against:
            ref = stack.enter_context(worktree(args.against))
            decoders[args.against] = load_decode(ref / "embedder_service" / "decode.py")
        for module in decoders.values():  # warm: imports, Pillow's plugins
            ms_per_photo(module, photos[:8], args.thumbnail_px)
        runs: dict[str, list[float]] = {name: [] for name in decoders}
        for _ in range(args.rounds if args.against else 1):
            for name, module in decoders.items():
                runs[name].append(ms_per_photo(module, photos, args.thumbnail_px))
    for name, values in runs.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(
            f"decode  {name:<16} thumbnail {args.thumbnail_px:>4} px  "
            f"{statistics.median(values):6.2f} ms CPU a photo  (rounds: {shown})"
        )
    if args.against:
        ours_ms, theirs_ms = (statistics.median(v) for v in runs.values())
        print(f"ratio this checkout / {args.against}: {ours_ms / theirs_ms:.3f}")


if __name__ == "__main__":
    main()
