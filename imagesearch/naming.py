"""The contract's rule for collection names, shared by the index (which
enforces it) and the HTTP face (which documents it in its OpenAPI schema)."""

COLLECTION_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,62}$"
COLLECTION_RULE = "1-63 letters, digits or _, starting with a letter"
OPTIONAL_COLLECTION_PATTERN = r"^([A-Za-z][A-Za-z0-9_]{0,62})?$"  # empty: the default one
