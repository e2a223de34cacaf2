"""The short chaos run (`make chaos` runs the long one): the scaled stack as
processes (nats-server with a password, two gateways, two embedders behind
one target, the index writer and a read-only reader on a Milvus server and a
MariaDB of the run's own, the web face), photos arriving as a folder job and
client streams while four clients search, and two faults: a gateway killed
and nats-server killed. Nothing lost or doubled, the job SUCCEEDED with no
ResumeJob, and no search failed outside the grace after a fault."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tools.chaos.stack import missing_tools

pytestmark = [pytest.mark.processes, pytest.mark.nats, pytest.mark.milvus_server]


def test_two_faults_lose_nothing_and_searches_recover(tmp_path: Path) -> None:
    if lacks := missing_tools():
        pytest.fail("this machine lacks " + "; ".join(lacks))
    argv = [
        sys.executable,
        str(ROOT / "bench" / "chaos.py"),
        "--minutes", "2",
        "--every", "40",
        "--photos", "200",
        "--model", "mobilenet_v2",
        "--weights", "bundled",
        "--plan", "gateway-1:SIGKILL,nats:SIGKILL",
        "--work", str(tmp_path / "run"),
        "--photo-cache", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    print(done.stdout)
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-3000:]
    report = json.loads(lines[-1])
    assert report["faults"] == {"gateway-1": 1, "nats": 1}, report["fault_log"]
    assert report["photos"] == report["count"] == report["sql_ready"] == 200
    assert (report["lost"], report["doubled"]) == (0, 0), report
    assert report["jobs"] >= 1 and report["job_ends"] == {"SUCCEEDED": report["jobs"]}
    assert (report["jobs_failed"], report["resumes"]) == (0, 0)
    assert report["searches"] > 100
    assert report["search_failures_unexcused"] == 0, report["unexcused_examples"]
    assert all(f["ready_after_back_s"] is not None for f in report["fault_log"])
    assert done.returncode == 0, done.stderr[-3000:]
