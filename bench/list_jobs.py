"""ListJobs with many finished jobs on NATS: the first page's latency and what
the gateway's memory grows by.

For each code tree (this one, and with ``--baseline REF`` a git worktree of
REF, run in the same way right before it): a nats-server of its own, N jobs
made through that tree's own NatsJobStore and ended SUCCEEDED (their work
units purged), then a gateway process of that tree on it (no embedder or
index: listing needs neither). Timed: ``--calls`` ListJobs of the first page
(100 jobs), one after another; measured: the gateway's RSS once it serves and
after the calls. Prints a table and one JSON line.

    .venv/bin/python bench/list_jobs.py [--jobs 20000] [--baseline b94abf0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, free_port, machine, wait_healthy, worktree
from bench.jobs import nats_server

PREFIX = "bench"
SERVICE = "imagesearch.v1.GatewayService"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fill(url: str, jobs: int) -> None:
    """Run inside the tree under test (``--fill``): ``jobs`` finished jobs
    made through its own store, then the queued walks purged."""
    from gateway.jobstore import SUCCEEDED, JobRecord
    from gateway.natsjobs import NatsJobStore

    store = NatsJobStore(url, PREFIX, 1000)
    start = int(time.time() * 1000) - jobs

    def one(n: int) -> None:
        job_id = f"{n:012x}"
        store.create(JobRecord(job_id, f"c{n % 4}", "/data/photos", True, created_at_ms=start + n))
        store.update(job_id, state=SUCCEEDED, total=64, done=64, indexed=64, walk_complete=True)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(jobs)))

    async def purge() -> None:
        await store._js.purge_stream(f"{PREFIX}_work")

    store._call(purge())
    store.close()


def measure(tree: Path, jobs: int, calls: int) -> dict[str, float]:
    from imagesearch.channels import make_channel
    from imagesearch.v1 import gateway_pb2, gateway_pb2_grpc

    with tempfile.TemporaryDirectory() as tmp, nats_server(Path(tmp) / "nats") as url:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--fill", url, "--jobs", str(jobs)],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
            check=True,
        )
        filled_s = time.perf_counter() - started
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(tree),
            "GATEWAY_PORT": str(port),
            "GATEWAY_EMBEDDER_ADDR": "127.0.0.1:9",
            "GATEWAY_INDEX_ADDR": "127.0.0.1:9",
            "GATEWAY_DATA_DIR": str(Path(tmp) / "gw"),
            "GATEWAY_ALLOWED_ROOTS": tmp,
            "GATEWAY_JOBS_URL": url,
            "GATEWAY_JOBS_PREFIX": PREFIX,
            "GATEWAY_LOG_LEVEL": "WARNING",
        }
        if "max_finished_jobs" in (tree / "gateway" / "settings.py").read_text():
            env["GATEWAY_MAX_FINISHED_JOBS"] = str(jobs * 2)
        log = (Path(tmp) / "gateway.log").open("ab")
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway"], env=env, stdout=log, stderr=log, cwd=tree
        )
        try:
            started = time.perf_counter()
            wait_healthy(port, "", timeout=300)
            start_s = time.perf_counter() - started
            before = rss_mb(gateway.pid)
            stub = gateway_pb2_grpc.GatewayServiceStub(make_channel(f"127.0.0.1:{port}", []))
            times = []
            for _ in range(calls):
                t = time.perf_counter()
                page = stub.ListJobs(gateway_pb2.ListJobsRequest(page_size=100), timeout=300)
                times.append(time.perf_counter() - t)
                assert len(page.jobs) == 100 and page.next_page_token
            after = rss_mb(gateway.pid)
        finally:
            gateway.terminate()
            gateway.wait(timeout=60)
    return {
        "fill_s": round(filled_s, 1),
        "start_s": round(start_s, 2),
        "first_ms": round(times[0] * 1000, 1),
        "median_ms": round(statistics.median(times) * 1000, 1),
        "max_ms": round(max(times) * 1000, 1),
        "rss_start_mb": round(before, 1),
        "rss_growth_mb": round(after - before, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--baseline", default="", help="a git ref to measure first, the same way")
    parser.add_argument("--fill", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fill:
        fill(args.fill, args.jobs)
        return
    results: dict[str, dict[str, float]] = {}
    if args.baseline:
        with worktree(args.baseline) as tree:
            results[args.baseline] = measure(tree, args.jobs, args.calls)
    results["HEAD"] = measure(ROOT, args.jobs, args.calls)
    print(f"{machine()}; {args.jobs} finished jobs on NATS, {args.calls} ListJobs of 100")
    for name, r in results.items():
        print(
            f"  {name:>10}: first {r['first_ms']} ms, median {r['median_ms']} ms, "
            f"max {r['max_ms']} ms; RSS {r['rss_start_mb']} MiB at start, "
            f"+{r['rss_growth_mb']} MiB after; started in {r['start_s']} s"
        )
    if args.baseline:
        ratio = results["HEAD"]["median_ms"] / results[args.baseline]["median_ms"]
        print(f"  median HEAD / {args.baseline}: {ratio:.3f}")
    print(json.dumps({"jobs": args.jobs, "calls": args.calls, "results": results}))


if __name__ == "__main__":
    main()
