"""Which server-side files the gateway may read: only under the allowed roots.

Paths are resolved (``..`` and symlinks followed) before the check, so neither
``..`` nor a symlink can lead out of a root. A file is read by opening it
first and then checking where the opened file really is (the kernel's name
for the descriptor), so swapping a folder for a symlink between the check and
the read cannot lead out of a root either.

Messages to clients never show the roots themselves (the log does), and
name files by ``display_path``: a name that is not valid UTF-8 (legal on
Linux) cannot go into a protobuf string as it is.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from imagesearch import errors

OUTSIDE = (
    "is outside the folders this gateway may read (GATEWAY_ALLOWED_ROOTS); "
    "stream the file with IndexImages instead"
)


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
        if raw.startswith("~"):
            # Not expanded: the answer would tell whether a user exists.
            raise errors.invalid_argument(f"{raw}: '~' is not expanded; send an absolute path")
        real = Path(raw).resolve()
        if not self.contains(real):
            raise errors.permission_denied(f"{raw} {OUTSIDE}")
        return real

    def read(self, path: str, check_size: Callable[[int], None], max_bytes: int) -> bytes:
        """The bytes of the regular file ``path`` if the file actually opened
        lies under a root (checked on the open descriptor, not on the name).
        ``check_size`` sees the size before anything is read (and raises past
        ``max_bytes``); at most ``max_bytes`` + 1 bytes are read whatever the
        file does meanwhile (grows, or is not what its size says)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            try:
                opened = Path(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:  # no /proc: the name, resolved now
                opened = Path(path).resolve()
            if not self.contains(opened):
                raise errors.permission_denied(f"{display_path(path)} {OUTSIDE}")
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise errors.invalid_argument(f"{display_path(path)} is not a regular file")
            check_size(info.st_size)
            os.set_blocking(fd, True)
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(max_bytes + 1)
            if len(data) > max_bytes:
                check_size(len(data))
                raise errors.invalid_argument(
                    f"{display_path(path)}: over the limit of {max_bytes} bytes"
                )
            return data
        finally:
            os.close(fd)


def display_path(path: str) -> str:
    """``path`` as a valid UTF-8 string: undecodable bytes become ``\\xNN``."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        raw = path.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "backslashreplace")
