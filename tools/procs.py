"""Finding a process's children (Linux /proc): tests and benchmarks kill
them, count their CPU, or wait for a supervisor to start them again."""

from __future__ import annotations

from pathlib import Path


def _parent(entry: Path) -> int | None:
    try:
        return int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def children(parent: int) -> list[int]:
    """The pids whose parent is ``parent``, ascending."""
    return sorted(
        int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and _parent(e) == parent
    )


def descendants(root: int) -> list[int]:
    """``root``, its children, theirs, and so on."""
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for parent in frontier for pid in children(parent)]
        found += frontier
    return found


def child_pid(parent: int, module: str) -> int | None:
    """The pid of ``parent``'s child running ``python -m module``."""
    for pid in children(parent):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if module.encode() in cmdline:
            return pid
    return None
