"""Every benchmark script starts both ways the README runs them: as
``python bench/X.py`` from anywhere and as ``python -m bench.X`` from the
repository root (``--help`` only: the benchmarks themselves are not tests)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPTS = sorted(
    p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in ("__init__", "common")
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
