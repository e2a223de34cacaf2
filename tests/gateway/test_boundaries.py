"""The gateway, the web face, the typed client and the CLI run without the
heavy dependencies, and no service imports another."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.processes
def test_gateway_web_and_cli_import_no_heavy_packages() -> None:
    code = (
        "import sys, gateway.app, gateway.__main__, imagesearch.client, imgsearch.cli, imgsearch.up, imgsearch.sheet\n"
        "import web_service.app, web_service.__main__\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'pymilvus', 'sqlalchemy', 'numpy') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_services_do_not_import_each_other() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    packages = ["embedder_service", "index_service", "gateway", "imgsearch", "web_service"]
    for pkg in packages:
        for path in (root / pkg).rglob("*.py"):
            text = path.read_text()
            for other in packages:
                if other != pkg and other != "imgsearch":
                    assert f"from {other}" not in text and f"import {other}" not in text, (
                        path,
                        other,
                    )


def test_the_web_face_calls_the_gateway_only_through_the_typed_client() -> None:
    """web_service talks to the gateway through imagesearch.client alone: no
    generated stubs, no channels of its own (so the contract has one client)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    files = list((root / "web_service").rglob("*.py"))
    assert files
    for path in files:
        text = path.read_text()
        for banned in ("imagesearch.v1", "_pb2", "make_channel", "insecure_channel"):
            assert banned not in text, (path, banned)
