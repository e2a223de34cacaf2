"""The index's refusals that need no backend: collection names and vectors
(the index tests check, on one backend, that a refusal reaches the caller as
INVALID_ARGUMENT and changes nothing)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from imagesearch.errors import ServiceError
from imagesearch.naming import check_collection
from index_service.plan import unpack_vector

DIM = 16


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x; DROP TABLE imgsearch_images",
        "../../etc",
        "a" * 64,
        "1abc",
        "photos'--",
        "ph otos",
        "фото",
        "_photos",
    ],
)
def test_hostile_collection_names_are_refused(name: str) -> None:
    with pytest.raises(ServiceError) as err:
        check_collection(name)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert repr(name) in err.value.message and "starting with a letter" in err.value.message


@pytest.mark.parametrize("name", ["photos", "P", "a" * 63, "clothes_2026"])
def test_valid_collection_names_pass(name: str) -> None:
    assert check_collection(name) == name


@pytest.mark.parametrize(
    "raw, what",
    [
        (b"", "the vector is empty"),
        (np.full(DIM, np.nan, dtype=np.float32).tobytes(), "NaN or infinity"),
        (np.full(DIM, np.inf, dtype=np.float32).tobytes(), "NaN or infinity"),
        (np.ones(DIM - 1, dtype=np.float32).tobytes(), "60 bytes, expected 16 float32"),
        (np.ones(DIM + 1, dtype=np.float32).tobytes(), "68 bytes"),
        (np.zeros(DIM, dtype=np.float32).tobytes(), "all zeros"),
    ],
)
def test_bad_vectors_are_refused_naming_the_item(raw: bytes, what: str) -> None:
    with pytest.raises(ServiceError) as err:
        unpack_vector(raw, DIM, "item #3 (/a.jpg)")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.message.startswith("item #3 (/a.jpg): ") and what in err.value.message


def test_a_good_vector_comes_back_unit_length() -> None:
    raw = np.arange(1, DIM + 1, dtype="<f4").tobytes()
    vec = unpack_vector(raw, DIM, "query")
    assert vec.dtype == np.float32 and abs(float(np.linalg.norm(vec)) - 1.0) < 1e-6
    assert np.allclose(vec * np.linalg.norm(np.arange(1, DIM + 1)), np.arange(1, DIM + 1))
