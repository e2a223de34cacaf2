"""What the embedder's service spends per image besides the model: CPU time
and time holding the GIL, with the model replaced by a no-op.

The real server, servicer, batcher and decoders run in their own process (as
``python -m embedder_service`` runs them) with a model that answers the same unit
vector for every image at once. Client processes keep --clients x --threads x
--per-call images in flight (128: twice the max batch of 64), 1024x768 JPEGs.
For each path:

  pil             PIL decoding in the decode threads (the default)
  device_batched  EMBEDDER_GPU_DECODE=true, run on the CPU: headers read in the
                  servicer's thread, JPEGs decoded a batch at a time
  stub            a decoder that reads nothing (gRPC, bytes and the batcher only)

it prints img/s, the server's CPU ms per image (all its threads) and its GIL
ms per image (py-spy ``record --gil``: samples in which a thread of the
server holds the GIL, over the samples taken), then one path again
with EMBEDDER_PROCESSES=2 against 1 (the stub path: gRPC-bound, not decode-bound).
The last line is JSON: {"paths": {path: figures}, "before": {path: figures}
(with --before), "processes": {...}, "processes_ratio": x}.

    .venv/bin/python -m bench.embedder_overhead [--seconds 8] [--paths ...]
        [--before REV]   # the same paths served by an older revision, in this run
        [--tree DIR]     # serve another checkout instead of this one
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIM = 2048  # a ResNet50's vector: the answer's size
TREE_ENV = "BENCH_OVERHEAD_TREE"
PATH_ENV = "BENCH_OVERHEAD_PATH"
PATHS = ("pil", "device_batched", "stub")
SAMPLE_RATE = 250  # py-spy samples a second


# --- the server side: a real embedder with a no-op model -----------------------


def serve(path: str) -> int:
    """``python -m embedder_service`` with the model (and for ``stub`` the
    decoder) replaced; runs in the tree named by BENCH_OVERHEAD_TREE."""
    import numpy as np
    import torch

    from embedder_service import app
    from embedder_service.__main__ import __doc__ as doc
    from embedder_service.decode import Decoded, Decoder
    from embedder_service.model import ModelInfo, ModelRunner
    from embedder_service.settings import EmbedderSettings
    from imagesearch.service_main import run

    class NoopRunner(ModelRunner):
        """A model that costs nothing: one unit vector of a ResNet50's size."""

        def __init__(self, settings: EmbedderSettings) -> None:  # no super(): no network
            self.device = torch.device("cpu")
            self.compiled = False
            self.max_batch = settings.max_batch
            self.text = None
            self.info = ModelInfo(
                model="noop", dim=DIM, weights="none", weights_digest="0" * 64,
                pretrained=False, pooling="avg", device="cpu", dtype="float32",
                image_size=224, note="no-op model (bench/embedder_overhead.py)",
            )  # fmt: skip

        def embed_with_text(self, images: object, texts: object = ()) -> tuple[np.ndarray, None]:
            return np.full((len(images), DIM), DIM**-0.5, np.float32), None  # type: ignore[arg-type]

        def warm_up(self) -> float:
            return 0.0

    class StubDecoder(Decoder):
        """Reads nothing: every image is the same grey square."""

        pixels = np.full((224, 224, 3), 128, np.uint8)

        def decode(self, data: bytes, name: str, thumbnail_px: int = 0) -> Decoded:
            return Decoded(self.pixels, 1024, 768)

    app.make_runner = NoopRunner
    if path == "stub":
        if hasattr(app, "make_decoders"):
            real = app.make_decoders
            app.make_decoders = lambda s, r: (StubDecoder(s.max_pixels), real(s, r)[1])  # type: ignore[assignment]
        else:  # a tree from before the device decoder
            app.make_decoder = lambda s, r: StubDecoder(s.max_pixels)  # type: ignore[attr-defined]
    elif path == "device_batched" and not hasattr(app, "make_decoders"):
        # Before: the per-image torchvision decoder, forced onto the CPU.
        from embedder_service.gpu_decode import TorchJpegDecoder

        app.make_decoder = lambda s, r: TorchJpegDecoder(torch.device("cpu"), s.max_pixels)  # type: ignore[attr-defined]
    return run("embedder_service", EmbedderSettings, "EMBEDDER_", app.start, doc)


