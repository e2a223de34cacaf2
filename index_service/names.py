"""Validation of what callers name: collections and paths."""

from __future__ import annotations

from imagesearch import errors
from imagesearch.naming import check_collection

MAX_PATH_CHARS = 700  # fits a MySQL utf8mb4 index key beside the collection name


def collection(name: str) -> str:
    return check_collection(name)


def path(value: str) -> str:
    if not value:
        raise errors.invalid_argument("an image path (or name) is empty")
    if len(value) > MAX_PATH_CHARS:
        raise errors.invalid_argument(
            f"path {value[:60]!r}... has {len(value)} characters, limit {MAX_PATH_CHARS}"
        )
    if "\x00" in value:
        raise errors.invalid_argument(f"path {value!r} contains a NUL character")
    return value
