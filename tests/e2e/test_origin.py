"""A name sent in a client stream cannot claim or re-point a path that a
server job found: stream names and server paths are told apart on the row."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc

from imagesearch.client import Client, JobState
from tests.conftest import CLOTHING, Stack, clothing_images


def photos(stack: Stack) -> tuple[Path, list[Path], bytes]:
    """A folder of three real photos under the gateway's roots, and the bytes
    of a fourth photo that is not in it."""
    folder = stack.tmp / "photos"
    folder.mkdir()
    names = [n for n, _ in clothing_images()]
    copied = []
    for n, name in enumerate(names[:3]):
        target = folder / f"{n}.jpg"
        shutil.copy(CLOTHING / name, target)
        copied.append(target.resolve())
    return folder, copied, (CLOTHING / names[10]).read_bytes()


def run_job(client: Client, folder: Path, collection: str) -> None:
    started = client.start_job(str(folder), collection=collection)
    *_, last = client.watch_job(started.job_id)
    assert last.state == JobState.SUCCEEDED, last.message


def test_a_stream_cannot_take_a_path_a_server_job_found(stack: Stack) -> None:
    folder, files, other = photos(stack)
    with Client(stack.gateway.addr) as client:
        run_job(client, folder, "origin")
        claimed = str(files[0])
        report = client.index_images([(claimed, other)], collection="origin")
        assert (report.indexed, report.failed) == (0, 1)
        (error,) = report.errors
        assert error.code == grpc.StatusCode.PERMISSION_DENIED
        assert "server job" in error.reason
        # The path still shows the file's own image; the other image was not stored.
        hit = client.search(collection="origin", image=files[0].read_bytes(), top_k=1)[0]
        assert hit.path == claimed and hit.score > 0.99
        assert client.count(collection="origin").count == 3
        # The same bytes under that name are a harmless duplicate.
        again = client.index_images([(claimed, files[0].read_bytes())], collection="origin")
        assert (again.duplicates, again.failed) == (1, 0)
        # A name of its own is fine.
        own = client.index_images([("upload/other.jpg", other)], collection="origin")
        assert own.indexed == 1


def test_a_server_job_takes_back_a_path_a_stream_claimed_first(stack: Stack) -> None:
    folder, files, other = photos(stack)
    with Client(stack.gateway.addr) as client:
        squatter = client.index_images([(str(files[0]), other)], collection="back")
        assert squatter.indexed == 1
        run_job(client, folder, "back")
        hit = client.search(collection="back", image=files[0].read_bytes(), top_k=1)[0]
        assert hit.path == str(files[0]) and hit.score > 0.99
        # The streamed image lost its only name, so it is gone.
        assert client.count(collection="back").count == 3
        assert client.search(collection="back", image=other, top_k=1)[0].score < 0.99
