"""Search by words on the clothing photos (``bench/quality.py --text``): for
each of the 8 classes a query in plain words ("shoes"), the same misspelled
("shoees") and in other words ("sneakers"); precision@10 of each against the
labels (8 photos a class: 0.8 at most), with query expansion off and on
(GATEWAY_TEXT_EXPAND), through the running stack as users call it."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CLOTHING, machine, services
from imagesearch.client import Client, Query

QUERIES: dict[str, dict[str, str]] = {
    "plain": {
        "Dress": "a dress",
        "Hat": "a hat",
        "Longsleeve": "a long-sleeve shirt",
        "Outwear": "a jacket",
        "Pants": "pants",
        "Shoes": "shoes",
        "Shorts": "shorts",
        "T-Shirt": "a t-shirt",
    },
    "misspelled": {
        "Dress": "a dres",
        "Hat": "a hatt",
        "Longsleeve": "a long-sleve shirt",
        "Outwear": "a jaket",
        "Pants": "pnats",
        "Shoes": "shoees",
        "Shorts": "shrots",
        "T-Shirt": "a tshirt",
    },
    "other words": {
        "Dress": "a gown",
        "Hat": "a cap",
        "Longsleeve": "a sweater",
        "Outwear": "a coat",
        "Pants": "trousers",
        "Shoes": "sneakers",
        "Shorts": "short trousers",
        "T-Shirt": "a tee",
    },
}


def precision_at_10(client: Client, rows: list[tuple[str, str]]) -> dict[str, dict[str, float]]:
    """{variant: {class: P@10}}."""
    label = dict(rows)
    out: dict[str, dict[str, float]] = {}
    for variant, queries in QUERIES.items():
        results = client.search_many(
            [Query(text=t) for t in queries.values()], collection="words", top_k=10
        )
        out[variant] = {
            cls: sum(label.get(h.path) == cls for h in hits) / 10
            for cls, hits in zip(queries, results, strict=True)
        }
    return out


def run(configs: str, weights: str, rows: list[tuple[str, str]]) -> int:
    print(f"machine: {machine()}")
    print(f"weights {weights}; {len(rows)} photos, {len(QUERIES['plain'])} classes")
    table: dict[str, dict[str, dict[str, float]]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="imgsearch-words-"))
    try:
        for config in configs.split(","):
            model, _, pooling = config.partition("/")
            for expand in ("0", "3"):
                env = {
                    "EMBEDDER_MODEL": model,
                    "EMBEDDER_WEIGHTS": weights,
                    "EMBEDDER_POOLING": pooling or "avg",
                    "EMBEDDER_COMPILE": "false",
                    "GATEWAY_TEXT_EXPAND": expand,
                }
                started = time.perf_counter()
                column = f"{config} expand {expand}"
                with (
                    services(tmp / f"{model}-{expand}", env) as ports,
                    Client(f"127.0.0.1:{ports['gateway']}", timeout=600) as client,
                ):
                    photos = [(n, (CLOTHING / n).read_bytes()) for n, _ in rows]
                    client.index_images(photos, collection="words")
                    table[column] = precision_at_10(client, rows)
                print(f"measured {column} ({time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    columns = list(table)
    print("\n| class | query | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for variant, queries in QUERIES.items():
        for cls, text in queries.items():
            cells = " | ".join(f"{table[c][variant][cls]:.1f}" for c in columns)
            print(f'| {cls} | {variant}: "{text}" | {cells} |')
        means = " | ".join(
            f"**{sum(table[c][variant].values()) / len(queries):.3f}**" for c in columns
        )
        print(f"| **mean** | {variant} | {means} |")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--configs", default="efficientnet_lite0/avg", help="MODEL/POOLING,...")
    p.add_argument("--weights", default="bundled")
    args = p.parse_args()
    from bench.quality import originals

    return run(args.configs, args.weights, originals())


if __name__ == "__main__":
    sys.exit(main())
