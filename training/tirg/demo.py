"""Writes held-out scenes to try composed search with:

    python -m training.tirg.demo DIR [--queries 20] [--seed 17]

DIR/gallery/ gets every distinct scene of the first held-out examples as a
PNG (index it: imgsearch index DIR/gallery --model tirg_css -c scenes),
DIR/queries/ their source scenes, and DIR/queries.csv each query's file,
text and the gallery file it should find (imgsearch search
DIR/queries/q000.png --text "..." -c scenes).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from training.tirg.evaluate import Gallery
from training.tirg.scenes import render, take


def write(folder: Path, queries: int, seed: int) -> Path:
    examples = take("test", seed, queries)
    gallery = Gallery.of(examples)
    names = gallery.write(folder / "gallery")
    (folder / "queries").mkdir(exist_ok=True)
    table = folder / "queries.csv"
    with table.open("w", newline="") as out:
        rows = csv.writer(out)
        rows.writerow(["query", "text", "target"])
        for i, ex in enumerate(examples):
            query = folder / "queries" / f"q{i:03d}.png"
            render(ex.source).save(query)
            rows.writerow([query, ex.text, names[gallery.target[i]]])
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--seed", type=int, default=17)
    args = p.parse_args()
    table = write(args.folder, args.queries, args.seed)
    print(f"wrote {table} and the scenes beside it")


if __name__ == "__main__":
    main()
