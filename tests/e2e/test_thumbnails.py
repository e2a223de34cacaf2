"""Thumbnails: the embedder makes one from the image it decodes anyway, the
index keeps it with the row, the gateway serves it (GetThumbnail), and
Reconcile makes the missing ones of images indexed before thumbnails."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import grpc
import pytest
from PIL import Image

from imagesearch.client import Client, ImageSearchError
from tests.conftest import ODD, Stack, start_gateway
from tests.web.conftest import photo_folder


def thumb_size(data: bytes) -> tuple[int, int]:
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG"
    return img.size


def test_streamed_and_job_images_get_oriented_thumbnails(stack: Stack) -> None:
    folder, photos = photo_folder(stack.tmp, 3)
    rotated = ODD / "hopper_orientation_6.jpg"  # stored sideways, EXIF says rotate
    shutil.copy(rotated, folder / rotated.name)
    with Client(stack.gateway.addr) as client:
        job = client.start_job(str(folder), collection="thumbs")
        for _ in client.watch_job(job.job_id):
            pass
        report = client.index_images(
            [("client/a.png", (ODD / "exif_imagemagick_orientation.png").read_bytes())],
            collection="thumbs",
            return_images=True,
        )
        hits = client.search(image=photos[0].read_bytes(), collection="thumbs", top_k=10)
        assert len(hits) == 5
        for hit in hits:
            w, h = thumb_size(client.get_thumbnail(hit.image_id, collection="thumbs"))
            assert max(w, h) == min(256, max(hit.width, hit.height))
            assert abs(w / h - hit.width / hit.height) < 0.02, hit.path
        sideways = next(h for h in hits if h.path.endswith(rotated.name))
        raw_w, raw_h = Image.open(rotated).size
        w, h = thumb_size(client.get_thumbnail(sideways.image_id, collection="thumbs"))
        assert (w > h) == (raw_h > raw_w)  # turned as EXIF says, like the vector's pixels
        assert report.image_ids["client/a.png"] in {h.image_id for h in hits}

        with pytest.raises(ImageSearchError) as err:
            client.get_thumbnail(12345, collection="thumbs")
        assert err.value.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.slow
def test_reconcile_backfills_thumbnails_from_server_files(stack: Stack, tmp_path: Path) -> None:
    # A gateway as before thumbnails existed, on the same index.
    old = start_gateway(
        tmp_path / "old",
        stack.embedder.addr,
        stack.index.addr,
        thumbnail_px=0,
        allowed_roots=(str(tmp_path),),
    )
    folder, photos = photo_folder(stack.tmp, 4)
    try:
        with Client(old.addr) as client:
            job = client.start_job(str(folder), collection="old")
            for _ in client.watch_job(job.job_id):
                pass
            streamed = client.index_images(
                [("streamed.jpg", (ODD / "hopper_bad_exif.jpg").read_bytes())],
                collection="old",
                return_images=True,
            ).image_ids["streamed.jpg"]
    finally:
        old.running.stop(1)
    photos[3].unlink()  # its file is gone: no thumbnail can be made for it
    with Client(stack.gateway.addr) as client:
        hits = client.search(image=photos[0].read_bytes(), collection="old", top_k=10)
        assert len(hits) == 5
        for hit in hits:
            with pytest.raises(ImageSearchError) as err:
                client.get_thumbnail(hit.image_id, collection="old")
            assert err.value.code == grpc.StatusCode.NOT_FOUND
            assert "backfill" in err.value.message

        plain = client.reconcile(collection="old")
        assert plain.thumbnails_made == 0
        done = client.reconcile(collection="old", thumbnails=True)
        assert done.thumbnails_made == 3
        assert done.thumbnails_missing == 2  # the streamed image and the deleted file
        assert done.unrepaired == 0 and done.reembedded == 0
        made = {h.image_id for h in hits if not h.path.endswith(photos[3].name)} - {streamed}
        for image_id in made:
            assert max(thumb_size(client.get_thumbnail(image_id, collection="old"))) <= 256
        again = client.reconcile(collection="old", thumbnails=True)
        assert (again.thumbnails_made, again.thumbnails_missing) == (0, 2)
        assert client.count(collection="old").count == 5  # nothing else changed
