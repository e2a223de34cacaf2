"""Embedder throughput alone, in one run, ResNet50 with random weights:

  model    the trunk on ready 224x224 uint8 batches (no decode, no gRPC): the
           seed's eager fp32 torchvision ResNet50 (baseline) against our
           ModelRunner at each --batches size and --dtypes precision
  service  Embed over gRPC against a real embedder process: --clients threads,
           each sending --per-call JPEGs per call (--photo-size, re-encoded
           clothing photos), with EMBEDDER_GPU_DECODE off and, on CUDA, on

    .venv/bin/python bench/embedder.py [--device auto] [--batches 64,256]
        [--dtypes float32,auto] [--seconds 10] [--skip-service]

On a GPU: --dtypes float32,float16 --batches 64,256 (the issue's table).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CLOTHING, free_port, machine, wait_healthy

DIM = 2048


def rate(run_batch, batch: int, seconds: float) -> float:
    """Images per second over ``seconds`` (after two warm-up batches)."""
    for _ in range(2):
        run_batch()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run_batch()
        done += batch
    return done / (time.perf_counter() - started)


def baseline_model(device: str, batch: int, seconds: float) -> float:
    """Seed 002's model call: eager fp32 torchvision ResNet50 without its head,
    on normalised float batches, under no_grad."""
    import torch
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    model = torch.nn.Sequential(*(list(model.children())[:-1])).eval().to(device)
    x = torch.randn(batch, 3, 224, 224, device=device)

    def run() -> None:
        with torch.no_grad():
            model(x).squeeze().tolist()

    return rate(run, batch, seconds)


def our_model(device: str, dtype: str, compile_mode: str, batch: int, seconds: float):
    from embedder_service.model import make_runner
    from embedder_service.settings import EmbedderSettings

    runner = make_runner(
        EmbedderSettings(
            model="resnet50",
            weights="random",
            device=device,
            dtype=dtype,
            compile=compile_mode,
            max_batch=batch,
        )
    )
    started = time.perf_counter()
    runner.warm_up()
    warm = time.perf_counter() - started
    images = np.random.default_rng(0).integers(0, 255, (batch, 224, 224, 3), dtype=np.uint8)
    return rate(lambda: runner.embed(images), batch, seconds), runner, warm


def photos(n: int, size: tuple[int, int]) -> list[bytes]:
    from PIL import Image

    sources = sorted(CLOTHING.rglob("*.jpg"))
    out = []
    for i in range(n):
        img = Image.open(sources[i % len(sources)]).convert("RGB").resize(size)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85 + i % 10)
        out.append(buf.getvalue())
    return out


def service_rate(env: dict[str, str], images: list[bytes], clients: int, seconds: float):
    import os
    import subprocess

    from imagesearch.channels import make_channel
    from imagesearch.v1 import embedder_pb2, embedder_pb2_grpc

    port = free_port()
    full = {
        **os.environ,
        "EMBEDDER_HOST": "127.0.0.1",
        "EMBEDDER_PORT": str(port),
        "EMBEDDER_MODEL": "resnet50",
        "EMBEDDER_WEIGHTS": "random",
        "EMBEDDER_LOG_LEVEL": "WARNING",
        **env,
    }
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "embedder_service"], env=full, stdout=log, stderr=log
        )
        try:
            wait_healthy(port)
            stub = embedder_pb2_grpc.EmbedderServiceStub(make_channel(f"127.0.0.1:{port}", []))
            request = embedder_pb2.EmbedderServiceEmbedRequest(
                images=[embedder_pb2.Image(name=f"{i}.jpg", data=d) for i, d in enumerate(images)]
            )
            stub.Embed(request, timeout=600)  # warm
            done = [0]
            lock = threading.Lock()
            stop = time.perf_counter() + seconds

            def client() -> None:
                while time.perf_counter() < stop:
                    reply = stub.Embed(request, timeout=600)
                    assert not any(e.error for e in reply.embeddings)
                    with lock:
                        done[0] += len(reply.embeddings)

            threads = [threading.Thread(target=client) for _ in range(clients)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return done[0] / (time.perf_counter() - started)
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batches", default="32,64")
    p.add_argument("--dtypes", default="float32,auto", help="EMBEDDER_DTYPE values to compare")
    p.add_argument("--compile", default="auto", help="EMBEDDER_COMPILE for our side")
    p.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    p.add_argument("--skip-service", action="store_true")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--per-call", type=int, default=64, help="images per Embed call")
    p.add_argument("--photo-size", default="1024x768")
    args = p.parse_args()

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else "none"
    print(f"machine: {machine()}; device {device} (GPU: {gpu}); torch {torch.__version__}")
    print("model:   ResNet50, RANDOM weights (speed only; vectors are meaningless)\n")
    batches = [int(b) for b in args.batches.split(",")]
    for batch in batches:
        base = baseline_model(device, batch, args.seconds)
        print(f"model  batch {batch:>4}  baseline (seed: eager fp32)          {base:9.1f} img/s")
        for dtype in args.dtypes.split(","):
            ours, runner, warm = our_model(device, dtype, args.compile, batch, args.seconds)
            name = f"ours dtype={runner.info.dtype} compiled={runner.compiled}"
            print(
                f"model  batch {batch:>4}  {name:<36} {ours:9.1f} img/s  "
                f"{ours / base:5.2f}x  (warm-up {warm:.0f} s)"
            )
            del runner
    if args.skip_service:
        return 0
    w, h = (int(v) for v in args.photo_size.split("x"))
    images = photos(args.per_call, (w, h))
    print(
        f"\nservice: Embed over gRPC, {args.clients} clients x {args.per_call} JPEGs of {w}x{h} "
        f"per call, EMBEDDER_MAX_BATCH={max(batches)}"
    )
    decodes = ["false", "true"] if device.startswith("cuda") else ["false"]
    for gpu_decode in decodes:
        env = {
            "EMBEDDER_DEVICE": device,
            "EMBEDDER_MAX_BATCH": str(max(batches)),
            "EMBEDDER_COMPILE": args.compile,
            "EMBEDDER_GPU_DECODE": gpu_decode,
        }
        got = service_rate(env, images, args.clients, args.seconds)
        print(f"service  EMBEDDER_GPU_DECODE={gpu_decode:<5}  {got:9.1f} img/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
