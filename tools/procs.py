"""Finding a supervisor's child processes (tests and benchmarks kill them)."""

from __future__ import annotations

from pathlib import Path


def child_pid(parent: int, module: str) -> int | None:
    """The pid of ``parent``'s child running ``python -m module`` (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and module.encode() in cmdline:
            return int(entry.name)
    return None
