"""The contract's rule for collection names, shared by the index (which
enforces it), the gateway (which checks a job's before starting it) and the
HTTP face (which documents it in its OpenAPI schema)."""

import re

from imagesearch import errors

COLLECTION_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,62}$"
COLLECTION_RULE = "1-63 letters, digits or _, starting with a letter"
OPTIONAL_COLLECTION_PATTERN = r"^([A-Za-z][A-Za-z0-9_]{0,62})?$"  # empty: the default one
COLLECTION_RE = re.compile(COLLECTION_PATTERN)


def check_collection(name: str) -> str:
    """``name``, or INVALID_ARGUMENT saying the rule."""
    if not COLLECTION_RE.fullmatch(name or ""):
        raise errors.invalid_argument(
            f"collection name {name!r} is not valid: use {COLLECTION_RULE}"
        )
    return name
