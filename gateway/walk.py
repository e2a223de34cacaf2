"""A folder's image files, in sorted order, in bounded memory, resumable.

A folder job's walk (gateway/jobs.py) publishes chunks as it goes and may be
stopped at any file (its gateway dies); the next walk starts after the last
file published. So the order must be the same every time: names are sorted
within each folder and sub-folders are entered where their name sorts, which
orders every path by its components. Resuming ``after`` a path skips exactly
the paths that sort before or at it.

Sorting a folder needs all its names; a folder of millions of files would
hold them all. Names are therefore read in runs of ``RUN`` entries, each run
sorted, and runs past the first spilled to a temporary file and merged back
(``heapq.merge``): a folder of any size holds about one run in memory.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import tempfile
from collections.abc import Generator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO

from gateway.paths import AllowedRoots
from imagesearch import errors, logs
from imagesearch.images import is_image_name

log = logging.getLogger(__name__)

RUN = 20_000  # names sorted in memory at once, per folder being walked
DIR, FILE, LINK = "d", "f", "l"
Entry = tuple[str, str]  # (name, kind)


def _kind(entry: os.DirEntry[str]) -> str:
    if entry.is_symlink():
        return LINK
    return DIR if entry.is_dir(follow_symlinks=False) else FILE


def _spill(run: list[Entry], stack: ExitStack) -> IO[str]:
    """A sorted run written to a temporary file (removed when ``stack`` closes)."""
    out = stack.enter_context(tempfile.TemporaryFile("w+", encoding="ascii"))  # noqa: SIM115
    for item in run:
        out.write(json.dumps(item) + "\n")  # ensure_ascii: surrogates survive
    out.seek(0)
    return out


def _read_run(lines: IO[str]) -> Iterator[Entry]:
    for line in lines:
        name, kind = json.loads(line)
        yield name, kind


def sorted_entries(folder: str, run: int = RUN) -> Generator[Entry, None, None]:
    """The entries of ``folder`` (not its sub-folders) sorted by name, holding
    at most about ``run`` of them in memory; the spilled runs are removed when
    the generator ends or is closed."""
    with ExitStack() as stack:
        runs: list[IO[str]] = []
        current: list[Entry] = []
        with os.scandir(folder) as it:
            for entry in it:
                current.append((entry.name, _kind(entry)))
                if len(current) >= run:
                    current.sort()
                    runs.append(_spill(current, stack))
                    current = []
        current.sort()
        if not runs:
            yield from current
            return
        yield from heapq.merge(*(_read_run(r) for r in runs), iter(current))


def walk_images(
    folder: Path, recursive: bool, roots: AllowedRoots, after: str = "", run: int = RUN
) -> Iterator[str]:
    """Paths of image files under ``folder``, sorted by their components,
    starting after the path ``after`` (one this walk gave before; "" from the
    start). Symlinks to files outside the roots are skipped, and folder
    symlinks are not followed."""
    if not folder.is_dir():
        raise errors.invalid_argument(f"{folder} is not a folder")
    top = str(folder)
    resume: tuple[str, ...] = ()
    if after:
        resume = tuple(os.path.relpath(after, top).split(os.sep))
    # Each level: its path, its components under ``top``, its entries left.
    levels: list[tuple[str, tuple[str, ...], Generator[Entry, None, None]]] = [
        (top, (), sorted_entries(top, run))
    ]
    try:
        while levels:
            path, parts, entries = levels[-1]
            try:
                item = next(entries, None)
            except OSError as exc:
                if len(levels) == 1:
                    raise  # the folder itself: the caller says why
                # A sub-folder that cannot be read is skipped, as os.walk does.
                logs.event(log, "walk.unreadable", logging.WARNING, folder=path, error=str(exc))
                item = None
            if item is None:
                levels.pop()
                continue
            name, kind = item
            here = (*parts, name)
            full = os.path.join(path, name)
            if kind == DIR:
                # Entered unless all of it sorts before ``after``.
                if recursive and here >= resume[: len(here)]:
                    levels.append((full, here, sorted_entries(full, run)))
                continue
            if here <= resume or not is_image_name(name):
                continue
            if kind == LINK:
                target = Path(full).resolve()
                if target.is_dir() or not roots.contains(target):
                    continue
            yield full
    finally:
        for _, _, entries in levels:
            entries.close()
