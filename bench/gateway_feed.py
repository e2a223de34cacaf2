"""How fast one gateway feeds an embedder that costs nothing: the gateway
side of a GPU node (issue 46, item 5).

The stack runs as `imgsearch up` runs it (embedder, index on Milvus Lite +
SQLite, gateway: processes), except that the embedder's model is a no-op and
its decoder reads nothing (``bench/embedder_overhead.py``'s stub): whatever
limits a folder job then is the gateway (walk, reads, hashes, Embed calls,
Upserts) and the index. One job of N distinct 1024x768 JPEGs for each gateway
profile; prints img/s and the CPU ms per image of each process, then JSON.

    .venv/bin/python -m bench.gateway_feed [--n 1024]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import OUT, ROOT, machine, services
from bench.embedder_load import photos
from bench.embedder_overhead import PATH_ENV, TREE_ENV, cpu_of
from bench.jobs import run_job
from tools.procs import descendants

PROFILES = {
    "defaults (embed batch 32, 3 chunks, in flight 64/128 MB)": {},
    "GPU node (embed batch 64, 8 chunks, in flight 256/512 MB)": {
        "GATEWAY_EMBED_BATCH": "64",
        "GATEWAY_JOB_CONCURRENCY": "8",
        "GATEWAY_MAX_INFLIGHT_MB": "256",
        "GATEWAY_MAX_TOTAL_INFLIGHT_MB": "512",
    },
}


def large_photos(n: int) -> Path:
    """N distinct 1024x768 JPEGs (64 pictures, each copy with its number
    after the end marker: same pixels, another content id)."""
    folder = OUT / f"distinct-1024-{n}"
    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    base = photos(64, (1024, 768))
    for k in range(n):
        (folder / f"p{k:05d}.jpg").write_bytes(base[k % 64] + f"copy {k}".encode())
    (folder / ".complete").touch()
    return folder


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1024, help="photos in each job")
    args = p.parse_args()
    folder = large_photos(args.n)
    print(f"machine: {machine()}")
    print(f"one job of {args.n} distinct 1024x768 JPEGs per profile; no-op embedder")
    embedder = [sys.executable, str(ROOT / "bench" / "embedder_overhead.py"), "--serve"]
    report = {}
    for name, gateway_env in PROFILES.items():
        env = {**gateway_env, PATH_ENV: "stub", TREE_ENV: str(ROOT)}
        with tempfile.TemporaryDirectory() as tmp, services(Path(tmp), env, embedder) as ports:
            run_job(ports["gateway"], large_photos(64), "warmup")
            pids = {m: descendants(ports[f"pid:{m}"]) for m in ("gateway", "index", "embedder")}
            before = {m: cpu_of(p) for m, p in pids.items()}
            started = time.perf_counter()
            rate = run_job(ports["gateway"], folder, "feed")
            took = time.perf_counter() - started
            cpu = {m: (cpu_of(p) - before[m]) * 1000 / args.n for m, p in pids.items()}
        per = ", ".join(f"{m} {ms:.2f}" for m, ms in cpu.items())
        print(f"{name}: {rate:7.1f} img/s ({took:.1f} s); CPU ms/img: {per}")
        report[name] = {"img_per_s": round(rate, 1), "cpu_ms_per_image": cpu}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
