"""Composed image+text search end to end: a gateway with the default
embedder (MobileNetV2) and a tirg_css embedder beside it (GATEWAY_EMBEDDERS),
the index on Milvus Lite and SQLite. A collection made with --model tirg_css
is embedded by the composing model; a text on any other collection is
refused with FAILED_PRECONDITION; the CLI, the typed client and the HTTP
face return the generated target first."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import requests

from imagesearch.client import Client, ImageSearchError, Query
from tests.conftest import (
    CLOTHING,
    VENV_BIN,
    Server,
    clothing_images,
    start_embedder,
    start_gateway,
    start_index,
)
from tests.web.conftest import start_web
from training.tirg.evaluate import Gallery
from training.tirg.scenes import Example, png, take

pytestmark = pytest.mark.processes  # the scene script and the CLI as processes


@dataclass
class Scenes:
    gateway: Server
    examples: list[Example]
    gallery: Gallery
    paths: list[str]  # of gallery.scenes, indexed in collection "scenes"
    tmp: Path

    def query_file(self, i: int) -> Path:
        path = self.tmp / f"query-{i}.png"
        path.write_bytes(png(self.examples[i].source))
        return path


@pytest.fixture(scope="module")
def scenes(embedder: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenes]:
    tmp = tmp_path_factory.mktemp("composed")
    tirg = start_embedder(model="tirg_css", weights="bundled")
    index = start_index(tmp / "index")
    gateway = start_gateway(tmp, embedder.addr, index.addr, embedders=f"tirg_css={tirg.addr}")
    examples = take("test", 23, 40)
    gallery = Gallery.of(examples)
    folder = tmp / "gallery"
    paths = [str(p) for p in gallery.write(folder)]
    # The CLI makes the collection for the composing model.
    made = subprocess.run(
        [str(VENV_BIN / "imgsearch"), "index", str(folder), "--model", "tirg_css",
         "-c", "scenes", "--json", "--gateway", gateway.addr],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["indexed"] == len(paths)
    yield Scenes(gateway, examples, gallery, paths, tmp)
    gateway.running.stop(1)
    index.running.stop(1)
    tirg.running.stop(1)


def test_the_collection_holds_the_composing_models_vectors(scenes: Scenes) -> None:
    with Client(scenes.gateway.addr) as client:
        by_name = {c.name: c for c in client.list_collections()}
    assert by_name["scenes"].model.startswith("tirg_css/flat/")
    assert by_name["scenes"].dim == 256
    assert by_name["scenes"].composes  # so the page offers "and change it"


def test_cli_composed_search_returns_the_generated_target_first(scenes: Scenes) -> None:
    # Fixed cases, one of each kind of modification.
    cases: dict[str, int] = {}
    for i, ex in enumerate(scenes.examples):
        cases.setdefault(ex.kind, i)
    assert set(cases) == {"add", "remove", "colour", "size"}
    for kind, i in cases.items():
        ex = scenes.examples[i]
        found = subprocess.run(
            [str(VENV_BIN / "imgsearch"), "search", str(scenes.query_file(i)), "--text", ex.text,
             "-c", "scenes", "-k", "3", "--json", "--gateway", scenes.gateway.addr],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert found.returncode == 0, found.stderr
        hits = json.loads(found.stdout)
        target = scenes.paths[scenes.gallery.target[i]]
        assert hits[0]["path"] == target, (kind, ex.text, [h["path"] for h in hits])
    # The contact sheet shows the text above the query and its hits.
    sheet = scenes.tmp / "sheet.png"
    ex = scenes.examples[cases["colour"]]
    drawn = subprocess.run(
        [str(VENV_BIN / "imgsearch"), "search", str(scenes.query_file(cases["colour"])),
         "--text", ex.text, "-c", "scenes", "-k", "4", "--sheet", str(sheet),
         "--gateway", scenes.gateway.addr],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr
    assert sheet.stat().st_size > 1000


def test_typed_client_finds_most_targets_first(scenes: Scenes) -> None:
    """Every query of the gallery, its own source left out as the paper does."""
    queries = [Query(image=png(ex.source), text=ex.text) for ex in scenes.examples]
    with Client(scenes.gateway.addr) as client:
        answers = client.search_many(queries, collection="scenes", top_k=3)
        plain = client.search(image=png(scenes.examples[0].source), collection="scenes", top_k=1)
    first = []
    for i, hits in enumerate(answers):
        ranked = [h.path for h in hits if h.path != scenes.paths[scenes.gallery.source[i]]]
        first.append(ranked[0] == scenes.paths[scenes.gallery.target[i]])
    assert sum(first) / len(first) >= 0.8, first
    # Without a text the query finds its own scene: the stored vector.
    assert plain[0].path == scenes.paths[scenes.gallery.source[0]]
    assert plain[0].score > 0.999


def test_text_where_it_cannot_go_is_refused(scenes: Scenes) -> None:
    photos = [(p, (CLOTHING / p).read_bytes()) for p, _ in clothing_images()[:3]]
    scene = png(scenes.examples[0].source)
    with Client(scenes.gateway.addr) as client:
        client.index_images(photos, collection="photos")  # the default model
        with pytest.raises(ImageSearchError) as err:
            client.search(image=photos[0][1], collection="photos", text="make the red cube blue")
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "mobilenet_v2" in err.value.message and "cannot compose" in err.value.message
        # A model nobody serves, and a model other than the collection's.
        with pytest.raises(ImageSearchError) as err:
            client.index_images(photos, collection="new_one", model="resnet50")
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "no embedder serves model 'resnet50'" in err.value.message
        with pytest.raises(ImageSearchError) as err:
            client.index_images(photos, collection="scenes", model="mobilenet_v2")
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "holds vectors of model tirg_css/" in err.value.message
        with pytest.raises(ImageSearchError) as err:
            client.start_job(str(CLOTHING), collection="scenes", model="mobilenet_v2")
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        # Texts that cannot be read, and texts without a query image.
        for kwargs, words in (
            ({"image": scene, "text": "make it fluffy"}, "it, fluffy"),
            (
                {"image": scene, "text": "make the red square blue", "any_rotation": True},
                "any_rotation",
            ),
            ({"image_id": 1, "text": "make the red square blue"}, "not a stored image_id"),
        ):
            with pytest.raises(ImageSearchError) as err:
                client.search(collection="scenes", **kwargs)
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, kwargs
            assert words in err.value.message, err.value.message
        composes = {c.name: c.composes for c in client.list_collections()}
        assert composes == {"photos": False, "scenes": True} | (
            {"job_scenes": True} if "job_scenes" in composes else {}
        )
        # Nothing was lost or mixed.
        assert client.count(collection="photos").count == 3
        assert client.count(collection="scenes").count == len(scenes.paths)
        assert "new_one" not in {c.name for c in client.list_collections()}


def test_a_job_makes_a_collection_of_the_model_it_names(scenes: Scenes) -> None:
    folder = scenes.tmp / "job_scenes"
    folder.mkdir()
    for i, ex in enumerate(scenes.examples[:5]):
        (folder / f"t{i}.png").write_bytes(png(ex.target))
    with Client(scenes.gateway.addr) as client:
        started = client.start_job(str(folder), collection="job_scenes", model="tirg_css")
        assert started.model == "tirg_css"
        job = list(client.watch_job(started.job_id))[-1]
        assert job.indexed == 5 and job.model == "tirg_css", job
        model = {c.name: c.model for c in client.list_collections()}["job_scenes"]
        assert model.startswith("tirg_css/")
        hits = client.search(
            image=png(scenes.examples[0].source),
            text=scenes.examples[0].text,
            collection="job_scenes",
            top_k=1,
        )
        assert hits[0].path == str(folder / "t0.png")


def test_http_face_composes_too(scenes: Scenes) -> None:
    web = start_web(scenes.gateway)
    try:
        i = 1
        ex = scenes.examples[i]
        answer = requests.post(
            f"{web.url}/v1/collections/scenes/search",
            files={"image": ("q.png", png(ex.source), "image/png")},
            data={"top_k": "3", "text": ex.text},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        paths = [h["path"] for h in answer.json()["hits"]]
        paths = [p for p in paths if p != scenes.paths[scenes.gallery.source[i]]]
        assert paths[0] == scenes.paths[scenes.gallery.target[i]]
        refused = requests.post(
            f"{web.url}/v1/collections/photos/search",
            files={"image": ("q.png", png(ex.source), "image/png")},
            data={"text": ex.text},
            timeout=120,
        )
        assert refused.status_code == 409, refused.text
        assert "cannot compose" in refused.text
        listed = requests.get(f"{web.url}/v1/collections", timeout=60).json()["collections"]
        composes = {c["model"].split("/")[0]: c["composes"] for c in listed}
        assert composes["tirg_css"] is True and composes["mobilenet_v2"] is False, listed
    finally:
        web.stop()
