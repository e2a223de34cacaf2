"""Validation of what callers name: collections and paths."""

from __future__ import annotations

import re

from imagesearch import errors

COLLECTION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
MAX_PATH_CHARS = 700  # fits a MySQL utf8mb4 index key beside the collection name


def collection(name: str) -> str:
    if not COLLECTION_RE.match(name or ""):
        raise errors.invalid_argument(
            f"collection name {name!r} is not valid: use 1-63 letters, digits or _, "
            "starting with a letter"
        )
    return name


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
