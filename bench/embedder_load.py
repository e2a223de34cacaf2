"""Load on an embedder for the benchmarks: 1024x768-style JPEGs, and client
processes that keep many images in flight with one serialized request each
(no protobuf work on the client side, which shares the cores)."""

from __future__ import annotations

import io
import multiprocessing
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.queues import Queue
from pathlib import Path

CLOTHING = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "clothing-64"
EMBED = "/imagesearch.v1.EmbedderService/Embed"


def photos(n: int, size: tuple[int, int]) -> list[bytes]:
    """``n`` distinct JPEGs of ``size``, re-encoded from the clothing photos."""
    from PIL import Image

    sources = sorted(CLOTHING.rglob("*.jpg"))
    out = []
    for i in range(n):
        img = Image.open(sources[i % len(sources)]).convert("RGB").resize(size)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85 + i % 10)
        out.append(buf.getvalue())
    return out


def embed_request(images: list[bytes]) -> bytes:
    from imagesearch.v1 import embedder_pb2

    return embedder_pb2.EmbedderServiceEmbedRequest(
        images=[embedder_pb2.Image(name=f"{i}.jpg", data=d) for i, d in enumerate(images)]
    ).SerializeToString()


def client(
    port: int, request: bytes, images: int, threads: int, seconds: float, out: Queue[int]
) -> None:
    """One client process: ``threads`` calls in flight for ``seconds``, each
    the same serialized request of ``images`` images; puts the images
    answered on ``out``. Fails on an answer too short for its vectors."""
    import grpc

    done = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def loop() -> None:
        # A connection per thread (a subchannel pool of its own): with
        # EMBEDDER_PROCESSES, the kernel spreads connections, not calls.
        options = [
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
            ("grpc.use_local_subchannel_pool", 1),
        ]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            call = channel.unary_unary(EMBED, None, None)  # bytes in, bytes out
            while time.perf_counter() < stop:
                reply = call(request, timeout=300)
                assert len(reply) >= images * 4 * 128, "an image failed"
                with lock:
                    done[0] += images

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put(done[0])


class Load:
    """``processes`` client processes x ``threads`` calls in flight."""

    def __init__(self, port: int, request: bytes, images: int, processes: int, threads: int):
        self.port, self.request, self.images = port, request, images
        self.processes, self.threads = processes, threads
        self.ctx = multiprocessing.get_context("spawn")

    @property
    def in_flight(self) -> int:
        return self.processes * self.threads * self.images

    def warm(self) -> None:
        """Calls on a few connections for a moment: every server process warm."""
        out: Queue[int] = self.ctx.Queue()
        client(self.port, self.request, self.images, 4, 0.5, out)

    def start(self, seconds: float) -> list[multiprocessing.process.BaseProcess]:
        self.results: Queue[int] = self.ctx.Queue()
        procs: list[multiprocessing.process.BaseProcess] = [
            self.ctx.Process(
                target=client,
                args=(self.port, self.request, self.images, self.threads, seconds, self.results),
            )
            for _ in range(self.processes)
        ]
        for p in procs:
            p.start()
        return procs

    def finish(self, procs: list[multiprocessing.process.BaseProcess], seconds: float) -> int:
        """Images answered by all the client processes."""
        images = sum(self.results.get(timeout=seconds + 300) for _ in procs)
        for p in procs:
            p.join()
        return images


@contextmanager
def serving(
    argv: list[str], env: dict[str, str], port: int, cwd: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """An embedder process, healthy on ``port``; stopped afterwards. When
    anything inside fails, the end of its log goes to stderr."""
    from bench.common import wait_healthy

    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=log)
        try:
            wait_healthy(port, timeout=900)
            yield proc
        except Exception:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            proc.terminate()
            proc.wait(timeout=120)
