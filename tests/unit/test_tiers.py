"""The fast tier stays fast: a test that starts a process of ours without the
``processes`` marker fails (tests/conftest.py's audit hook)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import VENV_BIN


def test_an_unmarked_test_cannot_start_python_or_the_cli() -> None:
    for argv in ([sys.executable, "-c", "pass"], [str(VENV_BIN / "imgsearch"), "--help"]):
        with pytest.raises(RuntimeError, match=r"mark it @pytest.mark.processes"):
            subprocess.run(argv, capture_output=True, timeout=60)


@pytest.mark.processes
def test_a_marked_test_can() -> None:
    done = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True)
    assert done.stdout.strip() == "42"
