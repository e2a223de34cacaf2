"""Coverage-guided fuzzing (atheris, libFuzzer) for a fixed time.

    python -m tools.fuzz decoder --seconds 60
    python -m tools.fuzz gateway --seconds 60

``decoder``: mutated JPEG, PNG, GIF, TIFF, WebP and BMP bytes (seeds: the
small photos of ../shared/data/odd-images) through the embedder's decoder. Any
outcome other than a decoded image or a DecodeError (INVALID_ARGUMENT or
RESOURCE_EXHAUSTED) is a crash.

``gateway``: mutated request messages (seeds: valid Search, Count,
StartIndexJob, Delete, GetJob and Reconcile requests) sent as raw bytes over
gRPC to a real gateway in this process, in front of a real index (Milvus Lite,
SQLite) and embedder (bundled MobileNetV2). An INTERNAL or UNKNOWN answer,
which is what an unhandled exception becomes, is a crash.

A crash stops the run, leaves its input under ``--artifacts`` (crash-<sha1>)
and exits non-zero; turn it into a regression test. The last line is JSON:
``{"target": ..., "cases": ..., "crashes": ..., "seconds": ...}``.
Corpora live in a temporary folder: nothing under ../shared is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
ODD = SHARED / "data" / "odd-images"
SEED_FILES = (
    "hopper.jpg",
    "hopper_gray.jpg",
    "pil_sample_cmyk.jpg",
    "hopper.png",
    "i_trns.png",
    "hopper.gif",
    "iss634.gif",
    "hopper.tif",
    "tiff_adobe_deflate.tif",
    "hopper.webp",
    "hopper.bmp",
    "hopper.ico",
)
GATEWAY = "/imagesearch.v1.GatewayService/"


def decoder_seeds(folder: Path) -> None:
    for name in SEED_FILES:
        shutil.copy(ODD / name, folder / name)


def gateway_seeds(folder: Path, allowed: Path) -> None:
    from imagesearch.v1 import gateway_pb2

    photo = (ODD / "hopper.jpg").read_bytes()
    seeds = {
        "Search": gateway_pb2.SearchRequest(collection="fuzz", image=photo[:4096], top_k=5),
        "SearchPath": gateway_pb2.SearchRequest(path=str(allowed / "hopper.jpg"), top_k=3),
        "SearchMany": gateway_pb2.SearchRequest(
            queries=[gateway_pb2.Query(image_id=5), gateway_pb2.Query(path="x", text="red")]
        ),
        "Count": gateway_pb2.CountRequest(collection="fuzz"),
        "StartIndexJob": gateway_pb2.StartIndexJobRequest(
            collection="fuzz", folder=str(allowed), recursive=True
        ),
        "Delete": gateway_pb2.DeleteRequest(collection="fuzz", path_prefix=str(allowed)),
        "GetJob": gateway_pb2.GetJobRequest(job_id="0123456789ab"),
        "ListJobs": gateway_pb2.ListJobsRequest(page_size=3, page_token="abc"),
    }
    for name, message in seeds.items():
        # The first byte picks the method; the rest is the message.
        method = list(METHODS).index(name.removesuffix("Path").removesuffix("Many"))
        (folder / name).write_bytes(bytes([method]) + message.SerializeToString())


METHODS = ("Search", "Count", "StartIndexJob", "Delete", "GetJob", "ListJobs")


def run_decoder(argv: list[str]) -> None:
    import atheris

    with atheris.instrument_imports():
        from embedder_service.decode import DecodeError, Decoder

    decoder = Decoder(max_pixels=4_000_000)

    def one(data: bytes) -> None:
        with contextlib.suppress(DecodeError):  # a refusal is an answer
            decoder.decode(data, "fuzz", thumbnail_px=64)

    atheris.Setup(argv, one)
    atheris.Fuzz()


def run_gateway(argv: list[str], allowed: Path) -> None:
    import atheris
    import grpc

    # The backends are imported as they are (instrumenting torch would take
    # minutes); the gateway's own code is instrumented for coverage.
    from embedder_service.app import start as start_embedder
    from embedder_service.settings import EmbedderSettings
    from index_service.app import start as start_index
    from index_service.settings import IndexSettings

    with atheris.instrument_imports(include=["gateway"]):
        from gateway.app import start as start_gateway
        from gateway.settings import GatewaySettings

    data = Path(tempfile.mkdtemp(prefix="fuzz-gateway-"))
    embedder = start_embedder(
        EmbedderSettings(
            port=0, model="mobilenet_v2", weights="bundled", warmup=False, compile="false"
        )
    )
    index = start_index(
        IndexSettings(
            port=0,
            milvus_uri=str(data / "milvus.db"),
            database_url=f"sqlite:///{data / 'meta.db'}",
        )
    )
    gw = start_gateway(
        GatewaySettings(
            port=0,
            embedder_addr=f"127.0.0.1:{embedder.port}",
            index_addr=f"127.0.0.1:{index.port}",
            data_dir=str(data / "gw"),
            allowed_roots=(str(allowed),),
            backend_wait_s=5.0,
            call_timeout_s=10.0,
            max_active_jobs=8,
        )
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{gw.port}")
    calls = [channel.unary_unary(GATEWAY + m, None, None) for m in METHODS]  # bytes as they are

    def one(raw: bytes) -> None:
        if not raw:
            return
        call = calls[raw[0] % len(calls)]
        try:
            call(raw[1:], timeout=20)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                raise RuntimeError(f"{exc.code().name}: {exc.details()}") from None

    atheris.Setup(argv, one)
    atheris.Fuzz()


def child(target: str, corpus: Path, artifacts: Path, seconds: int, allowed: Path) -> None:
    argv = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={seconds}",
        f"-artifact_prefix={artifacts}/",
        "-max_len=65536",
        "-timeout=30",
        "-rss_limit_mb=4096",
        "-print_final_stats=1",
    ]
    if target == "decoder":
        run_decoder(argv)
    else:
        run_gateway(argv, allowed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=("decoder", "gateway"))
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--artifacts", default="fuzz-artifacts", help="where crash inputs go")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--allowed", help=argparse.SUPPRESS)
    args = parser.parse_args()
    artifacts = Path(args.artifacts).resolve()
    if args.child:
        child(args.target, Path(args.corpus), artifacts, args.seconds, Path(args.allowed))
        return 0
    artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        corpus, allowed = Path(tmp) / "corpus", Path(tmp) / "allowed"
        corpus.mkdir()
        allowed.mkdir()
        shutil.copy(ODD / "hopper.jpg", allowed / "hopper.jpg")
        if args.target == "decoder":
            decoder_seeds(corpus)
        else:
            gateway_seeds(corpus, allowed)
        started = time.monotonic()
        # libFuzzer ends its process: it runs in a child, whose report is read here.
        done = subprocess.run(
            [sys.executable, "-m", "tools.fuzz", args.target, "--child", "--corpus", str(corpus),
             "--allowed", str(allowed), "--artifacts", str(artifacts),
             "--seconds", str(args.seconds)],
            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "EMBEDDER_COMPILE": "false"},
        )  # fmt: skip
        seconds = time.monotonic() - started
    report = done.stderr
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", report)
    cases = int(runs[-1]) if runs else 0
    crashes = len(re.findall(r"==\d+== ERROR: libFuzzer|Uncaught Python exception", report))
    sys.stderr.write("\n".join(report.splitlines()[-30:]) + "\n")
    print(
        json.dumps(
            {
                "target": args.target,
                "cases": cases,
                "crashes": crashes,
                "seconds": round(seconds, 1),
                "exit": done.returncode,
            }
        )
    )
    return 0 if done.returncode == 0 and crashes == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
