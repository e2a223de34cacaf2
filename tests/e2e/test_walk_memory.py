"""A folder job's walk is streamed: a gateway walks a folder of 200,000
entries with about the memory it needs for 1,000 (peak RSS, read from the
gateway process itself)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imagesearch.v1 import gateway_pb2, gateway_pb2_grpc
from tests.conftest import (
    CLOTHING,
    ROOT,
    SHARED,
    Server,
    channel,
    free_port,
    get_job,
    start_index,
    start_job,
    wait_port,
    wait_until,
)

pytestmark = pytest.mark.processes
MIB = 1024 * 1024


def linked_folder(folder: Path, entries: int) -> Path:
    """``entries`` hard links of copies of four small photos (at most 50,000
    links each: ext4 allows 65,000), in one flat folder."""
    folder.mkdir()
    copies = []
    for k, photo in enumerate(sorted(CLOTHING.rglob("*.jpg"))[:4]):
        copies.append(folder.with_name(f"{folder.name}-{k}.jpg"))
        shutil.copyfile(photo, copies[-1])
    for n in range(entries):
        os.link(copies[n % 4], folder / f"{n:07d}.jpg")
    return folder


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


def walked(stub: gateway_pb2_grpc.GatewayServiceStub, folder: Path) -> gateway_pb2.Job:
    """Starts a job on ``folder``, waits until its walk has ended, cancels it."""
    job = start_job(stub, folder.name, folder)
    job = wait_until(lambda: (j := get_job(stub, job.job_id)).walk_complete and j, 600)
    stub.CancelJob(gateway_pb2.CancelJobRequest(job_id=job.job_id), timeout=60)
    return job


def test_walking_200k_entries_needs_no_more_memory_than_1k(
    embedder: Server, tmp_path: Path
) -> None:
    small = linked_folder(tmp_path / "small", 1_000)
    large = linked_folder(tmp_path / "large", 200_000)
    index = start_index(tmp_path / "index")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_PORT=str(port),
        GATEWAY_EMBEDDER_ADDR=embedder.addr,
        GATEWAY_INDEX_ADDR=index.addr,
        GATEWAY_DATA_DIR=str(tmp_path / "gw"),
        GATEWAY_ALLOWED_ROOTS=f"{SHARED / 'data'},{tmp_path}",
        GATEWAY_JOB_CONCURRENCY="1",
        MALLOC_ARENA_MAX="2",  # as `imgsearch up` and the images run it
    )
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway"], env=env, cwd=ROOT, stdout=out, stderr=out
        )
    try:
        assert wait_port("127.0.0.1", port, 120), log.read_text()
        stub = gateway_pb2_grpc.GatewayServiceStub(channel(port))
        wait_until(lambda: _ready(stub), 120)
        first = walked(stub, small)
        after_small = peak_rss(gateway.pid)
        second = walked(stub, large)
        after_large = peak_rss(gateway.pid)
        assert (first.total, second.total) == (1_000, 200_000)
        grew = after_large - after_small
        print(f"peak RSS {after_small / MIB:.0f} MiB after 1k, {after_large / MIB:.0f} after 200k")
        assert grew < 64 * MIB, f"the 200k walk took {grew / MIB:.0f} MiB more"
    finally:
        gateway.terminate()
        gateway.wait(timeout=60)
        index.running.stop(1)


def _ready(stub: gateway_pb2_grpc.GatewayServiceStub) -> bool:
    try:
        stub.ListJobs(gateway_pb2.ListJobsRequest(), timeout=10)
        return True
    except Exception:
        return False
