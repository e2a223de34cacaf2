"""The contract: generated stubs are fresh, `buf lint` (STANDARD rules, no
ignores) passes, and `buf breaking` finds nothing against the committed
baseline image, so a change that breaks wire or JSON compatibility fails here."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from imagesearch import protogen

PROTOS = protogen.PROTO_DIR
BUF = protogen.ROOT / "tools" / "buf" / "node_modules" / ".bin" / "buf"


def test_generated_stubs_match_protos() -> None:
    assert protogen.stale_files() == [], "run `make proto` and commit the result"


@pytest.fixture(scope="module")
def buf() -> str:
    if BUF.exists():
        return str(BUF)
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed, so `make install` could not install the buf CLI")
    pytest.fail(f"{BUF} is missing although npm is installed: run `make install`")


def run_buf(buf: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [buf, *args], cwd=PROTOS, capture_output=True, text=True, timeout=120, check=False
    )


def test_buf_lint_standard_rules_pass(buf: str) -> None:
    config = (PROTOS / "buf.yaml").read_text()
    assert "STANDARD" in config and "ignore" not in config
    result = run_buf(buf, "lint")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_buf_breaking_against_the_baseline(buf: str) -> None:
    result = run_buf(buf, "breaking", "--against", "baseline.binpb")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_catches_a_removed_field(buf: str, tmp_path) -> None:
    """The check is live: a copy of the protos with a field removed fails it."""
    copy = tmp_path / "protos"
    shutil.copytree(PROTOS, copy)
    gateway = copy / "imagesearch" / "v1" / "gateway.proto"
    text = gateway.read_text()
    assert "  int32 top_k = 5;" in text
    gateway.write_text(text.replace("  int32 top_k = 5;", "  reserved 5;"))
    result = subprocess.run(
        [buf, "breaking", "--against", str(PROTOS / "baseline.binpb")],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "top_k" in result.stdout + result.stderr
