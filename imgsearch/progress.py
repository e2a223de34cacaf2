"""A dependency-free progress line on stderr (redrawn in place on a terminal,
one line per update at most every few seconds otherwise)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self, total: int, label: str, stream: TextIO | None = None, quiet: bool = False
    ) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self._last = 0.0
        self.growing = False  # total is still growing (a job's walk): not final yet

    def update(self, done: int, **counts: int) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        final = done >= self.total and not self.growing
        if not self.tty and not final and now - self._last < 5.0:
            return
        self._last = now
        width = 30
        filled = int(width * done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        extra = " ".join(f"{k}={v}" for k, v in counts.items())
        more = "+" if self.growing else ""
        line = f"{self.label} [{bar}] {done}/{self.total}{more} {extra}"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()
