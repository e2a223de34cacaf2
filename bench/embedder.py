"""Embedder throughput alone, in one run, ResNet50 with random weights:

  model    the trunk on ready 224x224 uint8 batches (no decode, no gRPC): the
           seed's eager fp32 torchvision ResNet50 (baseline) against our
           ModelRunner at each --batches size and --dtypes precision
  service  Embed over gRPC against a real embedder (EMBEDDER_PROCESSES of
           them on one port): --client-procs client processes keep at least
           twice the max batch in flight, --per-call JPEGs a call
           (--photo-size, re-encoded clothing photos), with CPU decoding and
           with the batched device decode (EMBEDDER_GPU_DECODE)

    .venv/bin/python bench/embedder.py [--device auto] [--batches 64,256]
        [--dtypes float32,auto] [--seconds 10] [--skip-service]
        [--decodes pil,device] [--processes 1,4]

On a GPU (issue 46): --device cuda --dtypes float16 --batches 256
--decodes pil,device --processes 1,4 (bench/gpu_check.sh runs it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port, machine

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


def service_rate(
    env: dict[str, str],
    request: bytes,
    per_call: int,
    client_procs: int,
    in_flight: int,
    seconds: float,
) -> tuple[float, int]:
    """Images a second through a real embedder process (or processes) with
    ``env``, and the images kept in flight."""
    import os

    from bench.embedder_load import Load, serving

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
    threads = max(2, -(-in_flight // (client_procs * per_call)))
    argv = [sys.executable, "-m", "embedder_service"]
    with serving(argv, full, port):
        load = Load(port, request, per_call, client_procs, threads)
        load.warm()
        started = time.perf_counter()
        images = load.finish(load.start(seconds), seconds)
        return images / (time.perf_counter() - started), load.in_flight


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
    p.add_argument("--client-procs", type=int, default=4, help="client processes")
    p.add_argument("--per-call", type=int, default=64, help="images per Embed call")
    p.add_argument("--photo-size", default="1024x768")
    p.add_argument("--decodes", default="", help="pil,device (default: pil; on CUDA both)")
    p.add_argument(
        "--processes", default="", help="EMBEDDER_PROCESSES values (default: 1; on CUDA 1,4)"
    )
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
    from bench.embedder_load import embed_request, photos

    w, h = (int(v) for v in args.photo_size.split("x"))
    request = embed_request(photos(args.per_call, (w, h)))
    cuda = device.startswith("cuda")
    max_batch = max(batches)
    print(
        f"\nservice: Embed over gRPC, {args.client_procs} client processes, {args.per_call} "
        f"JPEGs of {w}x{h} a call, at least {2 * max_batch} in flight, "
        f"EMBEDDER_MAX_BATCH={max_batch}"
    )
    decodes = (args.decodes or ("pil,device" if cuda else "pil")).split(",")
    processes = (args.processes or ("1,4" if cuda else "1")).split(",")
    for decode in decodes:
        for count in processes:
            env = {
                "EMBEDDER_DEVICE": device,
                "EMBEDDER_MAX_BATCH": str(max_batch),
                "EMBEDDER_COMPILE": args.compile,
                "EMBEDDER_GPU_DECODE": "true" if decode == "device" else "false",
                "EMBEDDER_PROCESSES": count,
            }
            got, in_flight = service_rate(
                env, request, args.per_call, args.client_procs, 2 * max_batch, args.seconds
            )
            print(
                f"service  decode={decode:<6} processes={count:<2} in flight {in_flight:>5}  "
                f"{got:9.1f} img/s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
