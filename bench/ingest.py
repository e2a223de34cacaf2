"""Folder ingest: the seed pipeline (baseline) against imgsearch, same files,
same run. Prints img/s for each and the ratio.

Baseline = seed 002's loop, faithfully: torchvision ResNet50 trunk, eager
fp32, PIL open + Resize(256) + CenterCrop(224) + ToTensor + Normalize per
image in the main thread, batches of 128, one Milvus Lite insert per batch,
sequentially. Both sides use ResNet50 with RANDOM weights: the figures are
about speed only (the vectors are meaningless).

    .venv/bin/python bench/ingest.py [--n 256] [--skip-baseline]
    .venv/bin/python bench/ingest.py --camera [--n 256]

--camera: N photos of 6000x4000 (~6.5 MB, as a current camera writes),
ingested both through the client stream (IndexImages, `imgsearch index`)
and through a server job, into the same running services; reports img/s,
the peak RSS of gateway and embedder (cumulative: the stream runs first),
and whether every photo was stored.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    cpu_seconds,
    machine,
    make_camera_photos,
    make_photos,
    peak_rss_mb,
    services,
)


def baseline(paths: list[Path], db: Path, batch_size: int = 128) -> float:
    import torch
    import torchvision
    from PIL import Image
    from pymilvus import DataType, MilvusClient
    from torchvision import transforms

    client = MilvusClient(str(db))
    schema = MilvusClient.create_schema(auto_id=True)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("filepath", DataType.VARCHAR, max_length=512)
    schema.add_field("image_embedding", DataType.FLOAT_VECTOR, dim=2048)
    index = client.prepare_index_params()
    index.add_index("image_embedding", index_type="FLAT", metric_type="L2")
    client.create_collection("image_search", schema=schema, index_params=index)

    model = torchvision.models.resnet50(weights=None)  # random: speed only
    model = torch.nn.Sequential(*(list(model.children())[:-1]))
    model.eval()
    preprocess = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )

    def embed(data: list[list]) -> None:
        with torch.no_grad():
            output = model(torch.stack(data[0])).squeeze()
            rows = [
                {"filepath": p, "image_embedding": v}
                for p, v in zip(data[1], output.tolist(), strict=True)
            ]
            client.insert("image_search", rows)

    started = time.perf_counter()
    data_batch: list[list] = [[], []]
    for path in paths:
        im = Image.open(path).convert("RGB")
        data_batch[0].append(preprocess(im))
        data_batch[1].append(str(path))
        if len(data_batch[0]) % batch_size == 0:
            embed(data_batch)
            data_batch = [[], []]
    if data_batch[0]:
        embed(data_batch)
    client.flush("image_search")
    seconds = time.perf_counter() - started
    client.close()
    return seconds


def ours(folder: Path, data: Path, env: dict[str, str]) -> tuple[float, float, int]:
    """(seconds to ingest, seconds to start the services, images indexed)."""
    from imagesearch.client import Client, JobState

    t0 = time.perf_counter()
    with services(data, env) as ports:
        startup = time.perf_counter() - t0
        client = Client(f"127.0.0.1:{ports['gateway']}", timeout=600)
        pids = {k.removeprefix("pid:"): v for k, v in ports.items() if k.startswith("pid:")}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.perf_counter()
        started_job = client.start_job(str(folder), collection="bench")
        job = started_job
        for job in client.watch_job(started_job.job_id):  # noqa: B007 (the last one counts)
            pass
        seconds = time.perf_counter() - started
        used = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        print(
            "CPU seconds during ingest: "
            + ", ".join(f"{n} {s:.1f}" for n, s in used.items())
            + f" (wall {seconds:.1f} s)"
        )
        client.close()
        if job.state is not JobState.SUCCEEDED or job.failed:
            raise RuntimeError(
                f"ingest job ended {job.state.label}: {job.message} {list(job.errors)[:3]}"
            )
        return seconds, startup, job.indexed


def camera(n: int, skip_baseline: bool, env: dict[str, str]) -> int:
    from imagesearch.client import Client, JobState

    folder = make_camera_photos(n)
    paths = sorted(folder.glob("*.jpg"))
    mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
    print(f"machine: {machine()}")
    print(f"photos:  {len(paths)} unique 6000x4000 JPEGs, {mb:.1f} MB each on average")
    print("model:   ResNet50, RANDOM weights on both sides (speed only)")
    tmp = Path(tempfile.mkdtemp(prefix="imgsearch-camera-"))
    ok = True
    try:
        base_rate = None
        if not skip_baseline:
            seconds = baseline(paths, tmp / "baseline.db")
            base_rate = len(paths) / seconds
            print(f"baseline (seed 002 loop):    {seconds:7.1f} s  {base_rate:6.2f} img/s")
        with services(tmp / "ours", env) as ports:
            client = Client(f"127.0.0.1:{ports['gateway']}", timeout=3600)
            pids = {name: ports[f"pid:{name}"] for name in ("gateway", "embedder")}
            rows = []
            started = time.perf_counter()
            report = client.index_files(paths, collection="camera_stream")
            seconds = time.perf_counter() - started
            stored = client.count(collection="camera_stream").count
            rows.append(("client stream", seconds, stored, report.failed, report.errors[:3]))
            rss_stream = {k: peak_rss_mb(v) for k, v in pids.items()}

            started = time.perf_counter()
            job = started_job = client.start_job(str(folder), collection="camera_job")
            for job in client.watch_job(started_job.job_id):  # noqa: B007 (the last one counts)
                pass
            seconds = time.perf_counter() - started
            stored = client.count(collection="camera_job").count
            failed = job.failed if job.state is JobState.SUCCEEDED else len(paths) - job.indexed
            rows.append(("server job", seconds, stored, failed, list(job.errors[:3])))
            rss_job = {k: peak_rss_mb(v) for k, v in pids.items()}
            client.close()
        for (name, secs, stored, failed, errs), rss in zip(
            rows, (rss_stream, rss_job), strict=True
        ):
            rate = len(paths) / secs
            ratio = f"  {rate / base_rate:5.2f}x baseline" if base_rate else ""
            print(
                f"imgsearch {name:<14} {secs:7.1f} s  {rate:6.2f} img/s{ratio}  stored "
                f"{stored}/{len(paths)}, failed {failed}; peak RSS gateway "
                f"{rss['gateway']:.0f} MiB, embedder {rss['embedder']:.0f} MiB"
            )
            for e in errs:
                print(f"    error: {e}")
            ok = ok and stored == len(paths) and failed == 0
        print("every photo stored by both paths" if ok else "SOMETHING FAILED (see above)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


def thumbnails_ab(folder: Path, tmp: Path, env: dict[str, str]) -> int:
    rates: dict[str, list[float]] = {"0": [], "256": []}
    for run in range(2):
        for px in rates:
            seconds, _, indexed = ours(
                folder, tmp / f"ab-{px}-{run}", {**env, "GATEWAY_THUMBNAIL_PX": px}
            )
            rates[px].append(indexed / seconds)
            print(f"GATEWAY_THUMBNAIL_PX={px:>3} run {run + 1}: {indexed / seconds:6.2f} img/s")
    off, on = max(rates["0"]), max(rates["256"])
    print(f"best of two: without {off:.2f} img/s, with thumbnails {on:.2f} img/s: x{on / off:.2f}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--n", type=int, default=256, help="photos (default 256; every 4th is 4000x3000)"
    )
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--camera", action="store_true", help="6000x4000 photos, stream and job")
    p.add_argument(
        "--compile", default="", help="EMBEDDER_COMPILE for our side (default: the service default)"
    )
    p.add_argument(
        "--dtype",
        default="",
        help="EMBEDDER_DTYPE for our side (default: auto); a comma list runs ours once each, "
        "against the same baseline (int8,bfloat16,float32)",
    )
    p.add_argument("--env", action="append", default=[], help="extra KEY=VALUE for our services")
    p.add_argument(
        "--thumbnails-ab",
        action="store_true",
        help="our side only, without thumbnails (GATEWAY_THUMBNAIL_PX=0) and with, alternately "
        "(twice each): what making and storing thumbnails costs",
    )
    args = p.parse_args()
    env = {"EMBEDDER_MODEL": "resnet50", "EMBEDDER_WEIGHTS": "random"}
    if args.compile:
        env["EMBEDDER_COMPILE"] = args.compile
    env.update(kv.split("=", 1) for kv in args.env)
    if args.camera:
        return camera(args.n, args.skip_baseline, {**env, "EMBEDDER_DTYPE": args.dtype or "auto"})

    folder = make_photos(args.n)
    paths = sorted(folder.glob("*.jpg"))
    print(f"machine: {machine()}")
    print(
        f"photos:  {len(paths)} unique JPEGs in {folder} (every 4th 4000x3000, others 1280-3264 px)"
    )
    print("model:   ResNet50, RANDOM weights on both sides (speed only; vectors are meaningless)")
    tmp = Path(tempfile.mkdtemp(prefix="imgsearch-bench-"))
    if args.thumbnails_ab:
        try:
            return thumbnails_ab(folder, tmp, env)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        base_rate = None
        if not args.skip_baseline:
            seconds = baseline(paths, tmp / "baseline.db")
            base_rate = len(paths) / seconds
            print(
                f"baseline (seed 002 loop, eager fp32, batch 128):  {seconds:7.1f} s  {base_rate:7.1f} img/s"
            )
        for dtype in args.dtype.split(",") if args.dtype else [""]:
            run_env = {**env, "EMBEDDER_DTYPE": dtype} if dtype else env
            seconds, startup, indexed = ours(folder, tmp / f"ours-{dtype}", run_env)
            rate = indexed / seconds
            settings = ", ".join(f"{k}={v}" for k, v in run_env.items())
            print(
                f"imgsearch (server job via gateway; {settings}):  {seconds:7.1f} s  "
                f"{rate:7.1f} img/s  (services started in {startup:.1f} s, not counted)"
            )
            if base_rate:
                print(f"ratio imgsearch / baseline: {rate / base_rate:.2f}x", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
