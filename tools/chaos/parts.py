"""One process of the chaos stack: started, signalled, brought back, measured.

Each part runs in a session of its own, so a signal reaches the whole group
(milvus-server is a Python wrapper around the Milvus binary). Its output goes
through a log sink that keeps at most two files of ``LOG_CAP_BYTES``, so a run
of hours keeps bounded logs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from tools.milvus_server import listening
from tools.ports import free_port as free_port

LOG_CAP_BYTES = 16 * 1024 * 1024


class LogSink:
    """Copies a pipe into ``path``, rotating to ``path.1`` past the cap."""

    def __init__(self, pipe: IO[bytes], path: Path, cap: int = LOG_CAP_BYTES) -> None:
        self.pipe, self.path, self.cap = pipe, path, cap
        self.thread = threading.Thread(target=self._copy, name=f"log-{path.name}", daemon=True)
        self.thread.start()

    def _copy(self) -> None:
        out = self.path.open("ab")
        try:
            for line in iter(self.pipe.readline, b""):
                out.write(line)
                if out.tell() > self.cap:
                    out.close()
                    self.path.replace(self.path.with_name(self.path.name + ".1"))
                    out = self.path.open("ab")
                out.flush()
        finally:
            out.close()
            self.pipe.close()


class Part:
    """A process of the stack. ``ready`` says it serves again (a health
    check, a query); ``replicated``: another replica serves while it is down."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        logs: Path,
        port: int,
        replicated: bool = False,
        ready: Callable[[], bool] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.log = logs / f"{name}.log"
        self.replicated = replicated
        self._ready = ready or (lambda: listening(port))
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        LogSink(self.proc.stdout, self.log)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        try:
            return self.alive() and self._ready()
        except Exception:  # a check that fails in any way: not ready yet
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if not self.alive():
                raise RuntimeError(f"{self.name} exited (code {self.code()}); see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready within {timeout:.0f} s; see {self.log}")
            time.sleep(0.2)

    def code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig: int) -> None:
        """``sig`` to the part's whole process group."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def wait_exit(self, timeout: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        self._reap_group()
        return True

    def _reap_group(self) -> None:
        """SIGKILL of what is left of the group (a wrapper's child)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(self.stop_signal)
        if not self.wait_exit(timeout):
            self._reap_group()
            self.proc.wait()
        self.proc = None

    def pids(self) -> list[int]:
        """The processes of the part's group (Linux /proc)."""
        if self.proc is None:
            return []
        group = self.proc.pid
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[2]) == group:
                    found.append(int(entry.name))
        return found

    def rss_mib(self) -> float:
        return sum(rss_mib(pid) for pid in self.pids())


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
