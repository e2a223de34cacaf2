"""Content-derived image ids, shared by the index (which stores them) and the
gateway (which checks for known images before embedding)."""

from __future__ import annotations

import hashlib

SHA256_BYTES = 32


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def image_id_from_sha256(digest: bytes) -> int:
    """First 8 bytes of the SHA-256 digest as a signed big-endian int64."""
    if len(digest) != SHA256_BYTES:
        raise ValueError(f"a sha256 digest has {SHA256_BYTES} bytes, got {len(digest)}")
    return int.from_bytes(digest[:8], "big", signed=True)


def image_id(data: bytes) -> int:
    return image_id_from_sha256(sha256(data))
