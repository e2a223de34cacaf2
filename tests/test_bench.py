"""Every benchmark script starts both ways the README runs them: as
``python bench/X.py`` from anywhere and as ``python -m bench.X`` from the
repository root (``--help`` only: the benchmarks themselves are not tests)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPTS = sorted(
    p.stem
    for p in (ROOT / "bench").glob("*.py")
    if p.stem not in ("__init__", "common", "embedder_load")
)


@pytest.mark.processes
def test_every_bench_script_runs_as_a_script_and_as_a_module(tmp_path) -> None:
    assert "composed" in SCRIPTS and "search" in SCRIPTS
    runs = {}
    for name in SCRIPTS:
        runs[f"bench/{name}.py"] = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--help"],
            cwd=tmp_path,  # not the repository: the script finds its own way
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        runs[f"-m bench.{name}"] = subprocess.Popen(
            [sys.executable, "-m", f"bench.{name}", "--help"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    failed = {}
    for how, proc in runs.items():
        out, _ = proc.communicate(timeout=240)
        if proc.returncode != 0 or b"usage:" not in out:
            failed[how] = out.decode(errors="replace")[-400:]
    assert failed == {}


@pytest.mark.processes
def test_the_embedder_overhead_bench_measures_cpu_and_gil_per_image() -> None:
    """A short run of issue 46's bench: a real embedder with a no-op model,
    the stub and device paths, and the JSON its report ends with."""
    import json

    argv = ["--paths", "stub,device_batched", "--seconds", "1", "--per-call", "8"]
    argv += ["--clients", "1", "--threads", "1", "--max-batch", "8", "--no-processes"]
    out = subprocess.run(
        [sys.executable, "-m", "bench.embedder_overhead", *argv, "--photo-size", "320x240"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for path in ("stub", "device_batched"):
        figures = report["paths"][path]
        assert figures["img_per_s"] > 0 and figures["cpu_ms_per_image"] > 0, figures
        assert figures["gil_ms_per_image"] is not None, "py-spy did not sample the server"
