"""Helpers shared by the benchmarks: the photo set, service processes, timing."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from imagesearch import cpus, healthcheck
from imgsearch.up import embedder_environment
from tools.milvus_server import milvus_server as milvus_server
from tools.ports import free_port as free_port

ROOT = Path(__file__).resolve().parent.parent
CLOTHING = (ROOT.parent / "shared" / "data" / "clothing-64").resolve()
OUT = ROOT / "bench" / "out"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores, {cpu}, flags [{cpu_flags()}], Python {platform.python_version()}"
    )


def cpu_flags() -> str:
    """The CPU features that change the figures (avx2, avx512f, avx512_bf16, avx512_vnni, amx)."""
    have = cpus.cpu_flags()
    if not have:
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")
    return " ".join(f for f in wanted if f in have) or "none of avx2/avx512/amx"


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory so far (VmHWM, Linux), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_camera_photos(n: int, seed: int = 1) -> Path:
    """N unique 6000x4000 JPEGs of ~6.5 MB, as a current camera writes them,
    built from the clothing fixture (upscaled, with sensor-like grain).
    Cached under bench/out/ (about 1.7 GB for 256)."""
    import numpy as np

    folder = OUT / f"camera-{n}-{seed}"
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = sorted(CLOTHING.rglob("*.jpg"))
    grain = rng.integers(-14, 14, (4000, 6000, 3), dtype=np.int16)
    for i in range(n):
        with Image.open(sources[i % len(sources)]) as src:
            img = src.convert("RGB")
        if img.height > img.width:
            img = img.transpose(Image.Transpose.ROTATE_90)
        arr = np.asarray(img.resize((6000, 4000), Image.Resampling.BILINEAR), dtype=np.int16)
        shift = np.roll(grain, i * 7919, axis=1)  # distinct bytes for every photo
        out = np.clip(arr + shift, 0, 255).astype(np.uint8)
        Image.fromarray(out).save(folder / f"camera_{i:05d}.jpg", quality=90)
    done.touch()
    return folder


def make_photos(n: int, big_every: int = 4, seed: int = 0) -> Path:
    """N unique JPEGs built from the clothing fixture: random crops, flips and
    colour shifts, re-encoded at typical camera sizes; every ``big_every``-th
    one is 4000x3000. Cached under bench/out/."""
    import random

    folder = OUT / f"photos-{n}-{big_every}-{seed}"
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sources = sorted(CLOTHING.rglob("*.jpg"))
    sizes = [(1600, 1200), (2048, 1536), (1280, 960), (3264, 2448)]
    for i in range(n):
        src = Image.open(sources[i % len(sources)]).convert("RGB")
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = src.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tint = Image.new(
            "RGB", img.size, (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
        )
        img = Image.blend(img, tint, 0.08)
        size = (4000, 3000) if i % big_every == 0 else sizes[i % len(sizes)]
        if img.height > img.width:
            size = (size[1], size[0])
        img.resize(size, Image.Resampling.BILINEAR).save(folder / f"photo_{i:05d}.jpg", quality=90)
    done.touch()
    return folder


def wait_healthy(port: int, service: str = "", timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not healthcheck.check(port, service, timeout=2):
        if time.monotonic() > deadline:
            raise TimeoutError(f"service on port {port} not healthy after {timeout}s")
        time.sleep(0.5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def services(
    data: Path, env_extra: dict[str, str], embedder_argv: list[str] | None = None
) -> Iterator[dict[str, int]]:
    """Embedder, index and gateway as separate processes, like `imgsearch up`
    (``embedder_argv``: another embedder command, such as a no-op model's)."""
    ports = {"gateway": free_port(), "embedder": free_port(), "index": free_port()}
    data.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "EMBEDDER_PORT": str(ports["embedder"]),
        "INDEX_PORT": str(ports["index"]),
        "GATEWAY_PORT": str(ports["gateway"]),
        "INDEX_MILVUS_URI": str(data / "milvus.db"),
        "INDEX_DATABASE_URL": f"sqlite:///{data / 'meta.db'}",
        "GATEWAY_DATA_DIR": str(data),
        "GATEWAY_EMBEDDER_ADDR": f"127.0.0.1:{ports['embedder']}",
        "GATEWAY_INDEX_ADDR": f"127.0.0.1:{ports['index']}",
        "GATEWAY_ALLOWED_ROOTS": str(OUT),
        "EMBEDDER_LOG_LEVEL": "WARNING",
        "INDEX_LOG_LEVEL": "WARNING",
        "GATEWAY_LOG_LEVEL": "WARNING",
        # As `imgsearch up` and the images set them (the embedder's own below).
        "MALLOC_MMAP_THRESHOLD_": "131072",
        "MALLOC_ARENA_MAX": "2",
        **env_extra,
    }
    procs = []
    try:
        for module in ("embedder_service", "index_service", "gateway"):
            log = (data / f"{module}.log").open("ab")
            own = embedder_environment(env, env_extra) if module == "embedder_service" else env
            argv = [sys.executable, "-m", module]
            if module == "embedder_service" and embedder_argv:
                argv = embedder_argv
            procs.append(subprocess.Popen(argv, env=own, stdout=log, stderr=log, cwd=ROOT))
        for name, service in (
            ("index", "IndexService"),
            ("embedder", "EmbedderService"),
            ("gateway", "GatewayService"),  # ready once both answered
        ):
            wait_healthy(ports[name], f"imagesearch.v1.{service}")
        ports.update(
            {
                f"pid:{m}": p.pid
                for m, p in zip(("embedder", "index", "gateway"), procs, strict=True)
            }
        )
        yield ports
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


@contextmanager
def index_process(data: Path, env_extra: dict[str, str], cwd: Path = ROOT) -> Iterator[int]:
    """The index as a process with ``env_extra``; yields its port once SERVING."""
    with index_process_pid(data, env_extra, cwd) as (port, _pid):
        yield port


@contextmanager
def index_process_pid(
    data: Path, env_extra: dict[str, str], cwd: Path = ROOT
) -> Iterator[tuple[int, int]]:
    """As index_process, yielding (port, pid); ``cwd``: the checkout whose
    code it runs (``python -m`` imports from there first)."""
    port = free_port()
    env = {
        **os.environ,
        "INDEX_HOST": "127.0.0.1",
        "INDEX_PORT": str(port),
        "INDEX_LOG_LEVEL": "WARNING",
        **env_extra,
    }
    data.mkdir(parents=True, exist_ok=True)
    with (data / "index.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "index_service"], env=env, stdout=log, stderr=log, cwd=cwd
        )
    try:
        wait_healthy(port, "imagesearch.v1.IndexService")
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def cpu_seconds_of(pattern: str) -> float:
    """CPU time so far of the processes whose command line holds ``pattern``."""
    total = 0
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if pattern.encode() in cmdline:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return total / os.sysconf("SC_CLK_TCK")


def settle(limit_s: float = 120.0) -> None:
    """Waits until the Milvus server is idle (its flushes and index builds of
    the run before done), so that each run starts from the same state."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = cpu_seconds_of("milvus run")
        time.sleep(2)
        if cpu_seconds_of("milvus run") - before < 0.2:  # under 10% of a core
            return


@contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """A temporary checkout of ``ref`` (git worktree), removed afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ref"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "--quiet", str(path), ref], cwd=ROOT, check=True
        )
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT)
