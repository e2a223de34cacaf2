"""A search's logic without its I/O: which hits to fetch from the vector
store, which of them to keep (ready rows only, a path prefix, a score
floor), and when to ask again, deeper. ``IndexStore.search`` and
``search_async`` (store.py) do the I/O between the rounds."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np

from index_service.rows import ImageRow

OVERFETCH = 4  # hits asked for beyond top_k, for rows pending or gone

# One round of a search: the query vectors and how many hits to fetch; and
# what comes back: per query, (id, raw distance) best first, and their rows.
SearchRound = tuple[np.ndarray, int]
RoundResult = tuple[list[list[tuple[int, float]]], dict[int, ImageRow]]
# A raw distance of the vector store -> (distance, score in 0..1)
Score = Callable[[float], tuple[float, float]]


@dataclass(frozen=True)
class Hit:
    image_id: int
    distance: float
    score: float
    row: ImageRow


def search_rounds(
    queries: list[np.ndarray],
    top_k: int,
    prefix: str,
    min_score: float,
    filtered_here: bool,
    max_top_k: int,
    score: Score,
) -> Generator[SearchRound, RoundResult, list[list[Hit]]]:
    """Yields the queries to search and how many hits to fetch, is sent back
    the hits and their rows, and returns each query's hits.

    Hits whose row is pending or gone are skipped, and with a prefix too
    broad to pass to the vector store as ids (``filtered_here``), hits are
    filtered here: ask for a few more than top_k, and ask again, 4x deeper,
    for the queries that came up short while the vector store still had more
    to give (``max_top_k``: the most it answers)."""
    fetch = min(max_top_k, (top_k * 8 if filtered_here else top_k) + OVERFETCH)
    out: list[list[Hit]] = [[] for _ in queries]
    todo = list(range(len(queries)))
    while todo:
        raw, rows = yield np.stack([queries[q] for q in todo]), fetch
        short = []
        for q, hits in zip(todo, raw, strict=True):
            out[q], complete = choose(hits, rows, top_k, prefix, min_score, score)
            if not complete and len(hits) == fetch and fetch < max_top_k:
                short.append(q)
        todo, fetch = short, min(max_top_k, fetch * 4)
    return out


def choose(
    hits: list[tuple[int, float]],
    rows: dict[int, ImageRow],
    top_k: int,
    prefix: str,
    min_score: float,
    score: Score,
) -> tuple[list[Hit], bool]:
    """The first top_k usable hits, and whether the list is final (full, or
    cut by min_score: hits come best first)."""
    chosen: list[Hit] = []
    for iid, dist in hits:
        meta_row = rows.get(iid)
        if meta_row is None:
            continue
        if prefix and not any(p.startswith(prefix) for p in meta_row.paths):
            continue
        distance, scored = score(dist)
        if scored < min_score:
            return chosen, True
        chosen.append(Hit(iid, distance, scored, meta_row))
        if len(chosen) == top_k:
            return chosen, True
    return chosen, False
