"""A short smoke run of each fuzz target (make fuzz runs them for minutes):
the harness starts, runs cases and finds no crash."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.processes  # the fuzzers run as processes


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("target", ["decoder", "gateway"])
def test_fuzz_smoke(target: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tools.fuzz", target, "--seconds", "5",
         "--artifacts", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["target"] == target and figures["crashes"] == 0
    assert figures["cases"] > 50, figures
    assert not list(tmp_path.iterdir())  # no crash input left
