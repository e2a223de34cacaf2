"""What callers name: collections and paths, validated; and what to tell a
caller whose vectors are another model's than a collection's."""

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


def ways_back(name: str, stored: str) -> str:
    """What to do about a collection of another model's vectors: the two ways
    out, exactly. Model ids are ``model/pooling/weights-digest``, then
    ``/resize-crop`` when the preprocessing sizes are not the defaults; a GeM
    exponent other than 3 shows in the pooling (``gem4``); a composed model's
    (tirg_css) is ``flat``, set by the model itself."""
    parts = stored.split("/")
    model, pooling, digest = [*parts, "", ""][:3]
    sizes = parts[3:]
    settings = [f"EMBEDDER_MODEL={model}"]
    if pooling == "flat":  # a composed model (tirg_css): its sizes are its own
        sizes = []
    elif pooling.startswith("gem") and pooling != "gem":
        settings += ["EMBEDDER_POOLING=gem", f"EMBEDDER_GEM_P={pooling.removeprefix('gem')}"]
    else:
        settings.append(f"EMBEDDER_POOLING={pooling or 'avg'}")
    if sizes:
        resize, _, crop = sizes[0].partition("-")
        settings += [f"EMBEDDER_RESIZE={resize}", f"EMBEDDER_IMAGE_SIZE={crop}"]
    return (
        f"Either run the embedder that built it ({' '.join(settings)}, with the weights "
        f"whose sha256 starts {digest or '?'}: EMBEDDER_WEIGHTS=bundled if they were the "
        f"bundled ones), or re-index it with this one: `imgsearch drop -c {name} --yes`, "
        "then index its folders again (or index into a new collection)"
    )
