"""A name sent in a client stream cannot claim or re-point a path that a
server job found: stream names and server paths are told apart on the row."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from imagesearch.client import Client, ImageSearchError, JobState
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


@pytest.mark.slow
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


def test_get_image_serves_only_files_a_server_job_found(stack: Stack) -> None:
    folder, files, other = photos(stack)
    big = folder / "big.jpg"  # larger than gRPC's default 4 MB message
    noise = np.random.default_rng(0).integers(0, 255, (2000, 3000, 3), dtype=np.uint8)
    Image.fromarray(noise).save(big, quality=95)
    assert big.stat().st_size > 4 * 1024 * 1024
    with Client(stack.gateway.addr) as client:
        run_job(client, folder, "serve")
        client.index_images([("upload/mine.jpg", other)], collection="serve")
        assert client.get_image(str(files[1]), collection="serve") == files[1].read_bytes()
        assert client.get_image(str(big.resolve()), collection="serve") == big.read_bytes()

        def code(path: str) -> grpc.StatusCode:
            try:
                client.get_image(path, collection="serve")
            except ImageSearchError as exc:
                return exc.code
            raise AssertionError(f"{path} was served")

        # A streamed name, a file never indexed, a path outside the roots.
        for path in ("upload/mine.jpg", str(folder / "nope.jpg"), "/etc/passwd"):
            assert code(path) == grpc.StatusCode.NOT_FOUND, path
        # A file changed since it was indexed is not passed off as the image.
        files[2].write_bytes(other)
        assert code(str(files[2])) == grpc.StatusCode.FAILED_PRECONDITION
