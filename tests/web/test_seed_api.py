"""Seed 001's HTTP API, checked the way its web client and scripts use it,
and its holes checked shut: no arbitrary file read through /data, no file
written under a name the client chose, no server-side fetching of URLs."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import requests

from tests.conftest import CLOTHING, Stack, clothing_images
from tests.web.conftest import Web, photo_folder

N = 12


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def wait_progress(web: Web, total: int, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while True:
        answer = requests.get(f"{web.url}/progress", timeout=30)
        assert answer.status_code == 200, answer.text
        if answer.json() == f"current: {total}, total: {total}":
            return answer.json()
        assert time.monotonic() < deadline, answer.json()
        time.sleep(0.3)


def test_seed_001_journey(web: Web, stack: Stack) -> None:
    folder, photos = photo_folder(stack.tmp, N)
    assert requests.get(f"{web.url}/progress", timeout=30).json() == "current: 0, total: 0"

    answer = requests.post(f"{web.url}/img/load", json={"File": str(folder)}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert "job" in answer.json()
    assert wait_progress(web, N) == f"current: {N}, total: {N}"
    # The job's counters can finish a moment before its state: count when ready.
    deadline = time.monotonic() + 60
    while requests.post(f"{web.url}/img/count", timeout=30).json() != N:
        assert time.monotonic() < deadline
        time.sleep(0.3)

    # /data serves an indexed image's bytes.
    answer = requests.get(f"{web.url}/data", params={"image_path": str(photos[0])}, timeout=30)
    assert answer.status_code == 200
    assert answer.content == photos[0].read_bytes()
    assert answer.headers["content-type"] == "image/jpeg"
    assert answer.headers["x-content-type-options"] == "nosniff"

    # Upload: indexed under its content hash; the client's name is not used.
    before = files_under(stack.tmp)
    cwd_before = set(os.listdir("."))
    extra = CLOTHING / clothing_images()[-1][0]
    answer = requests.post(
        f"{web.url}/img/upload",
        files={"image": ("../../x.jpg", extra.read_bytes(), "image/jpeg")},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    assert isinstance(answer.json(), int)
    assert requests.post(f"{web.url}/img/count", timeout=30).json() == N + 1
    written = {p for p in files_under(stack.tmp) - before if p.name == "x.jpg"}
    assert written == set()
    assert not (stack.tmp.parent / "x.jpg").exists()
    assert not (stack.tmp.parent.parent / "x.jpg").exists()
    assert set(os.listdir(".")) == cwd_before

    # Search: topk pairs, the query's own file first, distances ascending.
    answer = requests.post(
        f"{web.url}/img/search",
        files={"image": ("q.jpg", photos[3].read_bytes(), "image/jpeg")},
        data={"topk": "5"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    pairs = answer.json()
    assert len(pairs) == 5
    assert all(isinstance(p, str) and isinstance(d, float) for p, d in pairs)
    assert pairs[0][0] == str(photos[3])
    assert pairs[0][1] < 1e-4
    distances = [d for _, d in pairs]
    assert distances == sorted(distances)

    # The holes stay shut.
    for path in ("/etc/passwd", str(folder / "not-indexed.jpg"), "../../etc/passwd"):
        answer = requests.get(f"{web.url}/data", params={"image_path": path}, timeout=30)
        assert answer.status_code == 404, (path, answer.text)
        assert "root:" not in answer.text
    # An upload is stored under its content hash, and a streamed name is never served back.
    upload_name = f"uploads/{hashlib.sha256(extra.read_bytes()).hexdigest()}"
    answer = requests.get(f"{web.url}/data", params={"image_path": upload_name}, timeout=30)
    assert answer.status_code == 404
    answer = requests.post(
        f"{web.url}/img/upload", data={"url": "http://127.0.0.1:1/x.jpg"}, timeout=30
    )
    assert answer.status_code == 400
    assert "does not fetch URLs" in answer.json()["detail"]

    answer = requests.post(f"{web.url}/img/drop", timeout=60)
    assert answer.status_code == 200
    assert requests.post(f"{web.url}/img/count", timeout=30).json() == 0


def test_table_name_picks_the_collection(web: Web, stack: Stack) -> None:
    _, photos = photo_folder(stack.tmp, 2)
    for photo in photos:
        answer = requests.post(
            f"{web.url}/img/upload",
            params={"table_name": "seedtable"},
            files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
    count = requests.post(f"{web.url}/img/count", params={"table_name": "seedtable"}, timeout=30)
    assert count.json() == 2
    assert requests.post(f"{web.url}/img/count", timeout=30).json() == 0
    # Uploading the same bytes again is a duplicate with the same id.
    again = requests.post(
        f"{web.url}/img/upload",
        params={"table_name": "seedtable"},
        files={"image": ("other-name.jpg", photos[0].read_bytes(), "image/jpeg")},
        timeout=120,
    )
    assert again.status_code == 200
    assert (
        requests.post(f"{web.url}/img/count", params={"table_name": "seedtable"}, timeout=30).json()
        == 2
    )


def test_bad_uploads_get_clear_answers(web: Web, stack: Stack) -> None:
    not_image = requests.post(
        f"{web.url}/img/upload",
        files={"image": ("notes.jpg", b"this is not an image at all", "image/jpeg")},
        timeout=60,
    )
    assert not_image.status_code == 400
    assert "not an image" in not_image.json()["detail"]
    empty = requests.post(
        f"{web.url}/img/search", files={"image": ("e.jpg", b"", "image/jpeg")}, timeout=60
    )
    assert empty.status_code == 400
    assert "empty" in empty.json()["detail"]
    missing = requests.post(f"{web.url}/img/search", data={"topk": "5"}, timeout=60)
    assert missing.status_code == 400
    bad_topk = requests.post(
        f"{web.url}/img/search",
        files={"image": ("q.jpg", b"x", "image/jpeg")},
        data={"topk": "0"},
        timeout=60,
    )
    assert bad_topk.status_code == 400
    assert "topk" in bad_topk.json()["detail"]
    outside = requests.post(f"{web.url}/img/load", json={"File": "/etc"}, timeout=30)
    assert outside.status_code == 403, outside.text
