"""Fault campaign: one fault in the middle of a server-side job, for each of
kill -9 of the index, of the embedder and of the gateway (restarted by
`imgsearch up`), a Milvus server restart and a MariaDB restart, against a
baseline job with no fault in the same run.

The stack runs as users run it (`imgsearch up`) on a real Milvus server
(PyPI milvus==2.3.5) and the MariaDB on 127.0.0.1:3306, over photos
generated from the fixture. After each fault, with no ResumeJob, it checks
what a user relies on: the job SUCCEEDED, every file counted once, the
collection's count == files, SQL ready rows == Milvus entities, no pending
rows. MariaDB is started again whatever happens.

    .venv/bin/python bench/faults.py [--photos 512] [--faults index,embedder,...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from pymilvus import MilvusClient
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CLOTHING, OUT, free_port, machine
from imagesearch.client import Client, ImageSearchError, Job
from tools.milvus_server import PORTS, URI, wait_listening
from tools.procs import child_pid

MARIADB = "mysql+pymysql://root@127.0.0.1:3306/test"
# "none" is the baseline: the same job, the same moment, no fault.
FAULTS = ("none", "index", "embedder", "gateway", "milvus", "mariadb")


def make_small_photos(n: int) -> Path:
    """N distinct 640x480 JPEGs cut from the fixture (cached in bench/out)."""
    folder = OUT / f"fault-photos-{n}"
    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(CLOTHING.rglob("*.jpg"))
    for i in range(n):
        with Image.open(sources[i % len(sources)]) as src:
            img = src.convert("RGB")
        w, h = img.size
        k = i // len(sources)  # a different crop for each pass over the sources
        box = (k * w // 40, k * h // 40, w - k * w // 50, h - k * h // 50)
        img.crop(box).resize((640, 480)).save(folder / f"p{i:04d}.jpg", quality=88)
    (folder / ".complete").touch()
    return folder


class Milvus:
    """A Milvus server whose data survives a restart (one folder)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> None:
        exe = Path(sys.executable).parent / "milvus-server"
        self.data.mkdir(parents=True, exist_ok=True)
        with (self.data / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [str(exe), "--data", str(self.data)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not wait_listening(PORTS[0], timeout):
            raise RuntimeError(f"milvus-server did not listen; see {self.data}/server.log")

    def restart(self) -> None:
        self.stop()
        time.sleep(2)
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def mariadb(action: str) -> None:
    """Stops or starts the local MariaDB (as the machine notes say)."""
    exe = "/usr/sbin/mariadbd"
    if action == "stop":
        subprocess.run(["start-stop-daemon", "--stop", "--oknodo", "--exec", exe], check=False)
        for _ in range(60):
            if subprocess.run(["pgrep", "-x", "mariadbd"], capture_output=True).returncode:
                return
            time.sleep(0.5)
    else:
        subprocess.run(
            ["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", exe],
            check=False,
        )
        wait_listening(3306, 60)


def kill_child(up: subprocess.Popen[bytes], module: str) -> None:
    """kill -9 of one service that `imgsearch up` runs."""
    pid = child_pid(up.pid, module)
    if pid is None:
        raise RuntimeError(f"imgsearch up runs no {module} now")
    os.kill(pid, signal.SIGKILL)


def restart_mariadb() -> None:
    mariadb("stop")
    time.sleep(5)
    mariadb("start")


def poll_job(client: Client, job_id: str, timeout: float) -> Job | None:
    """The job once it ends, polling through gateway outages; None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            job = client.get_job(job_id, timeout=10)
            if job.state.terminal:
                return job
        except ImageSearchError:
            pass  # the gateway is restarting
        time.sleep(0.5)
    return None


def storage(collection: str, prefix: str) -> tuple[int, int, int]:
    """(SQL ready rows, SQL pending rows, Milvus entities) of a collection."""
    engine = create_engine(MARIADB)
    with engine.connect() as conn:
        rows: dict[str, int] = dict(
            conn.execute(
                text(
                    f"SELECT status, COUNT(*) FROM {prefix}images WHERE collection = :c "
                    "GROUP BY status"
                ),
                {"c": collection},
            ).all()
        )
    engine.dispose()
    milvus = MilvusClient(uri=URI)
    got = milvus.query(
        f"{prefix}{collection}", output_fields=["count(*)"], consistency_level="Strong"
    )
    milvus.close()
    return int(rows.get("ready", 0)), int(rows.get("pending", 0)), int(got[0]["count(*)"])


def spawn_up(work: Path, photos: Path, prefix: str, port: int) -> subprocess.Popen[bytes]:
    """`imgsearch up` on the Milvus server and MariaDB, its gateway on ``port``."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("INDEX_", "GATEWAY_"))},
        "INDEX_MILVUS_URI": URI,
        "INDEX_MILVUS_PREFIX": prefix,
        "INDEX_DATABASE_URL": MARIADB,
        "INDEX_TABLE_PREFIX": prefix,
        "GATEWAY_ALLOWED_ROOTS": str(photos),
        "GATEWAY_EMBED_BATCH": "16",
        "GATEWAY_JOB_OUTAGE_S": "600",
        "EMBEDDER_COMPILE": "false",
    }
    with (work / "up.log").open("ab") as log:
        return subprocess.Popen(
            [
                str(Path(sys.executable).parent / "imgsearch"),
                "up",
                "--data-dir",
                str(work / "data"),
                "--gateway-port",
                str(port),
                "--embedder-port",
                str(free_port()),
                "--index-port",
                str(free_port()),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=work,
        )


def parse_args() -> argparse.Namespace:
    """The command line (see the module's docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=int, default=512)
    p.add_argument("--faults", default=",".join(FAULTS))
    p.add_argument("--at", type=float, default=0.25, help="fault when this share is done")
    p.add_argument("--timeout", type=float, default=900, help="seconds a job may take")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    faults = [f for f in args.faults.split(",") if f]
    photos = make_small_photos(args.photos)
    files = len(list(photos.glob("*.jpg")))
    work = OUT / "faults"
    shutil.rmtree(work, ignore_errors=True)
    prefix = f"f{uuid.uuid4().hex[:6]}_"
    milvus = Milvus(work / "milvus")
    rows: list[tuple[str, str, float, str]] = []
    up: subprocess.Popen[bytes] | None = None
    print(f"faults on {files} photos; {machine()}", flush=True)
    try:
        mariadb("start")
        milvus.start()
        port = free_port()
        up = spawn_up(work, photos, prefix, port)
        client = Client(f"127.0.0.1:{port}", timeout=60)
        deadline = time.monotonic() + 600
        while not client.ready():
            if time.monotonic() > deadline or up.poll() is not None:
                raise RuntimeError(f"the stack did not start; see {work}/up.log")
            time.sleep(1)

        injectors: dict[str, Callable[[], None]] = {
            "none": lambda: None,
            "index": lambda: kill_child(up, "index_service"),
            "embedder": lambda: kill_child(up, "embedder_service"),
            "gateway": lambda: kill_child(up, "gateway"),
            "milvus": milvus.restart,
            "mariadb": restart_mariadb,
        }
        for fault in faults:
            collection = f"fault_{fault}"
            job = client.start_job(str(photos), collection=collection)
            while client.get_job(job.job_id).done < files * args.at:
                time.sleep(0.2)
            hit = client.get_job(job.job_id).done
            started = time.monotonic()
            injectors[fault]()
            end = poll_job(client, job.job_id, args.timeout)
            took = time.monotonic() - started
            if end is None:
                rows.append((fault, "job did not end", took, f"fault at {hit}/{files}"))
                continue
            ready, pending, entities = storage(collection, prefix)
            count = client.count(collection=collection).count
            once = end.done == end.total == files == end.indexed + end.duplicates + end.failed
            ok = (
                end.state.name == "SUCCEEDED"
                and once
                and end.failed == 0
                and count == files
                and ready == entities == files
                and pending == 0
            )
            note = (
                f"fault at {hit}/{files}; state {end.state.name}, done {end.done}, "
                f"indexed {end.indexed}, dup {end.duplicates}, failed {end.failed}; count "
                f"{count}; SQL ready {ready}, pending {pending}; Milvus {entities}"
            )
            rows.append((fault, "recovered" if ok else "WRONG", took, note))
            print(f"{fault}: {'recovered' if ok else 'WRONG'} in {took:.1f}s; {note}", flush=True)
        client.close()
    finally:
        mariadb("start")  # whatever happened
        if up is not None and up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                up.kill()
        milvus.stop()
        try:
            engine = create_engine(MARIADB)
            with engine.begin() as conn:
                for table in ("image_paths", "images", "collections"):
                    conn.execute(text(f"DROP TABLE IF EXISTS {prefix}{table}"))
            engine.dispose()
        except Exception as exc:  # the figures above still stand
            print(f"note: could not drop the tables {prefix}*: {exc}", file=sys.stderr)

    print()
    print("| fault (mid-job) | outcome | seconds from fault to job end | detail |")
    print("|---|---|---|---|")
    for fault, outcome, took, note in rows:
        print(f"| {fault} | {outcome} | {took:.1f} | {note} |")
    return 0 if rows and all(r[1] == "recovered" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
