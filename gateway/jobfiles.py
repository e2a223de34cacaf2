"""How a job's files are kept on disk: durably, and without a name able to
split or shift the list.

- Names are JSON strings, ASCII-escaped, so newlines, ``\\u2028`` and names
  that are not UTF-8 (held by Python as surrogate escapes) all come back
  exactly. Whole-job lists written before the streamed walk (JSON lines
  after a header line, or one name per line before that) are still read.
- State files are replaced atomically, with the file and its folder fsynced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

HEADER = {"format": "imagesearch-job-files", "version": 1}


def write_atomic(path: Path, data: bytes) -> None:
    """Replaces ``path`` with ``data``: written to a temporary file, fsynced,
    renamed over it, and the folder fsynced so the rename survives a crash."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb", closefd=False) as out:
            out.write(data)
            out.flush()
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_file_list(path: Path) -> list[str]:
    """The names in a whole-job file list (written before the streamed walk)."""
    return decode_file_list(path.read_bytes(), str(path))


def decode_file_list(data: bytes, origin: str) -> list[str]:
    """The names of a file list; ``origin`` names it in errors."""
    text = data.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    try:
        header = json.loads(lines[0]) if lines and lines[0] else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != HEADER["format"]:
        return [line for line in lines if line]  # an older version's list
    files: list[str] = []
    for number, line in enumerate(lines[1:], 2):
        if not line:
            continue
        name = json.loads(line)
        if not isinstance(name, str):
            raise ValueError(f"{origin} line {number} is not a file name")
        files.append(name)
    return files
