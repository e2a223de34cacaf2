"""A newcomer's grpcurl session against the gateway (as in the README)."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest

from tests.conftest import ODD, VENV_BIN, Stack


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "grpcurl"), "-plaintext", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_reflection_count_and_search(stack: Stack) -> None:
    listed = grpcurl(stack.gateway.addr, "list")
    assert listed.returncode == 0, listed.stderr
    assert "imagesearch.v1.GatewayService" in listed.stdout.split()
    described = grpcurl(stack.gateway.addr, "describe", "imagesearch.v1.GatewayService")
    assert "rpc Search" in described.stdout

    image = base64.b64encode((ODD / "hopper.jpg").read_bytes()).decode()
    indexed = grpcurl(
        "-d",
        json.dumps({"collection": "curl", "name": "hopper.jpg", "data": image}),
        stack.gateway.addr,
        "imagesearch.v1.GatewayService/IndexImages",
    )
    assert indexed.returncode == 0, indexed.stderr
    assert json.loads(indexed.stdout)["indexed"] == "1"  # int64 as a JSON string

    counted = grpcurl(
        "-d", '{"collection": "curl"}', stack.gateway.addr, "imagesearch.v1.GatewayService/Count"
    )
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout)["count"] == "1"

    found = grpcurl(
        "-d",
        json.dumps({"collection": "curl", "image": image, "top_k": 1}),
        stack.gateway.addr,
        "imagesearch.v1.GatewayService/Search",
    )
    hit = json.loads(found.stdout)["hits"][0]
    assert hit["path"] == "hopper.jpg" and hit["score"] > 0.99

    missing = grpcurl(
        "-d", '{"collection": "nope"}', stack.gateway.addr, "imagesearch.v1.GatewayService/Count"
    )
    assert missing.returncode != 0 and "NotFound" in missing.stderr
