"""Search by words on the index's side: text vectors beside the image
vectors, on every backend pairing; what a collection without them answers;
deletes, drops and Reconcile keep both sets in step; query expansion."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from imagesearch.v1 import index_pb2, index_pb2_grpc
from tests.conftest import channel, drop_sql_tables, start_index, unique_prefix
from tests.index_service.test_index import DIM, MODEL, code_of, item, upsert, vector

TEXT_DIM = 8
TEXT_MODEL = "conse/all-minilm-l6-v2/53aa51172d14/test-model"


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def text_vec(n: int) -> np.ndarray:
    return unit(np.random.default_rng(1000 + n).standard_normal(TEXT_DIM))


def with_text(n: int, text: np.ndarray | None = None, image: np.ndarray | None = None) -> Any:
    it = item(n)
    it.text_vector = (text_vec(n) if text is None else text).tobytes()
    if image is not None:
        it.vector = image.tobytes()
    return it


def upsert_text(stub: Any, items: list[Any], collection: str = "photos", **kw: Any) -> Any:
    return stub.Upsert(
        index_pb2.IndexServiceUpsertRequest(
            collection=collection,
            model=MODEL,
            dim=DIM,
            items=items,
            text_model=kw.get("text_model", TEXT_MODEL),
            text_dim=TEXT_DIM,
        ),
        timeout=60,
    )


def by_words(stub: Any, query: np.ndarray, collection: str = "photos", **kw: Any) -> list[int]:
    reply = stub.Search(
        index_pb2.IndexServiceSearchRequest(
            collection=collection, text_vectors=[query.tobytes()], top_k=kw.pop("top_k", 3), **kw
        ),
        timeout=30,
    )
    return [h.image_id for h in reply.results[0].hits]


@pytest.fixture(
    scope="module",
    params=[
        "lite-sqlite",
        pytest.param("lite-mariadb", marks=pytest.mark.mariadb),
        pytest.param("server-sqlite", marks=pytest.mark.milvus_server),
    ],
)
def index_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """One index per backend pairing for the module (the tests take turns
    with the collection "photos", which each leaves dropped)."""
    prefix = unique_prefix()
    settings: dict[str, object] = {"table_prefix": prefix}
    if request.param == "lite-mariadb":
        settings["database_url"] = request.getfixturevalue("mariadb_url")
    if request.param == "server-sqlite":
        settings["milvus_uri"] = request.getfixturevalue("milvus_server")
        settings["milvus_prefix"] = prefix
    server = start_index(tmp_path_factory.mktemp("text-index"), **settings)
    yield server
    server.running.stop(1)
    if request.param == "lite-mariadb":
        drop_sql_tables(str(settings["database_url"]), prefix)


@pytest.fixture
def index(index_server: Any) -> Iterator[Any]:
    stub = index_pb2_grpc.IndexServiceStub(channel(index_server.port))
    yield stub
    with contextlib.suppress(grpc.RpcError):  # NOT_FOUND: the test dropped it itself
        stub.DropCollection(index_pb2.IndexServiceDropCollectionRequest(collection="photos"))


def test_text_vectors_are_searched_beside_the_image_vectors(index: Any) -> None:
    stored = upsert_text(index, [with_text(n) for n in range(6)])
    ids = [r.image_id for r in stored.results]
    assert by_words(index, text_vec(4))[0] == ids[4]
    assert by_words(index, text_vec(4), text_model=TEXT_MODEL)[0] == ids[4]
    listed = index.ListCollections(index_pb2.IndexServiceListCollectionsRequest(), timeout=30)
    (info,) = [c for c in listed.collections if c.name == "photos"]
    assert (info.text_model, info.text_dim) == (TEXT_MODEL, TEXT_DIM)
    # An image search of the same collection is unchanged.
    hits = index.Search(
        index_pb2.IndexServiceSearchRequest(
            collection="photos", vectors=[vector(2).tobytes()], top_k=1
        ),
        timeout=30,
    )
    assert hits.results[0].hits[0].image_id == ids[2]
    # Deleted, its text vector goes too; dropped, the text set goes with it.
    index.Delete(index_pb2.IndexServiceDeleteRequest(collection="photos", image_ids=[ids[4]]))
    assert ids[4] not in by_words(index, text_vec(4), top_k=5)
    index.DropCollection(index_pb2.IndexServiceDropCollectionRequest(collection="photos"))
    upsert(index, [item(1)])  # made again, without text vectors
    assert code_of(lambda: by_words(index, text_vec(1))) == grpc.StatusCode.FAILED_PRECONDITION


def test_a_collection_without_text_names_the_command_that_adds_it(index: Any) -> None:
    upsert(index, [item(n) for n in range(3)])
    with pytest.raises(grpc.RpcError) as err:
        by_words(index, text_vec(0))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "imgsearch reconcile --text -c photos" in str(err.value.details())
    # Reconcile lists what lacks a text vector; duplicates carrying one fill it in.
    found = index.Reconcile(
        index_pb2.IndexServiceReconcileRequest(collection="photos", text_limit=2), timeout=60
    )
    assert found.text_missing == 3 and len(found.needs_text) == 2
    filled = upsert_text(index, [with_text(n) for n in range(3)])
    ids = [r.image_id for r in filled.results]
    assert {r.image_id for r in found.needs_text} < set(ids)
    assert all(r.outcome == index_pb2.UPSERT_OUTCOME_DUPLICATE for r in filled.results)
    again = index.Reconcile(
        index_pb2.IndexServiceReconcileRequest(collection="photos", text_limit=2), timeout=60
    )
    assert (again.text_missing, len(again.needs_text)) == (0, 0)
    assert by_words(index, text_vec(1), top_k=1) == [ids[1]]


def test_bad_text_queries_and_another_text_space_are_refused(index: Any) -> None:
    upsert_text(index, [with_text(n) for n in range(2)])
    other = "conse/another-encoder/0/test-model"
    assert (
        code_of(lambda: upsert_text(index, [with_text(5)], text_model=other))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert (
        code_of(lambda: by_words(index, text_vec(0), text_model=other))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    short = np.ones(TEXT_DIM - 1, np.float32)
    assert code_of(lambda: by_words(index, short)) == grpc.StatusCode.INVALID_ARGUMENT
    both = index_pb2.IndexServiceSearchRequest(
        collection="photos",
        vectors=[vector(0).tobytes()],
        text_vectors=[text_vec(0).tobytes()],
        top_k=2,
    )
    assert code_of(lambda: index.Search(both, timeout=30)) == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        code_of(lambda: by_words(index, text_vec(0), expand=99)) == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_expansion_ranks_the_first_hits_looks_alike_higher(index: Any) -> None:
    """Images 0-2 look alike, 3-5 look like nothing else; by their text the
    query is nearest 0 (cosine 0.95), then 3, 4, 5 (0.60-0.56), then 1 and
    2 (0.45, 0.44). Expanded by the best hit's image, 1 and 2 score
    0.7 x 0.45 + 0.3 x 1 = 0.615 and come right after 0; 3 scores 0.42."""
    look = unit(np.ones(DIM))
    axes = np.eye(TEXT_DIM, dtype=np.float32)
    cosines = {0: 0.95, 3: 0.60, 4: 0.58, 5: 0.56, 1: 0.45, 2: 0.44}
    texts = {n: unit(c * axes[0] + np.sqrt(1 - c * c) * axes[1 + n]) for n, c in cosines.items()}

    def unlike(n: int) -> np.ndarray:  # an image with no likeness to `look`
        v = vector(n)
        return unit(v - (v @ look) * look)

    images = {n: look if n < 3 else unlike(n) for n in range(6)}
    stored = upsert_text(index, [with_text(n, texts[n], images[n]) for n in range(6)])
    ids = {n: r.image_id for n, r in enumerate(stored.results)}
    assert by_words(index, axes[0], top_k=6) == [ids[n] for n in (0, 3, 4, 5, 1, 2)]
    assert by_words(index, axes[0], top_k=4, expand=1) == [ids[n] for n in (0, 1, 2, 3)]
    scores = index.Search(
        index_pb2.IndexServiceSearchRequest(
            collection="photos", text_vectors=[axes[0].tobytes()], top_k=2, expand=1
        ),
        timeout=30,
    )
    assert [round(h.score, 3) for h in scores.results[0].hits] == [0.965, 0.615]


def test_a_refused_items_text_is_not_stored(index: Any) -> None:
    """Two images whose digests share the first 8 bytes share an id: the
    second is refused, and its text vector must not take the first's place."""
    first = with_text(0)
    upsert_text(index, [first])
    clash = with_text(1)
    clash.sha256 = first.sha256[:8] + bytes(24)  # same id, other image
    clash.path = "/photos/other.jpg"
    (result,) = upsert_text(index, [clash]).results
    assert result.outcome == index_pb2.UPSERT_OUTCOME_REFUSED
    hit = (
        index.Search(
            index_pb2.IndexServiceSearchRequest(
                collection="photos", text_vectors=[text_vec(1).tobytes()], top_k=1
            ),
            timeout=30,
        )
        .results[0]
        .hits[0]
    )
    assert hit.score < 0.99  # the stored text is still the first image's


def test_reconcile_deletes_text_vectors_whose_row_is_gone(tmp_path: Path) -> None:
    """A crash between the SQL delete and the vector deletes leaves vectors
    with no row (here: rows deleted behind the index's back); Reconcile
    deletes the text ones as it does the image ones."""
    import sqlite3

    server = start_index(tmp_path)
    try:
        stub = index_pb2_grpc.IndexServiceStub(channel(server.port))
        stored = upsert_text(stub, [with_text(n) for n in range(3)])
        gone = stored.results[1].image_id
        with sqlite3.connect(tmp_path / "meta.db") as db:
            db.execute("DELETE FROM imgsearch_image_paths WHERE image_id = ?", (gone,))
            db.execute("DELETE FROM imgsearch_images WHERE image_id = ?", (gone,))
        done = stub.Reconcile(index_pb2.IndexServiceReconcileRequest(collection="photos"))
        assert done.orphan_vectors_deleted == 2  # its image vector and its text vector
        again = stub.Reconcile(index_pb2.IndexServiceReconcileRequest(collection="photos"))
        assert again.orphan_vectors_deleted == 0
    finally:
        server.running.stop(1)
