"""Cutting a list of files into consecutive groups bounded by bytes (and
count), so that a call or a batch holds a bounded amount of memory; used by
gateway jobs and the typed client; and any stream of values in lists of a
fixed size."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def file_size(path: str | Path) -> int:
    """The file's size, 0 when it cannot be read (its reader reports that)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def byte_groups(
    paths: Sequence[str], max_bytes: int, max_items: int | None = None
) -> Iterator[tuple[list[str], int]]:
    """Consecutive groups of ``paths`` whose files add up to at most
    ``max_bytes`` (a larger file goes alone) and, if given, hold at most
    ``max_items``; with each group's size in bytes."""
    group: list[str] = []
    size = 0
    for path in paths:
        length = file_size(path)
        full = max_items is not None and len(group) >= max_items
        if group and (full or size + length > max_bytes):
            yield group, size
            group, size = [], 0
        group.append(path)
        size += length
    if group:
        yield group, size


def batched(values: Iterable[T], size: int) -> Iterator[list[T]]:
    """``values`` in lists of ``size`` (the last may be shorter), read as
    they come (itertools.batched, which Python 3.11 lacks)."""
    batch: list[T] = []
    for value in values:
        batch.append(value)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
