"""EMBEDDER_COMPILE on a machine where torch.compile cannot work (here: the C++
compiler Inductor needs is missing): `auto` serves eager and says so (the
float model, where auto had quantized it to int8), `true` refuses to start.
Run as real processes, since Inductor reads CXX at import. On the CPU: on a
GPU, Inductor writes Triton kernels and needs no C++ compiler."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedder_service import int8
from imagesearch import healthcheck
from imagesearch.v1 import embedder_pb2, embedder_pb2_grpc
from tests.conftest import (
    CLOTHING,
    ROOT,
    Server,
    channel,
    clothing_images,
    embedder_env,
    free_port,
    spawn_embedder,
    wait_until,
)

pytestmark = [
    pytest.mark.compile,
    pytest.mark.processes,
]  # embedders as processes that try to compile


def no_compiler_env(tmp_path: Path, compile_mode: str) -> dict[str, str]:
    return {
        # The bundled model whose int8 the guard keeps (MobileNetV2's it refuses).
        "EMBEDDER_MODEL": "efficientnet_lite0",
        "EMBEDDER_TEXT": "off",
        "EMBEDDER_MAX_BATCH": "4",
        "EMBEDDER_WARMUP": "true",
        "EMBEDDER_COMPILE": compile_mode,
        "EMBEDDER_DEVICE": "cpu",
        "CXX": str(tmp_path / "no-such-c++"),
        # A cache of our own: kernels compiled by an earlier run must not hide the failure.
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
    }


def test_auto_serves_eager_when_compiling_fails(tmp_path: Path, text_embedder: Server) -> None:
    port = free_port()
    log = tmp_path / "embedder.log"
    proc = spawn_embedder(port, log, **no_compiler_env(tmp_path, "auto"))
    try:

        def serving() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"embedder exited {proc.returncode}:\n{log.read_text()}")
            return healthcheck.check(port)

        wait_until(serving, timeout=240)
        text = log.read_text()
        assert "model.compile_failed" in text and "running eager" in text, text
        assert "compiled=False" in text, text
        if int8.cpu_has_int8_dot():  # auto quantized first; uncompiled, the float model serves
            assert "model.int8 " in text and "model.int8_dropped" in text, text

        path = clothing_images()[0][0]
        request = embedder_pb2.EmbedderServiceEmbedRequest(
            images=[embedder_pb2.Image(name=path, data=(CLOTHING / path).read_bytes())]
        )
        got = embedder_pb2_grpc.EmbedderServiceStub(channel(port)).Embed(request, timeout=120)
        # The same model eager in fp32 (the session's EfficientNet-Lite0): once
        # int8 is dropped the fallback serves bf16 where the CPU has it, which
        # keeps EfficientNet-Lite0 within 0.99 of fp32 (test_accuracy).
        want = embedder_pb2_grpc.EmbedderServiceStub(channel(text_embedder.port)).Embed(
            request, timeout=120
        )
        a, b = (np.frombuffer(r.embeddings[0].vector, dtype="<f4") for r in (got, want))
        assert a.shape == (1280,) and float(a @ b) > 0.99
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_true_refuses_to_start_when_compiling_fails(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "embedder_service"],
        env=embedder_env(free_port(), **no_compiler_env(tmp_path, "true")),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 3, result.stderr[-3000:]
    assert "EMBEDDER_COMPILE=true, but torch.compile failed" in result.stderr
    assert "EMBEDDER_COMPILE=auto" in result.stderr
