"""Reconcile through the gateway repairs a vector lost behind the index's back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from pymilvus import MilvusClient

from imagesearch import ids
from imagesearch.client import Client, JobState
from tests.conftest import CLOTHING, VENV_BIN, Stack, clothing_images


@pytest.mark.processes
def test_a_lost_vector_is_found_and_repaired(stack: Stack) -> None:
    folder = stack.tmp / "photos"
    folder.mkdir()
    photos = [CLOTHING / n for n, _ in clothing_images()[:4]]
    for n, photo in enumerate(photos):
        shutil.copy(photo, folder / f"{n}.jpg")
    streamed = (CLOTHING / clothing_images()[20][0]).read_bytes()
    with Client(stack.gateway.addr) as client:
        started = client.start_job(str(folder), collection="repair")
        *_, job = client.watch_job(started.job_id)
        assert job.state == JobState.SUCCEEDED and job.indexed == 4
        client.index_images([("phone/upload.jpg", streamed)], collection="repair")

        # Milvus loses two vectors (one of a file the gateway can read, one of
        # a streamed image it cannot).
        lost = [ids.image_id(photos[0].read_bytes()), ids.image_id(streamed)]
        milvus = MilvusClient(uri=str(stack.tmp / "index" / "milvus.db"))
        milvus.delete(collection_name="repair", ids=lost)
        milvus.flush(collection_name="repair")
        top = client.search(collection="repair", image=photos[0].read_bytes(), top_k=1)[0]
        assert top.score < 0.99  # the image is not found any more

        done = client.reconcile(collection="repair")
        assert (done.missing_vectors, done.reembedded, done.unrepaired) == (2, 1, 1), done
        assert done.unrepaired_paths == ("phone/upload.jpg",)
        top = client.search(collection="repair", image=photos[0].read_bytes(), top_k=1)[0]
        assert top.path == str(folder / "0.jpg") and top.score > 0.99

        # Streaming the image again repairs the other (it is no duplicate now).
        again = client.index_images([("phone/upload.jpg", streamed)], collection="repair")
        assert again.indexed == 1
        assert client.search(collection="repair", image=streamed, top_k=1)[0].score > 0.99

    cli = subprocess.run(
        [str(VENV_BIN / "imgsearch"), "reconcile", "-c", "repair", "--json"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "IMGSEARCH_GATEWAY": stack.gateway.addr},
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["missing_vectors"] == 0
