"""Builds the four images and starts them together on loopback, by hand (the
images are several GB; never part of `make test`).

    python deploy/docker/images.py build [--base-image IMG] [--secret id=ca,src=FILE] ...
    python deploy/docker/images.py smoke [--fixture DIR]

``build`` runs ``docker build --target T`` for embedder, index, gateway and
web (BuildKit, so the optional ``pipconf``/``ca`` secrets of
deploy/install_deps.py work) and prints each build's time and each image's
size. ``smoke`` starts the four images with ``--network host`` on free
loopback ports (no container network), waits until each says SERVING,
indexes a folder of photos through the gateway with the CLI (uploaded from
here), indexes it again as a server-side job from a read-only mount, searches
with every photo and checks that each finds itself first, asks the web face
for the count, reads the embedder's /metrics, and prints start times. Both
print a JSON object as their last line. Run ``smoke`` from the project's
virtual environment (it uses the CLI and the gRPC health client).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("embedder", "index", "gateway", "web")
FIXTURE = ROOT.parent / "shared" / "data" / "clothing-64"
SMOKE = "imagesearch-smoke"  # container name prefix


def docker_cmd() -> list[str]:
    return shlex.split(os.environ.get("DOCKER", "docker"))


def image_name(target: str, tag: str) -> str:
    return f"imagesearch-{target}:{tag}"


def build_command(target: str, args: argparse.Namespace) -> list[str]:
    cmd = [*docker_cmd(), "build", "--target", target, "-t", image_name(target, args.tag)]
    if args.base_image:
        cmd += ["--build-arg", f"BASE_IMAGE={args.base_image}"]
    if args.network:
        cmd += ["--network", args.network]
    if args.no_cache:
        cmd.append("--no-cache")
    for secret in args.secret:
        cmd += ["--secret", secret]
    return [*cmd, str(ROOT)]


def image_size_mb(image: str) -> float:
    out = subprocess.run(
        [*docker_cmd(), "image", "inspect", "--format", "{{.Size}}", image],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return round(int(out.strip()) / 1e6, 1)


def cmd_build(args: argparse.Namespace) -> int:
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    build_s: dict[str, float] = {}
    for target in args.targets:
        cmd = build_command(target, args)
        print("+", shlex.join(cmd), flush=True)
        if args.dry_run:
            continue
        start = time.monotonic()
        subprocess.run(cmd, check=True, env=env)
        build_s[target] = round(time.monotonic() - start, 1)
    if args.dry_run:
        return 0
    sizes = {t: image_size_mb(image_name(t, args.tag)) for t in args.targets}
    for t in args.targets:
        print(f"{image_name(t, args.tag):<32} built in {build_s[t]:>7.1f} s  {sizes[t]:>8.1f} MB")
    print(json.dumps({"build_s": build_s, "size_mb": sizes, "base_image": args.base_image}))
    return 0


# -- smoke --------------------------------------------------------------------


def container_logs(container: str, lines: int = 30) -> str:
    done = subprocess.run(
        [*docker_cmd(), "logs", "--tail", str(lines), container], capture_output=True, text=True
    )
    return done.stdout + done.stderr


def running(container: str) -> bool:
    state = subprocess.run(
        [*docker_cmd(), "inspect", "--format", "{{.State.Running}}", container],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return state == "true"


def wait_all(
    started: dict[str, float], ready: dict[str, Callable[[], bool]], timeout: float
) -> dict[str, float]:
    """Seconds from each container's start until its ``ready()``, polled
    together; fails with a container's last log lines when it exits or the
    time runs out."""
    seconds: dict[str, float] = {}
    while len(seconds) < len(ready):
        for name, is_ready in ready.items():
            if name in seconds:
                continue
            if is_ready():
                seconds[name] = round(time.monotonic() - started[name], 1)
                print(f"{name}: SERVING {seconds[name]} s after its start", flush=True)
            elif not running(f"{SMOKE}-{name}") or time.monotonic() - started[name] > timeout:
                logs = container_logs(f"{SMOKE}-{name}")
                raise SystemExit(f"{name} did not become ready:\n{logs}")
        time.sleep(0.25)
    return seconds


def grpc_serving(port: int, service: str) -> Callable[[], bool]:
    from imagesearch.healthcheck import check

    return lambda: check(port, service, timeout=1.0)


def http_ok(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    return ready


def run_container(name: str, image: str, env: dict[str, str], mounts: Sequence[str] = ()) -> None:
    # No --rm: a container that exits keeps its logs for the failure message;
    # smoke removes every container at the end.
    cmd = [*docker_cmd(), "run", "-d", "--name", name, "--network", "host"]
    for key, value in env.items():
        cmd += ["-e", f"{key}={value}"]
    for mount in mounts:
        cmd += ["-v", mount]
    subprocess.run([*cmd, image], check=True, capture_output=True)


def check(ok: bool, what: str) -> None:
    """Fails the smoke run with ``what`` (not an assert: those vanish under -O)."""
    if not ok:
        raise SystemExit(f"smoke test failed: {what}")


def cli(*argv: str) -> Any:  # the CLI's --json answer
    done = subprocess.run(
        [str(Path(sys.executable).parent / "imgsearch"), *argv, "--json"],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"imgsearch {shlex.join(argv)} failed:\n{done.stdout}{done.stderr}")
    return json.loads(done.stdout)


def smoke(args: argparse.Namespace) -> dict[str, Any]:
    from bench.common import free_port  # on sys.path: cmd_smoke put the checkout there

    ports = {name: free_port() for name in ("embedder", "index", "gateway", "web", "metrics")}
    fixture = args.fixture.resolve()
    photos = sorted(p for p in fixture.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    gateway = f"127.0.0.1:{ports['gateway']}"
    services = {
        "embedder": (
            {
                "EMBEDDER_PORT": str(ports["embedder"]),
                "EMBEDDER_METRICS_PORT": str(ports["metrics"]),
                "EMBEDDER_WEIGHTS_FALLBACK": "bundled",  # no download: say so, go on
                **dict(kv.split("=", 1) for kv in args.embedder_env),
            },
            (f"{args.cache.resolve()}:/home/app/.cache",) if args.cache else (),
            grpc_serving(ports["embedder"], "imagesearch.v1.EmbedderService"),
        ),
        "index": (
            {"INDEX_PORT": str(ports["index"]), "INDEX_METRICS_PORT": "0"},
            (),
            grpc_serving(ports["index"], "imagesearch.v1.IndexService"),
        ),
        "gateway": (
            {
                "GATEWAY_PORT": str(ports["gateway"]),
                "GATEWAY_METRICS_PORT": "0",
                "GATEWAY_EMBEDDER_ADDR": f"127.0.0.1:{ports['embedder']}",
                "GATEWAY_INDEX_ADDR": f"127.0.0.1:{ports['index']}",
            },
            (f"{fixture}:/data/images/fixture:ro",),
            grpc_serving(ports["gateway"], "imagesearch.v1.GatewayService"),
        ),
        "web": (
            {"WEB_PORT": str(ports["web"]), "WEB_GATEWAY_ADDR": gateway},
            (),
            http_ok(f"http://127.0.0.1:{ports['web']}/healthz"),
        ),
    }
    started: dict[str, float] = {}
    for name, (env, mounts, _) in services.items():
        run_container(f"{SMOKE}-{name}", image_name(name, args.tag), env, mounts)
        started[name] = time.monotonic()
    start_s = wait_all(started, {n: r for n, (_, _, r) in services.items()}, args.start_timeout)

    t = time.monotonic()
    report = cli("index", "--gateway", gateway, "-c", "smoke", str(fixture))
    index_s = round(time.monotonic() - t, 1)
    check(isinstance(report, dict) and report["indexed"] == len(photos), f"upload: {report}")
    jobs = cli("index", "--gateway", gateway, "-c", "smoke_job", "--server", "/data/images/fixture")
    check(isinstance(jobs, list) and len(jobs) == 1, f"server job: {jobs}")
    job = jobs[0]
    check(job["state"] == "succeeded" and job["indexed"] == len(photos), f"server job: {job}")
    misses = []
    for photo in photos:
        hits = cli("search", "--gateway", gateway, "-c", "smoke", "-k", "1", str(photo))
        check(isinstance(hits, list), f"search: {hits}")
        name = photo.relative_to(fixture).as_posix()
        if not hits or not str(hits[0]["path"]).endswith(name):
            misses.append(name)
    if misses:
        raise SystemExit(f"{len(misses)} photos did not find themselves first: {misses}")
    with urllib.request.urlopen(
        f"http://127.0.0.1:{ports['web']}/v1/collections/smoke/count", timeout=10
    ) as answer:
        web_count = json.load(answer)["count"]
    check(web_count == len(photos), f"the web face counted {web_count}")
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10) as m:
        check(b"imagesearch_embedder_queue_depth" in m.read(), "no queue depth in /metrics")
    log = container_logs(f"{SMOKE}-embedder", 1000).splitlines()
    serving_line = next((ln for ln in log if "event=serving" in ln), "")
    warm_start_s = None
    if args.cache:  # a second embedder pod on the cache the first one filled
        subprocess.run([*docker_cmd(), "rm", "-f", f"{SMOKE}-embedder"], capture_output=True)
        env, mounts, ready = services["embedder"]
        run_container(f"{SMOKE}-embedder", image_name("embedder", args.tag), env, mounts)
        warm = wait_all({"embedder": time.monotonic()}, {"embedder": ready}, args.start_timeout)
        warm_start_s = warm["embedder"]
        hits = cli("search", "--gateway", gateway, "-c", "smoke", "-k", "1", str(photos[0]))
        found = isinstance(hits, list) and str(hits[0]["path"]).endswith(photos[0].name)
        check(found, f"the second embedder's search: {hits}")
    return {
        "start_s": start_s,
        "photos": len(photos),
        "index_upload_s": index_s,
        "searches_first": len(photos) - len(misses),
        "job": job["state"],
        "web_count": web_count,
        "size_mb": {t: image_size_mb(image_name(t, args.tag)) for t in TARGETS},
        "embedder_serving": serving_line[-300:],
        "embedder_start_with_its_cache_s": warm_start_s,
    }


def cmd_smoke(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT))
    from bench.common import machine  # the CPU flags beside the figures

    print(machine(), flush=True)
    try:
        result = smoke(args)
    finally:
        if not args.keep:
            names = [f"{SMOKE}-{t}" for t in TARGETS]
            subprocess.run([*docker_cmd(), "rm", "-f", *names], capture_output=True)
    for name, seconds in result["start_s"].items():
        print(f"{name:<9} SERVING after {seconds:>6.1f} s")
    print(
        f"indexed {result['photos']} photos in {result['index_upload_s']} s; "
        f"{result['searches_first']} of {result['photos']} found themselves first"
    )
    print(json.dumps({**result, "machine": machine()}))
    return 0


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="latest", help="image tag (default latest)")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the images, print times and sizes")
    build.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    build.add_argument("--base-image", default="", help="BASE_IMAGE (default the Dockerfile's)")
    build.add_argument("--network", default="", help="docker build --network (e.g. host)")
    build.add_argument("--secret", action="append", default=[], help="id=ca|pipconf,src=FILE")
    build.add_argument("--no-cache", action="store_true", help="build every layer again")
    build.add_argument("--dry-run", action="store_true", help="print the commands only")
    build.set_defaults(run=cmd_build)
    run = sub.add_parser("smoke", help="start the images on loopback, index, search")
    run.add_argument("--fixture", type=Path, default=FIXTURE, help="a folder of photos")
    run.add_argument("--start-timeout", type=float, default=600.0)
    run.add_argument(
        "--embedder-env", action="append", default=[], help="KEY=VALUE for the embedder"
    )
    run.add_argument(
        "--cache",
        type=Path,
        help="a folder (writable by uid 10001) mounted as the embedder's cache (weights, "
        "Inductor kernels); then a second embedder starts on it and its start is timed",
    )
    run.add_argument("--keep", action="store_true", help="leave the containers running")
    run.set_defaults(run=cmd_smoke)
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
