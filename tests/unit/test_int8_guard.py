"""The int8 guard's retrieval check: the share of each check photo's nearest
neighbours that int8 keeps."""

from __future__ import annotations

import torch

from embedder_service.int8 import OVERLAP_FLOOR, Agreement, neighbour_overlap


def unit_rows(n: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)


def test_the_same_vectors_keep_every_neighbour() -> None:
    vectors = unit_rows(32, 16, 0)
    assert neighbour_overlap(vectors, vectors.clone(), 16) == 1.0


def test_noise_that_reorders_neighbours_fails_the_floor() -> None:
    want = unit_rows(32, 16, 0)
    slight = torch.nn.functional.normalize(want + 0.01 * unit_rows(32, 16, 1), dim=1)
    strong = torch.nn.functional.normalize(want + 1.0 * unit_rows(32, 16, 2), dim=1)
    assert neighbour_overlap(want, slight, 16) >= OVERLAP_FLOOR
    assert neighbour_overlap(want, strong, 16) < OVERLAP_FLOOR
    assert not Agreement(0.99, 0.97, 16, neighbour_overlap(want, strong, 16)).holds
    assert Agreement(0.99, 0.97, 16, 0.95).holds
