"""The words of composed queries: the tokenizer and the vocabulary the TIRG
network reads (the scenes that training generates use the same words)."""

from __future__ import annotations

import re

SHAPES = ("square", "circle", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan", "orange", "gray")
SIZES = ("small", "large")
CELLS = (
    "top-left",
    "top-center",
    "top-right",
    "middle-left",
    "center",
    "middle-right",
    "bottom-left",
    "bottom-center",
    "bottom-right",
)
WORDS = re.compile(r"[a-z]+")
# Words a person may use for the generator's own (CSS speaks of cubes,
# spheres and cylinders): read as the generator's word.
SYNONYMS = {
    "cube": "square",
    "box": "square",
    "sphere": "circle",
    "ball": "circle",
    "cylinder": "triangle",
    "grey": "gray",
    "big": "large",
    "little": "small",
    "tiny": "small",
    "centre": "center",
    "an": "a",
    "at": "in",
    "into": "to",
    "on": "in",
}


def tokens(text: str) -> list[str]:
    """Lower-case words, synonyms read as the generator's words; "top-left"
    is two words."""
    return [SYNONYMS.get(w, w) for w in WORDS.findall(text.lower())]


def vocabulary() -> list[str]:
    """Every word the generator writes, sorted; the model's vocabulary."""
    words = {"add", "a", "to", "the", "remove", "make", "in"}
    words |= set(SHAPES) | set(COLOURS) | set(SIZES)
    for cell in CELLS:
        words |= set(tokens(cell))
    return sorted(words)
