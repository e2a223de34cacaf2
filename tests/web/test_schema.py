"""schemathesis against /openapi.json on a real stack: generated requests
(bounded in number and time, fixed seed) to every operation get an answer
that is not a 500, and one that the schema describes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, Stack
from tests.web.conftest import Web

pytestmark = pytest.mark.processes  # schemathesis as a process (a minute and a half)


def test_no_generated_request_gets_a_500(web: Web, stack: Stack, tmp_path: Path) -> None:
    run = subprocess.run(
        [
            str(VENV_BIN / "schemathesis"),
            "run",
            f"{web.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "10",
            "--max-time",
            "90",
            "--request-timeout",
            "60",
            "--seed",
            "20261127",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=420,
        cwd=tmp_path,  # its example database (.schemathesis/) goes there
    )
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert "passed" in report and "failed" not in report.split("Test cases:")[-1], report
