"""Which server-side files the gateway may read: only under the allowed roots.

Paths are resolved (``..`` and symlinks followed) before the check, so neither
``..`` nor a symlink can lead out of a root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from imagesearch import errors
from imagesearch.images import is_image_name


class AllowedRoots:
    def __init__(self, roots: list[Path]) -> None:
        self.roots = [r.resolve() for r in roots]

    def describe(self) -> str:
        return ", ".join(str(r) for r in self.roots)

    def contains(self, path: Path) -> bool:
        return any(path == r or path.is_relative_to(r) for r in self.roots)

    def resolve(self, raw: str) -> Path:
        """The real path of ``raw`` if it lies under a root; else PERMISSION_DENIED."""
        if not raw:
            raise errors.invalid_argument("a server path is empty")
        if "\x00" in raw:
            raise errors.invalid_argument(f"path {raw!r} contains a NUL character")
        real = Path(raw).expanduser().resolve()
        if not self.contains(real):
            raise errors.permission_denied(
                f"{raw} is outside the folders this gateway may read ({self.describe()}); "
                "set GATEWAY_ALLOWED_ROOTS, or stream the files with IndexImages"
            )
        return real


def walk_images(folder: Path, recursive: bool, roots: AllowedRoots) -> Iterator[Path]:
    """Image files under ``folder`` in a stable (sorted) order. Symlinks whose
    target leaves the roots are skipped."""
    if not folder.is_dir():
        raise errors.invalid_argument(f"{folder} is not a folder")
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        if not recursive:
            dirnames.clear()
        for name in sorted(filenames):
            if not is_image_name(name):
                continue
            path = Path(dirpath) / name
            if path.is_symlink() and not roots.contains(path.resolve()):
                continue
            yield path
