"""Search by words end to end, over gRPC and through the typed client: a
folder job gives every image a text vector in the same pass; "shoes" finds
the shoes among the clothing photos; a collection indexed before it had text
vectors says how to add them, and Reconcile adds them from the files; bad
texts and mixed queries are refused before any work."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from imagesearch.client import Client, ImageSearchError, Query
from imagesearch.v1 import (
    embedder_pb2,
    embedder_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    index_pb2,
    index_pb2_grpc,
)
from tests.conftest import (
    CLOTHING,
    JOB_STORES,
    Server,
    Stack,
    channel,
    clothing_images,
    gateway_stack,
    index_clothing,
    job_store_settings,
)

LABELS = {str(CLOTHING / path): label for path, label in clothing_images()}


@pytest.fixture(scope="module", params=JOB_STORES)
def stack(
    request: pytest.FixtureRequest,
    text_embedder: Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """The clothing photos indexed by a folder job, with the job in the
    gateway's files (the session's shared stack) and on NATS (what compose
    and k8s ship)."""
    if request.param == "local":
        yield request.getfixturevalue("words_stack")
        return
    jobs = job_store_settings(request, request.param)
    with gateway_stack(text_embedder, tmp_path_factory.mktemp("words"), **jobs) as running:
        index_clothing(running)
        yield running


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.gateway.addr, timeout=60) as c:
        yield c


def labels_of(paths: list[str]) -> list[str]:
    return [LABELS[p] for p in paths]


def test_words_find_the_photos_they_name_over_grpc(stack: Stack) -> None:
    stub = gateway_pb2_grpc.GatewayServiceStub(channel(stack.gateway.port))
    reply = stub.Search(
        gateway_pb2.SearchRequest(collection="clothes", text="shoes", top_k=8), timeout=60
    )
    found = labels_of([h.path for h in reply.hits])
    assert found.count("Shoes") >= 6, found
    assert all(0.0 <= h.score <= 1.0 and h.width > 0 for h in reply.hits)
    assert [h.score for h in reply.hits] == sorted((h.score for h in reply.hits), reverse=True)
    # Several texts in one call, each its own result.
    many = stub.Search(
        gateway_pb2.SearchRequest(
            collection="clothes",
            top_k=8,
            queries=[gateway_pb2.Query(text="a hat"), gateway_pb2.Query(text="sneakers")],
        ),
        timeout=60,
    )
    hats, sneakers = (labels_of([h.path for h in r.hits]) for r in many.results)
    assert hats.count("Hat") >= 4 and sneakers.count("Shoes") >= 6, (hats, sneakers)


def test_the_typed_client_searches_by_words(client: Client) -> None:
    hits = client.search(text="a pair of shorts", collection="clothes", top_k=8)
    assert labels_of([h.path for h in hits]).count("Shorts") >= 4
    (words,) = client.search_many([Query(text="shoes")], collection="clothes", top_k=5)
    assert labels_of([h.path for h in words]).count("Shoes") >= 4
    listed = {c.name: c for c in client.list_collections()}
    assert listed["clothes"].text_model.startswith("conse/all-minilm-l6-v2/")


@pytest.mark.parametrize(
    "request_kw, says",
    [
        ({"text": " "}, "empty"),
        ({"text": "x" * 201}, "limit"),
        ({"text": "shoes\x07"}, "control"),
        ({"text": "shoes", "any_rotation": True}, "any_rotation"),
        (
            {"queries": [gateway_pb2.Query(text="shoes"), gateway_pb2.Query(image_id=1)]},
            "not both",
        ),
    ],
)
def test_bad_word_queries_are_refused(stack: Stack, request_kw: dict, says: str) -> None:
    stub = gateway_pb2_grpc.GatewayServiceStub(channel(stack.gateway.port))
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(gateway_pb2.SearchRequest(collection="clothes", **request_kw), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in str(err.value.details())


def test_a_collection_without_text_vectors_gets_them_by_reconcile(
    stack: Stack, client: Client
) -> None:
    """Images stored before search by words (their rows and image vectors,
    no text vectors: an upgrade) are refused naming the command; Reconcile
    with text embeds them again from their files, and words then find them."""
    embedder = embedder_pb2_grpc.EmbedderServiceStub(channel(stack.embedder.port))
    info = embedder.GetModelInfo(embedder_pb2.EmbedderServiceGetModelInfoRequest(), timeout=30)
    files = sorted(LABELS)[:24:3]
    embedded = embedder.Embed(
        embedder_pb2.EmbedderServiceEmbedRequest(
            images=[embedder_pb2.Image(name=f, data=Path(f).read_bytes()) for f in files]
        ),
        timeout=120,
    )
    from imagesearch import ids

    index = index_pb2_grpc.IndexServiceStub(channel(stack.index.port))
    index.Upsert(
        index_pb2.IndexServiceUpsertRequest(
            collection="before",
            model=info.model_id,
            dim=info.dim,
            items=[
                index_pb2.UpsertItem(
                    sha256=ids.sha256(Path(f).read_bytes()),
                    path=f,
                    size=Path(f).stat().st_size,
                    width=e.width,
                    height=e.height,
                    vector=e.vector,
                    origin=index_pb2.PATH_ORIGIN_SERVER,
                )
                for f, e in zip(files, embedded.embeddings, strict=True)
            ],
        ),
        timeout=60,
    )
    with pytest.raises(ImageSearchError) as err:
        client.search(text="shoes", collection="before")
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "imgsearch reconcile --text -c before" in err.value.message
    done = client.reconcile(collection="before", text=True)
    assert (done.text_made, done.text_missing) == (len(files), 0)
    hits = client.search(text="shoes", collection="before", top_k=len(files))
    assert sorted(h.path for h in hits) == sorted(files)
    again = client.reconcile(collection="before", text=True)
    assert (again.text_made, again.text_missing) == (0, 0)


@pytest.mark.slow
def test_a_model_without_a_text_side_says_so(embedder: Server, tmp_path: Path) -> None:
    with gateway_stack(embedder, tmp_path) as running, Client(running.gateway.addr) as c:
        c.index_images([(str(f), f.read_bytes()) for f in sorted(CLOTHING.glob("Hat/*.jpg"))[:2]])
        for call in (
            lambda: c.search(text="a hat"),
            lambda: c.reconcile(collection="images", text=True),
        ):
            with pytest.raises(ImageSearchError) as err:
                call()
            assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert "no text side" in err.value.message


def test_grpcurl_searches_by_words(stack: Stack) -> None:
    from tests.gateway.test_grpcurl import grpcurl

    found = grpcurl(
        "-d",
        '{"collection": "clothes", "text": "sneakers", "top_k": 5}',
        stack.gateway.addr,
        "imagesearch.v1.GatewayService/Search",
    )
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)["hits"]
    assert sum(LABELS[h["path"]] == "Shoes" for h in hits) >= 4, hits
    print(found.stdout)
