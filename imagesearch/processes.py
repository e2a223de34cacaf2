"""Several processes of one server on one port (``EMBEDDER_PROCESSES``).

One Python process serves calls under one GIL, which caps what it can feed a
fast GPU (bench/RESULTS.md, issue 46). ``supervise`` starts N copies of the
same command line, each told its index, all binding the same port with
SO_REUSEPORT: the kernel spreads connections over them. It forwards SIGTERM,
SIGINT and SIGHUP to them (each drains as it would alone), restarts one that
dies (a crash must not halve the service for good) and exits once all have
stopped. Settings that cannot work stop everything: a child that exits 2 or 3
(bad settings, weights missing) would do so again.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from imagesearch import logs

log = logging.getLogger(__name__)

INDEX_ENV = "IMAGESEARCH_PROCESS_INDEX"
FATAL = (2, 3)  # bad settings, a fatal start error: it would fail again
RESTART_AFTER_S = 1.0


def process_index() -> int | None:
    """This process's index among its siblings; None when it runs alone."""
    value = os.environ.get(INDEX_ENV, "")
    return int(value) if value.isdigit() else None


def reserve_port(host: str) -> socket.socket:
    """A bound (not listening) socket on a free port of ``host``, with
    SO_REUSEPORT: the port stays ours while the children bind it too, and it
    takes no connections itself."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return sock


class Supervisor:
    """N children running this process's command line with their own port
    flags; ``wait`` returns the exit code."""

    def __init__(self, name: str, count: int, host: str, port: int, metrics_port: int = 0) -> None:
        self.name = name
        self.count = count
        self._reserved = reserve_port(host) if port == 0 else None
        self.port = self._reserved.getsockname()[1] if self._reserved else port
        self.metrics_port = metrics_port
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._children: list[subprocess.Popen[bytes] | None] = [None] * count
        self._fatal = 0

    def command(self, index: int) -> list[str]:
        """The command line of child ``index``: this one's, the port flags
        last (the last flag wins)."""
        argv = [sys.executable, *sys.orig_argv[1:]]
        argv += ["--port", str(self.port)]
        if self.metrics_port:
            argv += ["--metrics-port", str(self.metrics_port + index)]
        return argv

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, INDEX_ENV: str(index)}
        # A session of its own: a terminal's Ctrl-C reaches the children once,
        # through us, not twice.
        return subprocess.Popen(self.command(index), env=env, start_new_session=True)

    def start(self) -> None:
        with self._lock:
            for i in range(self.count):
                self._children[i] = self._spawn(i)
        logs.event(log, "processes.started", service=self.name, count=self.count, port=self.port)

    def signal_all(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stopping.set()
        with self._lock:
            for child in self._children:
                if child is not None and child.poll() is None:
                    child.send_signal(signum)

    def _watch(self, index: int) -> None:
        """Waits for child ``index``; restarts it unless we are stopping or
        its exit says it would fail again."""
        while True:
            with self._lock:
                child = self._children[index]
            assert child is not None
            code = child.wait()
            if self._stopping.is_set():
                return
            if code in FATAL:
                logs.event(log, "processes.fatal", logging.ERROR, index=index, code=code)
                self._fatal = code
                self.signal_all(signal.SIGTERM)
                return
            logs.event(log, "processes.restart", logging.WARNING, index=index, code=code)
            if self._stopping.wait(RESTART_AFTER_S):
                return
            with self._lock:
                self._children[index] = self._spawn(index)

    def wait(self) -> int:
        watchers = [threading.Thread(target=self._watch, args=(i,)) for i in range(self.count)]
        for w in watchers:
            w.start()
        while any(w.is_alive() for w in watchers):
            time.sleep(0.2)  # the main thread must stay free for signal handlers
        if self._reserved is not None:
            self._reserved.close()
        return self._fatal


def supervise(
    name: str,
    count: int,
    host: str,
    port: int,
    metrics_port: int = 0,
    signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP),
) -> int:
    """Runs ``count`` copies of this command line on one port until a signal
    stops them; returns an exit code (0, or a child's fatal one)."""
    supervisor = Supervisor(name, count, host, port, metrics_port)
    for signum in signals:
        signal.signal(signum, lambda s, _f: supervisor.signal_all(s))
    supervisor.start()
    return supervisor.wait()
