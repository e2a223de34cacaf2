"""Has a set of files changed since it was last read? For settings files that
are replaced while a service runs (a Kubernetes Secret update swaps a link,
cert-manager renews a certificate, an edit): looked at once a second at most,
from whichever thread asks."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

CHECK_S = 1.0  # how often the files are looked at, at most

Key = tuple[tuple[int, int, int], ...]


def files_key(paths: Sequence[str]) -> Key | None:
    """What changes when a file is rewritten or its link is swapped; None
    while one of them cannot be seen (mid-rotation)."""
    try:
        return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in map(os.stat, paths))
    except OSError:
        return None


class FileWatch:
    def __init__(self, paths: Sequence[str], check_s: float = CHECK_S) -> None:
        self.paths = list(paths)
        self.check_s = check_s
        self._key = files_key(self.paths)
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def changed(self) -> Key | None:
        """The files' new key when they differ from the accepted one (looked
        at once per ``check_s`` at most), else None. Hand it to ``accept``
        once the files are read, so that a failed read is tried again."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked < self.check_s:
                return None
            self._checked = now
            key = files_key(self.paths)
            return key if key is not None and key != self._key else None

    def accept(self, key: Key) -> None:
        with self._lock:
            self._key = key
