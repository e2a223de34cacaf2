"""What an Upsert batch writes, decided before anything is written: which
items are refused and why, which images are new, which vectors go to the
vector store, which paths are added or now name another image. Pure: the
store reads the rows it needs, asks for the plan and applies it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from imagesearch import errors, ids
from index_service import names
from index_service.rows import READY, SERVER, STREAM, NewImage


@dataclass(frozen=True)
class Item:
    sha256: bytes
    path: str
    size: int
    width: int
    height: int
    vector: bytes
    origin: str = STREAM  # SERVER: a file a server job found; STREAM: a client's name
    thumbnail: bytes = b""  # JPEG; kept if the image has none yet
    text_vector: bytes = b""  # in the collection's text space (search by words)


@dataclass(frozen=True)
class UpsertResult:
    image_id: int
    duplicate: bool
    path_added: bool
    refused: str = ""  # why nothing was stored for this item
    code: grpc.StatusCode = grpc.StatusCode.OK  # with ``refused``


@dataclass(frozen=True)
class Checked:
    """An item whose fields and vector passed the batch-wide checks."""

    item: Item
    image_id: int
    vector: np.ndarray  # normalised


@dataclass
class UpsertPlan:
    results: list[UpsertResult] = field(default_factory=list)  # one per item, in order
    new_images: list[NewImage] = field(default_factory=list)  # rows to make, pending
    to_embed: dict[int, np.ndarray] = field(default_factory=dict)  # image id -> vector
    new_paths: dict[str, int] = field(default_factory=dict)  # path -> image id
    moved_paths: dict[str, int] = field(default_factory=dict)  # path -> its new image id
    origins: dict[str, str] = field(default_factory=dict)  # path -> SERVER or STREAM
    thumbnails: dict[int, bytes] = field(default_factory=dict)  # image id -> JPEG


def unpack_vector(raw: bytes, dim: int, what: str) -> np.ndarray:
    if len(raw) == 0:
        raise errors.invalid_argument(f"{what}: the vector is empty")
    if len(raw) != dim * 4:
        raise errors.invalid_argument(
            f"{what}: the vector has {len(raw)} bytes, expected {dim} float32 values "
            f"({dim * 4} bytes) for this collection"
        )
    vec = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    # In float64 the squares of float32 values neither overflow nor vanish,
    # so the sum is finite exactly when every value is.
    square = float(vec @ vec)
    if not math.isfinite(square):
        raise errors.invalid_argument(f"{what}: the vector contains NaN or infinity")
    if square == 0.0:
        raise errors.invalid_argument(f"{what}: the vector is all zeros")
    return (vec / math.sqrt(square)).astype(np.float32)


def check_items(items: Sequence[Item], dim: int) -> list[Checked]:
    """INVALID_ARGUMENT, naming the item, for a batch that cannot be stored
    at all: a bad digest, a negative size, a vector that is not ``dim``
    finite, non-zero float32 values. The vectors are normalised as one
    array; the first bad one is named as if checked alone."""
    for n, item in enumerate(items):
        what = f"item #{n} ({item.path[:60] or 'no path'})"
        if len(item.sha256) != ids.SHA256_BYTES:
            raise errors.invalid_argument(
                f"{what}: sha256 must be 32 bytes, got {len(item.sha256)}"
            )
        if item.size < 0 or item.width < 0 or item.height < 0:
            raise errors.invalid_argument(f"{what}: size, width and height must not be negative")
        if len(item.vector) != dim * 4:
            unpack_vector(item.vector, dim, what)  # raises, naming the length
    if not items:
        return []
    matrix = np.frombuffer(b"".join(it.vector for it in items), dtype="<f4").reshape(-1, dim)
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.linalg.norm(matrix, axis=1)  # NaN or inf where any value is
        unit = matrix / norms[:, None]
    for row in np.flatnonzero(~np.isfinite(norms) | (norms == 0.0)).tolist():
        item = items[row]  # refused, or so large that float32 squares overflow
        unit[row] = unpack_vector(item.vector, dim, f"item #{row} ({item.path[:60] or 'no path'})")
    return [
        Checked(item, ids.image_id_from_sha256(item.sha256), vector)
        for item, vector in zip(items, unit, strict=True)
    ]


def plan_upsert(
    checked: Sequence[Checked],
    statuses: dict[int, tuple[str, str]],
    owners: dict[str, tuple[int, str]],
) -> UpsertPlan:
    """The plan for a checked batch, given the stored ``statuses`` of its
    images (image id -> (status, sha256 hex)) and the stored ``owners`` of its
    paths (path -> (image id, origin)). Later items see the earlier ones: a
    batch that names one image twice stores it once."""
    plan = UpsertPlan()
    owners = dict(owners)
    digests = {iid: sha for iid, (_, sha) in statuses.items()}
    made: set[int] = set()
    for c in checked:
        item, iid = c.item, c.image_id
        current = owners.get(item.path)  # (image id, origin), this batch included
        refused = refusal(item, iid, current, digests)
        if refused is not None:
            plan.results.append(UpsertResult(iid, False, False, *refused))
            continue
        digests.setdefault(iid, item.sha256.hex())
        known = statuses.get(iid, (None, ""))[0]
        duplicate = known == READY or iid in made or iid in plan.to_embed
        if known is None and iid not in made:
            made.add(iid)
            plan.new_images.append(
                NewImage(iid, item.sha256.hex(), item.path, item.size, item.width, item.height)
            )
        if known != READY and iid not in plan.to_embed:
            plan.to_embed[iid] = c.vector
        path_added = False
        if current is None:
            plan.new_paths[item.path] = iid
            path_added = True
        elif current[0] != iid:
            plan.moved_paths[item.path] = iid  # the file at this path changed
            path_added = True
        elif item.origin == SERVER and current[1] != SERVER:
            plan.moved_paths[item.path] = iid  # a server job takes back a streamed name
        if item.path not in plan.origins or item.origin == SERVER:
            plan.origins[item.path] = item.origin
        owners[item.path] = (iid, plan.origins[item.path])
        plan.results.append(UpsertResult(iid, duplicate, path_added and duplicate))
        if item.thumbnail:
            plan.thumbnails[iid] = item.thumbnail
    return plan


def refusal(
    item: Item, iid: int, owner: tuple[int, str] | None, digests: dict[int, str]
) -> tuple[str, grpc.StatusCode] | None:
    """Why ``item`` cannot be stored (its own problem, not the batch's), or None."""
    try:
        names.path(item.path)
    except errors.ServiceError as exc:
        return exc.message, exc.code
    stored = digests.get(iid)
    if stored is not None and stored != item.sha256.hex():
        # Ids are the first 8 bytes of SHA-256: two different images can
        # share one. They are never merged.
        return (
            f"{item.path}: image id {iid} collides: the stored image with this id has "
            f"sha256 {stored}, these bytes {item.sha256.hex()}; not stored",
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    if item.origin != SERVER and owner is not None and owner[1] == SERVER and owner[0] != iid:
        return (
            f"{item.path}: a server job indexed a file under this path; a streamed "
            "image cannot take it (send it under another name)",
            grpc.StatusCode.PERMISSION_DENIED,
        )
    return None
