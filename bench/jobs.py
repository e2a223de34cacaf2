"""Folder jobs: what the shared queue costs, and what a second gateway adds.

One embedder and one index (processes, as `imgsearch up` runs them) serve
every run; each run is the same job of N distinct photos into a collection of
its own, timed from StartIndexJob until the job ends:

1. the local job store (files and an in-process queue), one gateway;
2. NATS JetStream (GATEWAY_JOBS_URL, a nats-server started here), one gateway;
3. NATS, two gateways sharing the job's chunks.

Prints img/s for each and the ratios (NATS/local: the queue's overhead;
2 gateways/1: what the second adds while the embedder is shared), then one
JSON line. On a 2-core box the embedder is the bottleneck, so a second
gateway adds little here; the figure that matters is the overhead.

    .venv/bin/python bench/jobs.py [--n 512] [--model mobilenet_v2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CLOTHING, OUT, ROOT, free_port, machine, services, wait_healthy


def distinct_photos(n: int) -> Path:
    """N distinct files from the 64 photos (each one's bytes and its number
    after the JPEG's end marker: same pixels, another content id)."""
    folder = OUT / f"distinct-{n}"
    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    photos = sorted(CLOTHING.rglob("*.jpg"))
    for k in range(n):
        data = photos[k % len(photos)].read_bytes() + f"copy {k}".encode()
        (folder / f"p{k:05d}.jpg").write_bytes(data)
    (folder / ".complete").touch()
    return folder


@contextmanager
def nats_server(store: Path) -> Iterator[str]:
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    port = free_port()
    proc = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@contextmanager
def gateways(ports: dict[str, int], data: Path, count: int, jobs_url: str) -> Iterator[list[int]]:
    """``count`` more gateways before the running embedder and index, with
    jobs on ``jobs_url``."""
    procs, mine = [], []
    try:
        for k in range(count):
            port = free_port()
            env = {
                **os.environ,
                "GATEWAY_PORT": str(port),
                "GATEWAY_EMBEDDER_ADDR": f"127.0.0.1:{ports['embedder']}",
                "GATEWAY_INDEX_ADDR": f"127.0.0.1:{ports['index']}",
                "GATEWAY_DATA_DIR": str(data / f"gw{k}"),
                "GATEWAY_ALLOWED_ROOTS": str(OUT),
                "GATEWAY_JOBS_URL": jobs_url,
                "GATEWAY_LOG_LEVEL": "WARNING",
            }
            log = (data / f"gateway{k}.log").open("ab")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "gateway"], env=env, stdout=log, stderr=log, cwd=ROOT
                )
            )
            mine.append(port)
        for port in mine:
            wait_healthy(port, "imagesearch.v1.GatewayService")
        yield mine
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)


def run_job(port: int, folder: Path, collection: str) -> float:
    """img/s of one job through the gateway on ``port``."""
    from imagesearch.client import Client, JobState

    with Client(f"127.0.0.1:{port}", timeout=3600) as client:
        start = time.perf_counter()
        job = started = client.start_job(str(folder), collection=collection)
        for job in client.watch_job(started.job_id):  # noqa: B007 (the last one counts)
            pass
        took = time.perf_counter() - start
    if job.state is not JobState.SUCCEEDED or job.indexed != job.total:
        raise SystemExit(f"{collection}: the job ended {job.state.label}: {job}")
    return job.total / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=512, help="photos in the job")
    parser.add_argument("--model", default="mobilenet_v2", help="EMBEDDER_MODEL")
    args = parser.parse_args()
    folder = distinct_photos(args.n)
    print(machine())
    env = {"EMBEDDER_MODEL": args.model, "EMBEDDER_WEIGHTS": "random"}
    with tempfile.TemporaryDirectory() as tmp, services(Path(tmp) / "stack", env) as ports:
        run_job(ports["gateway"], distinct_photos(64), "warmup")  # models compiled, caches warm
        local = run_job(ports["gateway"], folder, "local")
        print(f"local store, 1 gateway: {local:7.1f} img/s")
        with nats_server(Path(tmp) / "nats") as url:
            with gateways(ports, Path(tmp), 1, url) as (one,):
                nats_one = run_job(one, folder, "nats1")
            print(f"NATS, 1 gateway:        {nats_one:7.1f} img/s ({nats_one / local:.2f}x local)")
            with gateways(ports, Path(tmp), 2, url) as (first, _):
                nats_two = run_job(first, folder, "nats2")
            print(f"NATS, 2 gateways:       {nats_two:7.1f} img/s ({nats_two / nats_one:.2f}x 1)")
    print(
        json.dumps(
            {
                "photos": args.n,
                "model": args.model,
                "local_img_s": round(local, 1),
                "nats_img_s": round(nats_one, 1),
                "nats_over_local": round(nats_one / local, 3),
                "nats_2_gateways_img_s": round(nats_two, 1),
                "two_over_one": round(nats_two / nats_one, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
