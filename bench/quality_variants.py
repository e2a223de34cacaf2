"""The ideas of issue 16 that would change how vectors are made or compared,
measured on the vectors themselves before any is built into the product:
multi-scale embedding (crops of 224 and 320 averaged), alpha-query expansion
(the query plus its nearest stored neighbours, weighted by similarity to the
power alpha), and PCA-whitening learned on the collection. Same photos,
edits and measures as bench/quality.py; the vectors come from real embedder
processes (EmbedderService.Embed), the ranking is done here with numpy.

    .venv/bin/python bench/quality_variants.py [--model efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CLOTHING, machine, services
from bench.quality import EDITS, average_precision, edited_copies, originals
from imagesearch.v1 import embedder_pb2, embedder_pb2_grpc


def embed_all(port: int, images: list[bytes]) -> np.ndarray:
    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 256 << 20)]
    ) as ch:
        stub = embedder_pb2_grpc.EmbedderServiceStub(ch)
        out = []
        for start in range(0, len(images), 32):
            request = embedder_pb2.EmbedderServiceEmbedRequest(
                images=[
                    embedder_pb2.Image(name=f"#{start + i}", data=d)
                    for i, d in enumerate(images[start : start + 32])
                ]
            )
            for e in stub.Embed(request, timeout=600).embeddings:
                assert not e.error, e.error
                out.append(np.frombuffer(e.vector, dtype="<f4"))
    return np.stack(out)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def alpha_qe(queries: np.ndarray, db: np.ndarray, n: int = 2, alpha: float = 3.0) -> np.ndarray:
    sims = queries @ db.T
    top = np.argsort(-sims, axis=1)[:, :n]
    weights = np.take_along_axis(np.clip(sims, 0, 1), top, axis=1) ** alpha
    return unit(queries + np.einsum("qn,qnd->qd", weights, db[top]))


def pca_whitening(
    db: np.ndarray, dims: int, shrink: float = 0.5
) -> Callable[[np.ndarray], np.ndarray]:
    mean = db.mean(axis=0)
    _, s, vt = np.linalg.svd(db - mean, full_matrices=False)
    keep = min(dims, len(s) - 1)
    scale = (s[:keep] ** 2 / len(db) + 1e-6) ** -shrink
    return lambda v: unit(((v - mean) @ vt[:keep].T) * scale)


def score(
    db: np.ndarray, asked: np.ndarray, copies: np.ndarray, classes: list[str], kinds: int
) -> dict[str, float]:
    """``asked``: the class queries (the stored photos, as queries)."""
    n = len(db)
    ranks = np.argsort(-(copies @ db.T), axis=1)
    truth = np.tile(np.arange(n), kinds)
    r1 = float(np.mean(ranks[:, 0] == truth))
    self_sims = asked @ db.T
    np.fill_diagonal(self_sims, -np.inf)
    order = np.argsort(-self_sims, axis=1)[:, : n - 1]
    p5, aps = [], []
    for i in range(n):
        same = [classes[j] == classes[i] for j in order[i]]
        p5.append(sum(same[:5]) / 5)
        aps.append(average_precision(same, sum(c == classes[i] for c in classes) - 1))
    return {"copy R@1": r1, "class P@5": float(np.mean(p5)), "class mAP": float(np.mean(aps))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="efficientnet_lite0")
    args = p.parse_args()
    rows = originals()
    names, classes = [n for n, _ in rows], [c for _, c in rows]
    db_bytes = [(CLOTHING / n).read_bytes() for n in names]
    copy_bytes = [data for edited in edited_copies(names).values() for data in edited]
    print(f"machine: {machine()}")
    vectors: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for crop in (224, 320):
            env = {
                "EMBEDDER_MODEL": args.model,
                "EMBEDDER_WEIGHTS": "bundled",
                "EMBEDDER_COMPILE": "false",
                "EMBEDDER_IMAGE_SIZE": str(crop),
                "EMBEDDER_RESIZE": str(round(crop * 256 / 224)),
            }
            with services(Path(tmp) / str(crop), env) as ports:
                vectors[crop] = (
                    embed_all(ports["embedder"], db_bytes),
                    embed_all(ports["embedder"], copy_bytes),
                )
    kinds = len(EDITS)
    db224, cp224 = vectors[224]
    db320, cp320 = vectors[320]
    # (stored vectors, class queries, copy queries) per variant
    variants = {
        "224 (as served)": (db224, db224, cp224),
        "320": (db320, db320, cp320),
        "224 + 320 averaged": (unit(db224 + db320), unit(db224 + db320), unit(cp224 + cp320)),
        # Query side only: a search option that leaves stored vectors alone.
        # (A stored photo's first neighbour is itself: n=3 there.)
        "alpha-QE, queries only (alpha=3, n=2)": (
            db224,
            alpha_qe(db224, db224, n=3),
            alpha_qe(cp224, db224),
        ),
    }
    dba = alpha_qe(db224, db224, n=3)  # stored vectors expanded too (database-side)
    variants["alpha-QE + stored side (alpha=3)"] = (dba, dba, alpha_qe(cp224, dba))
    for dims in (32, 63):
        white = pca_whitening(db224, dims)
        variants[f"PCA-whitening ({dims} dims, on the 64)"] = (
            white(db224),
            white(db224),
            white(cp224),
        )
    print(f"\nmodel {args.model}, bundled weights; {len(names)} photos, {len(cp224)} copies\n")
    print("| variant | copy R@1 | class P@5 | class mAP |\n|---|---|---|---|")
    for name, (db, asked, cp) in variants.items():
        s = score(db, asked, cp, classes, kinds)
        print(f"| {name} | {s['copy R@1']:.3f} | {s['class P@5']:.3f} | {s['class mAP']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
