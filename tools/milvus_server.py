"""A throwaway standalone Milvus server (PyPI ``milvus==2.3.5``) for tests and
benchmarks: ``with milvus_server(folder) as uri: ...``.

The server binds fixed ports, so a previous one must be gone first; its
embedded etcd sometimes fails its first election ("leader changed") and never
listens, so a start that does not listen within the timeout is retried once in
a fresh folder. Stopped with SIGINT (SIGKILL to its group if that hangs).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Proxy, embedded etcd (client, peer): fixed. Its metrics port (9091) is not:
# the wrapper takes the next free one, so another server there (a chaos run's) is no bar.
PORTS = (19530, 2379, 2380)
URI = "http://127.0.0.1:19530"


class MilvusServerError(RuntimeError):
    pass


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_listening(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening(port):
            return True
        time.sleep(0.2)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _log_tail(data: Path) -> str:
    return "\n".join(
        f.read_text(errors="replace")[-2000:] for f in sorted((data / "logs").glob("*.log"))
    )


@contextmanager
def milvus_server(root: Path, *, timeout: float = 90, tries: int = 2) -> Iterator[str]:
    """Starts the server with its data under ``root`` and yields its URI."""
    exe = Path(sys.executable).parent / "milvus-server"
    if not exe.exists():
        raise MilvusServerError("milvus-server is not installed; run `make install`")
    deadline = time.monotonic() + 60
    while any(listening(p) for p in PORTS):
        if time.monotonic() > deadline:
            raise MilvusServerError(f"ports {PORTS} stay in use; stop the other Milvus first")
        time.sleep(1)
    for attempt in range(1, tries + 1):
        data = root / f"try-{attempt}"
        data.mkdir(parents=True, exist_ok=True)
        with (data / "server.log").open("w") as log:
            proc = subprocess.Popen(
                [str(exe), "--data", str(data)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait_listening(19530, timeout):
            break
        _stop(proc)
        if attempt == tries:
            raise MilvusServerError(
                f"milvus-server did not listen on 19530 within {timeout:.0f} s, "
                f"{tries} times:\n{_log_tail(data)}"
            )
    try:
        yield URI
    finally:
        _stop(proc)
