"""The contract's rule for the text of a search by words, shared by the
gateway (which refuses a bad one before any work), the embedder (which
checks again) and the HTTP face (its OpenAPI schema)."""

from __future__ import annotations

import unicodedata

MAX_TEXT_CHARS = 200
TEXT_RULE = f"1-{MAX_TEXT_CHARS} characters, not only spaces, no control characters"


def text_problem(text: str) -> str:
    """Why ``text`` cannot be searched by words ('' when it can)."""
    if not text.strip():
        return "the text is empty; say what to look for, e.g. 'red sneakers'"
    if len(text) > MAX_TEXT_CHARS:
        return f"the text has {len(text)} characters, limit {MAX_TEXT_CHARS}"
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co")), None)
    if bad is not None:
        return f"the text holds the control character U+{ord(bad):04X}; send plain words"
    return ""
