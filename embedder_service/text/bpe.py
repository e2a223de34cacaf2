"""CLIP's byte-level BPE tokenizer, read from a Hugging Face checkpoint's
``vocab.json`` and ``merges.txt``: lower-cased, white space collapsed, split
into words, numbers and runs of other characters; each word's bytes mapped to
printable characters, ``</w>`` marking its end, then merged pair by pair in
the order ``merges.txt`` ranks them."""

from __future__ import annotations

import functools
import itertools
import json
import re
from pathlib import Path

START, END = "<|startoftext|>", "<|endoftext|>"
WORDS = re.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+",
    re.IGNORECASE,
)


@functools.cache
def byte_chars() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes to printable characters."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars), strict=True))


class ClipBpe:
    def __init__(self, folder: Path, context: int = 77) -> None:
        self.ids: dict[str, int] = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        pairs = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        self.ranks = {pair: n for n, pair in enumerate(pairs) if len(pair) == 2}
        self.start, self.end = self.ids[START], self.ids[END]
        self.context = context

    @functools.lru_cache(maxsize=10_000)  # noqa: B019 (one tokenizer per process)
    def word(self, token: str) -> tuple[str, ...]:
        parts = [*token[:-1], token[-1] + "</w>"]
        while len(parts) > 1:
            pairs = enumerate(itertools.pairwise(parts))
            ranked = [(self.ranks.get(pair, 1 << 30), i) for i, pair in pairs]
            rank, i = min(ranked)
            if rank == 1 << 30:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        """<|startoftext|> the pieces <|endoftext|>, cut to the context length."""
        clean = " ".join(text.split()).lower()
        mapped = byte_chars()
        ids = []
        for token in WORDS.findall(clean):
            chars = "".join(mapped[b] for b in token.encode("utf-8"))
            ids += [self.ids[p] for p in self.word(chars) if p in self.ids]
        return [self.start, *ids[: self.context - 2], self.end]