# --- the measuring side ---------------------------------------------------------


def cpu_of(pids: list[int]) -> float:
    """CPU seconds of ``pids`` together (bench.common.cpu_seconds each)."""
    from bench.common import cpu_seconds

    return sum(cpu_seconds(pid) for pid in pids)


@dataclass
class Figures:
    img_per_s: float
    cpu_ms_per_image: float
    gil_ms_per_image: float | None

    def json(self) -> dict[str, float | None]:
        gil = None if self.gil_ms_per_image is None else round(self.gil_ms_per_image, 3)
        return {
            "img_per_s": round(self.img_per_s, 1),
            "cpu_ms_per_image": round(self.cpu_ms_per_image, 3),
            "gil_ms_per_image": gil,
        }


def gil_seconds(pid: int, seconds: float, subprocesses: bool) -> subprocess.Popen[bytes] | None:
    """py-spy sampling which thread holds the GIL; None without py-spy."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    out = Path(tempfile.mkstemp(suffix=".txt")[1])
    argv = [spy, "record", "--pid", str(pid), "--gil", "--nonblocking", "--format", "raw"]
    argv += ["--rate", str(SAMPLE_RATE), "--duration", str(max(1, int(seconds))), "-o", str(out)]
    if subprocesses:
        argv.append("--subprocesses")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.out = out  # type: ignore[attr-defined]
    return proc


def read_gil(spy: subprocess.Popen[bytes] | None, seconds: float) -> float | None:
    """Seconds some thread of the server held the GIL in the sampled window."""
    if spy is None or spy.wait(timeout=seconds + 60) != 0:
        return None
    out: Path = spy.out  # type: ignore[attr-defined]
    samples = sum(int(line.rsplit(" ", 1)[1]) for line in out.read_text().splitlines() if line)
    out.unlink()
    return samples / SAMPLE_RATE


def measure(
    path: str, args: argparse.Namespace, request: bytes, tree: str, processes: int = 1
) -> Figures:
    """One path served from the checkout ``tree``."""
    from bench.common import free_port
    from bench.embedder_load import Load, serving
    from tools.procs import descendants

    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": tree,
        TREE_ENV: tree,
        PATH_ENV: path,
        "EMBEDDER_HOST": "127.0.0.1",
        "EMBEDDER_PORT": str(port),
        "EMBEDDER_LOG_LEVEL": "WARNING",
        "EMBEDDER_MAX_BATCH": str(args.max_batch),
        "EMBEDDER_GPU_DECODE": "true" if path == "device_batched" else "false",
        "EMBEDDER_DEVICE": "cpu",
        "EMBEDDER_PROCESSES": str(processes),
    }
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve"]
    with serving(argv, env, port, cwd=tree) as server:
        load = Load(port, request, args.per_call, args.clients, args.threads)
        load.warm()
        pids = descendants(server.pid)
        cpu0 = cpu_of(pids)
        started = time.perf_counter()
        spy = gil_seconds(server.pid, args.seconds, processes > 1)
        images = load.finish(load.start(args.seconds), args.seconds)
        elapsed = time.perf_counter() - started
        cpu = cpu_of(pids) - cpu0
        gil = read_gil(spy, args.seconds)
    # py-spy sampled the first ``seconds`` of the load: its share of the images.
    sampled = images * min(1.0, int(max(1, args.seconds)) / elapsed)
    return Figures(
        images / elapsed,
        cpu * 1000 / images,
        None if gil is None else gil * 1000 / sampled,
    )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--per-call", type=int, default=32, help="images per Embed call")
    p.add_argument("--clients", type=int, default=2, help="client processes")
    p.add_argument("--threads", type=int, default=2, help="calls in flight per client process")
    p.add_argument("--photo-size", default="1024x768")
    p.add_argument("--tree", default="", help="serve this checkout instead")
    p.add_argument(
        "--before", default="", help="also serve this git revision (a temporary worktree)"
    )
    p.add_argument(
        "--processes-path", default="stub", help="the path run with 2 processes against 1"
    )
    p.add_argument("--no-processes", action="store_true", help="skip the 2-process run")
    args, rest = p.parse_known_args()
    if args.serve:
        sys.argv = [sys.argv[0], *rest]  # the embedder's own flags (the supervisor's --port)
        return serve(os.environ[PATH_ENV])

    from bench.common import machine
    from bench.embedder_load import embed_request, photos

    w, h = (int(v) for v in args.photo_size.split("x"))
    in_flight = args.clients * args.threads * args.per_call
    request = embed_request(photos(args.per_call, (w, h)))
    print(f"machine: {machine()}")
    print(
        f"no-op model; {args.clients} client processes x {args.threads} calls x "
        f"{args.per_call} JPEGs of {w}x{h} = {in_flight} images in flight, "
        f"EMBEDDER_MAX_BATCH={args.max_batch}; GIL by py-spy --gil at {SAMPLE_RATE} Hz"
    )
    with checkouts(args) as trees:
        figures = run_paths(args, request, trees)
        report: dict[str, object] = {"paths": figures["now"]}
        if "before" in figures:
            report["before"] = figures["before"]
        if not args.no_processes:
            report.update(two_processes(args, request, trees["now"], figures["now"]))
    print(json.dumps(report))
    return 0


@contextmanager
def checkouts(args: argparse.Namespace) -> Iterator[dict[str, str]]:
    """The trees to serve: "now" (this checkout, or --tree), and "before"
    (a temporary worktree of --before) when asked."""
    now = str(Path(args.tree).resolve()) if args.tree else str(ROOT)
    if not args.before:
        yield {"now": now}
        return
    with tempfile.TemporaryDirectory() as tmp:
        before = str(Path(tmp) / "before")
        git = ["git", "-C", str(ROOT)]
        subprocess.run([*git, "worktree", "add", "--detach", before, args.before], check=True)
        try:
            yield {"before": before, "now": now}
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", before], check=False)


def run_paths(
    args: argparse.Namespace, request: bytes, trees: dict[str, str]
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Every path on every tree, printed as it comes: {tree: {path: figures}}."""
    print(f"{'tree':<7} {'path':<16} {'img/s':>8} {'CPU ms/img':>11} {'GIL ms/img':>11}")
    report: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, tree in trees.items():
        report[name] = {}
        for path in args.paths.split(","):
            got = measure(path, args, request, tree)
            report[name][path] = got.json()
            gil = "n/a" if got.gil_ms_per_image is None else f"{got.gil_ms_per_image:.3f}"
            print(
                f"{name:<7} {path:<16} {got.img_per_s:8.1f} {got.cpu_ms_per_image:11.3f} {gil:>11}"
            )
    if "before" in report:
        for path, now in report["now"].items():
            was = report["before"][path]
            if now["gil_ms_per_image"] and was["gil_ms_per_image"]:
                print(
                    f"{path}: GIL per image {was['gil_ms_per_image']:.3f} -> "
                    f"{now['gil_ms_per_image']:.3f} ms, img/s "
                    f"{(now['img_per_s'] or 0) / (was['img_per_s'] or 1):.2f}x"
                )
    return report


def two_processes(
    args: argparse.Namespace,
    request: bytes,
    tree: str,
    one: dict[str, dict[str, float | None]],
) -> dict[str, object]:
    """--processes-path with EMBEDDER_PROCESSES=2 against 1, in this run."""
    path = args.processes_path
    single = one[path] if path in one else measure(path, args, request, tree).json()
    two = measure(path, args, request, tree, processes=2)
    ratio = two.img_per_s / (single["img_per_s"] or 1)
    print(
        f"{path} EMBEDDER_PROCESSES=2: {two.img_per_s:.1f} img/s against "
        f"{single['img_per_s']:.1f} with 1: {ratio:.2f}x "
        f"(CPU {two.cpu_ms_per_image:.3f} ms/img)"
    )
    return {
        "processes": {"path": path, "one": single, "two": two.json()},
        "processes_ratio": round(ratio, 2),
    }


if __name__ == "__main__":
    if os.environ.get(TREE_ENV):
        sys.path.insert(0, os.environ[TREE_ENV])
    else:
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
