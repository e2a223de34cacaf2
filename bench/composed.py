"""Composed image+text retrieval (TIRG, seed 003) on held-out generated scenes.

    python -m bench.composed --eval

1. Offline: the shipped checkpoints (embedder_service/tirg: tirg_css.pt and
   baselines_css.pt) on the held-out split, as the TIRG paper measures CSS:
   the gallery is every distinct held-out scene, each query's own source
   image is left out of its ranking, a hit is the target scene. Recall@1/5/10
   for image only, text only, concat and TIRG, and TIRG's R@1 on the queries
   whose text names a colour and shape together that training never did.
2. End to end: the gallery indexed as PNG files through a running stack
   (gateway -> embedder with EMBEDDER_MODEL=tirg_css -> index, separate
   processes), then a sample of the same queries searched with image + text
   over gRPC; R@1 beside the offline R@1 of the same sample.

The last line is one JSON object (image_only_R@1, text_only_R@1, concat_R@1,
tirg_R@1, e2e_tirg_R@1, ...).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, services
from embedder_service.tirg.net import ComposedRetrieval
from imagesearch.client import Client, Query
from training.tirg.evaluate import Gallery, evaluate, recalls
from training.tirg.scenes import png, take
from training.tirg.train import BASELINES, SERVED

# Rows of the table: our name, the checkpoint's composer, the paper's CSS R@1
# (Vo et al. 2019, table 2, 3D images).
MODELS = (
    ("image only", "image", 6.3),
    ("text only", "text", 0.1),
    ("concat", "concat", 60.6),
    ("TIRG", "tirg", 73.7),
)
SEED = 17  # the held-out split the training script reports on


def offline(held_out: list, baselines: dict) -> tuple[dict[str, dict[str, float]], object]:
    table: dict[str, dict[str, float]] = {}
    tirg_rank = None
    for label, kind, _ in MODELS:
        if kind == "tirg":
            net = ComposedRetrieval.load(torch.load(SERVED, weights_only=True))
        else:
            net = ComposedRetrieval.load(baselines[kind])
        scores, rank = evaluate(net, held_out)
        table[label] = scores
        if kind == "tirg":
            tirg_rank = rank
        print(f"offline {label}: {json.dumps(scores)}", flush=True)
    return table, tirg_rank


def end_to_end(held_out: list, sample: int, work: Path) -> tuple[float, int]:
    """R@1 of the first ``sample`` queries through the running stack."""
    gallery = Gallery.of(held_out)
    paths = [str(p) for p in gallery.write(work / "gallery")]
    env = {"EMBEDDER_MODEL": "tirg_css", "EMBEDDER_COMPILE": "false", "GATEWAY_MAX_QUERIES": "64"}
    with services(work / "stack", env) as ports:
        client = Client(f"127.0.0.1:{ports['gateway']}", timeout=600)
        started = time.perf_counter()
        report = client.index_files(paths, collection="scenes")
        print(
            f"indexed {report.indexed} gallery images through the stack in "
            f"{time.perf_counter() - started:.0f} s ({report.failed} failed)",
            flush=True,
        )
        hits = 0
        started = time.perf_counter()
        for start in range(0, sample, 64):
            chunk = range(start, min(start + 64, sample))
            queries = [Query(image=png(held_out[i].source), text=held_out[i].text) for i in chunk]
            answers = client.search_many(queries, collection="scenes", top_k=2)
            for i, found in zip(chunk, answers, strict=True):
                ranked = [h.path for h in found if h.path != paths[gallery.source[i]]]
                hits += bool(ranked) and ranked[0] == paths[gallery.target[i]]
        seconds = time.perf_counter() - started
        client.close()
    print(f"searched {sample} composed queries in {seconds:.1f} s", flush=True)
    return hits / sample, report.indexed


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--eval", action="store_true", help="evaluate the shipped checkpoints")
    p.add_argument("--held-out", type=int, default=2000, help="held-out queries")
    p.add_argument("--sample", type=int, default=2000, help="of them, searched end to end")
    p.add_argument("--no-stack", action="store_true", help="offline figures only")
    args = p.parse_args()
    if not args.eval:
        p.error("say --eval (the only mode)")
    print(f"machine: {machine()}")
    held_out = take("test", SEED, args.held_out)
    gallery = Gallery.of(held_out)
    print(
        f"{len(held_out)} held-out queries, gallery of {len(gallery.scenes)} distinct scenes; "
        f"{sum(ex.unseen for ex in held_out)} texts name a colour and shape unseen together"
    )
    table, tirg_rank = offline(held_out, torch.load(BASELINES, weights_only=True))
    assert tirg_rank is not None
    unseen = [i for i, ex in enumerate(held_out) if ex.unseen]
    unseen_r1 = recalls(tirg_rank[unseen])["R@1"] if unseen else float("nan")  # type: ignore[index]
    sample = min(args.sample, len(held_out))
    offline_sample = recalls(tirg_rank[:sample])["R@1"]  # type: ignore[index]
    e2e = float("nan")
    if not args.no_stack:
        work = Path(tempfile.mkdtemp(prefix="imgsearch-composed-"))
        try:
            e2e, _ = end_to_end(held_out, sample, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| model | R@1 | R@5 | R@10 | paper R@1 (CSS 3D) |")
    print("|---|---|---|---|---|")
    for label, _, paper in MODELS:
        r = table[label]
        print(
            f"| {label} | {r['R@1']:.3f} | {r['R@5']:.3f} | {r['R@10']:.3f} | {paper / 100:.3f} |"
        )
    print(
        f"\nTIRG R@1 on the {len(unseen)} queries with unseen colour+shape words: {unseen_r1:.3f}"
    )
    print(
        f"end to end, first {sample} queries: R@1 {e2e:.3f} through the stack, "
        f"{offline_sample:.3f} offline"
    )
    print(
        json.dumps(
            {
                "image_only_R@1": round(table["image only"]["R@1"], 4),
                "text_only_R@1": round(table["text only"]["R@1"], 4),
                "concat_R@1": round(table["concat"]["R@1"], 4),
                "tirg_R@1": round(table["TIRG"]["R@1"], 4),
                "tirg_R@5": round(table["TIRG"]["R@5"], 4),
                "tirg_R@10": round(table["TIRG"]["R@10"], 4),
                "tirg_unseen_R@1": round(unseen_r1, 4),
                "e2e_tirg_R@1": None if args.no_stack else round(e2e, 4),
                "offline_sample_tirg_R@1": round(offline_sample, 4),
                "held_out": len(held_out),
                "e2e_sample": sample,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
