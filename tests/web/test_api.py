"""The /v1 JSON API on real servers: search with thumbnails, uploads, jobs
with Server-Sent Events, deletes, gRPC codes as HTTP statuses, the caller's
token forwarded to the gateway, bounded bodies."""

from __future__ import annotations

import io
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.conftest import Stack, free_port, start_gateway, start_index, wait_until
from tests.web.conftest import Web, photo_folder, start_web


def events(web: Web, job_id: str, headers: dict[str, str] | None = None) -> Iterator[dict]:
    with requests.get(
        f"{web.url}/v1/jobs/{job_id}/events", headers=headers, stream=True, timeout=300
    ) as answer:
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in answer.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                assert kind == "job", line
                yield json.loads(line[len("data: ") :])


def test_job_progress_search_thumbnails_and_delete(web: Web, stack: Stack) -> None:
    folder, photos = photo_folder(stack.tmp, 10)
    answer = requests.post(
        f"{web.url}/v1/jobs", json={"collection": "v1", "folder": str(folder)}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    job = answer.json()
    seen = list(events(web, job["job_id"]))
    assert seen[-1]["state"] == "succeeded" and seen[-1]["terminal"]
    assert seen[-1]["done"] == seen[-1]["total"] == 10
    assert [e["done"] for e in seen] == sorted(e["done"] for e in seen)

    listed = requests.get(f"{web.url}/v1/jobs", params={"collection": "v1"}, timeout=30).json()
    assert listed["jobs"][0]["job_id"] == job["job_id"]
    count = requests.get(f"{web.url}/v1/collections/v1/count", timeout=30).json()
    assert count == {"collection": "v1", "count": 10, "pending": 0}
    names = [
        c["name"]
        for c in requests.get(f"{web.url}/v1/collections", timeout=30).json()["collections"]
    ]
    assert "v1" in names

    answer = requests.post(
        f"{web.url}/v1/collections/v1/search",
        files={"image": ("q.jpg", photos[2].read_bytes(), "image/jpeg")},
        data={"top_k": "4"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    hits = answer.json()["hits"]
    assert len(hits) == 4
    assert hits[0]["path"] == str(photos[2])
    assert hits[0]["score"] > 0.999
    # Every hit has a thumbnail: a JPEG at most 256 px on its longer side,
    # EXIF-oriented like the image (same aspect ratio).
    for hit in hits:
        thumb = requests.get(f"{web.url}{hit['thumbnail_url']}", timeout=30)
        assert thumb.status_code == 200, thumb.text
        assert thumb.headers["content-type"] == "image/jpeg"
        # Asked again every time (a delete takes effect at once), a 304 when kept.
        assert thumb.headers["cache-control"] == "private, no-cache" and thumb.headers["etag"]
        again = requests.get(
            f"{web.url}{hit['thumbnail_url']}",
            headers={"If-None-Match": thumb.headers["etag"]},
            timeout=30,
        )
        assert again.status_code == 304 and again.content == b""
        img = Image.open(io.BytesIO(thumb.content))
        assert img.format == "JPEG"
        assert max(img.size) == min(256, max(hit["width"], hit["height"]))
        assert abs(img.size[0] / img.size[1] - hit["width"] / hit["height"]) < 0.02
    # Search by a stored image's id (a decimal string: int64 does not fit a JS number).
    by_id = requests.post(
        f"{web.url}/v1/collections/v1/search",
        data={"image_id": hits[1]["image_id"], "top_k": "1"},
        timeout=60,
    ).json()["hits"]
    assert by_id[0]["image_id"] == hits[1]["image_id"]
    # The file of a hit a server job found.
    file = requests.get(
        f"{web.url}/v1/collections/v1/file", params={"path": hits[0]["path"]}, timeout=30
    )
    assert file.status_code == 200 and file.content == photos[2].read_bytes()

    deleted = requests.post(
        f"{web.url}/v1/collections/v1/delete", json={"paths": [str(photos[0])]}, timeout=30
    ).json()
    assert deleted == {"deleted": 1, "paths_removed": 1}
    deleted = requests.post(
        f"{web.url}/v1/collections/v1/delete", json={"path_prefix": str(folder) + "/"}, timeout=30
    ).json()
    assert deleted["deleted"] == 9
    gone = requests.get(f"{web.url}{hits[0]['thumbnail_url']}", timeout=30)
    assert gone.status_code == 404
    assert requests.delete(f"{web.url}/v1/collections/v1", timeout=30).json() == {"dropped": True}
    assert requests.get(f"{web.url}/v1/collections/v1/count", timeout=30).status_code == 404


def test_uploads_have_thumbnails_and_per_file_errors(web: Web, stack: Stack) -> None:
    _, photos = photo_folder(stack.tmp, 2)
    files = [
        ("files", ("a.jpg", photos[0].read_bytes(), "image/jpeg")),
        ("files", ("b.jpg", photos[1].read_bytes(), "image/jpeg")),
        ("files", ("broken.jpg", b"\xff\xd8\xff\xe0 not really", "image/jpeg")),
    ]
    answer = requests.post(f"{web.url}/v1/collections/up/images", files=files, timeout=120)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert (report["indexed"], report["failed"]) == (2, 1)
    assert report["errors"][0]["path"] == "broken.jpg"
    assert report["errors"][0]["code"] == "INVALID_ARGUMENT"
    for image_id in report["image_ids"].values():
        thumb = requests.get(f"{web.url}/v1/collections/up/images/{image_id}/thumbnail", timeout=30)
        assert thumb.status_code == 200
    # A streamed image's name is never served as a file.
    assert (
        requests.get(
            f"{web.url}/v1/collections/up/file", params={"path": "a.jpg"}, timeout=30
        ).status_code
        == 404
    )


def test_grpc_codes_become_http_statuses(web: Web, stack: Stack) -> None:
    def status(method: str, path: str, **kw) -> tuple[int, dict]:
        answer = requests.request(method, f"{web.url}{path}", timeout=60, **kw)
        return answer.status_code, answer.json()

    code, body = status("GET", "/v1/jobs/no-such-job")
    assert (code, body["code"]) == (404, "NOT_FOUND")
    code, body = status("GET", "/v1/jobs/no-such-job/events")
    assert code == 404
    code, body = status("GET", "/v1/collections/nothing_here/count")
    assert code == 404
    code, body = status("POST", "/v1/jobs", json={"folder": "/etc"})
    assert (code, body["code"]) == (403, "PERMISSION_DENIED")
    code, body = status("POST", "/v1/collections/x/search", data={"top_k": "3"})
    assert (code, body["code"]) == (400, "INVALID_ARGUMENT")
    code, body = status("POST", "/v1/collections/x/search", data={"image_id": "12ab"})
    assert code == 400 and "not an integer" in body["detail"]
    code, body = status("POST", "/v1/collections/bad name!/delete", json={"path_prefix": "/"})
    assert code == 400
    code, body = status("POST", "/v1/collections/x/delete", json={})
    assert code == 400 and "say what to delete" in body["detail"]
    code, body = status("GET", "/v1/collections/x/images/99999999999999999999/thumbnail")
    assert code == 400
    code, body = status("POST", "/v1/jobs", json={"folder": ""})
    assert code == 400 and body["code"] == "INVALID_ARGUMENT"


def test_the_gateway_going_away_is_503(stack: Stack) -> None:
    web = start_web(stack.gateway, timeout_s=3)
    try:
        stack.gateway.running.stop(0)
        answer = requests.get(f"{web.url}/v1/collections", timeout=30)
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "UNAVAILABLE"
        assert answer.headers["retry-after"] == "1"
        assert requests.get(f"{web.url}/readyz", timeout=30).status_code == 503
        assert requests.get(f"{web.url}/healthz", timeout=30).status_code == 200
    finally:
        web.stop()


def test_bodies_over_the_limit_are_refused(stack: Stack) -> None:
    web = start_web(stack.gateway, max_upload_mb=1)
    try:
        big = b"\xff\xd8\xff" + secrets.token_bytes(2 * 1024 * 1024)
        answer = requests.post(
            f"{web.url}/v1/collections/x/search", files={"image": ("big.jpg", big)}, timeout=60
        )
        assert answer.status_code == 413
        assert "WEB_MAX_UPLOAD_MB" in answer.json()["detail"]

        def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it comes
            yield (
                b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
                b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff"
            )
            for _ in range(3):
                yield secrets.token_bytes(512 * 1024)
            yield b"\r\n--xyz--\r\n"

        answer = requests.post(
            f"{web.url}/img/upload",
            data=chunked(),
            headers={"Content-Type": "multipart/form-data; boundary=xyz"},
            timeout=60,
        )
        assert answer.status_code == 413
    finally:
        web.stop()


def test_the_callers_token_is_forwarded(
    guarded_web: tuple[Web, dict[str, str]], tmp_path: Path
) -> None:
    web, tokens = guarded_web

    def bearer(role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[role]}"}

    answer = requests.get(f"{web.url}/v1/collections", timeout=30)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    answer = requests.get(
        f"{web.url}/v1/collections", headers={"Authorization": "Bearer wrong"}, timeout=30
    )
    assert answer.status_code == 401
    assert requests.post(f"{web.url}/img/count", timeout=30).status_code == 401
    answer = requests.get(
        f"{web.url}/v1/collections", headers={"Authorization": "Bearer \x7f"}, timeout=30
    )
    assert answer.status_code == 401
    folder, _ = photo_folder(tmp_path, 2)
    answer = requests.post(
        f"{web.url}/v1/jobs", json={"folder": str(folder)}, headers=bearer("read"), timeout=30
    )
    assert answer.status_code == 403
    answer = requests.post(
        f"{web.url}/v1/jobs", json={"folder": str(folder)}, headers=bearer("write"), timeout=30
    )
    assert answer.status_code == 200, answer.text
    final = list(events(web, answer.json()["job_id"], bearer("read")))[-1]
    assert final["state"] == "succeeded"
    assert requests.post(f"{web.url}/img/count", headers=bearer("read"), timeout=30).json() == 2
    for role in ("read", "write"):  # the gateway's roles decide: dropping is admin's
        answer = requests.delete(
            f"{web.url}/v1/collections/images", headers=bearer(role), timeout=30
        )
        assert answer.status_code == 403
        assert "admin" in answer.json()["detail"]
    assert requests.delete(
        f"{web.url}/v1/collections/images", headers=bearer("admin"), timeout=30
    ).json() == {"dropped": True}
    # Health stays open, as on the gateway.
    assert requests.get(f"{web.url}/readyz", timeout=30).status_code == 200


def test_the_page_and_its_headers(web: Web) -> None:
    page = requests.get(f"{web.url}/", timeout=30)
    assert page.status_code == 200
    assert "<title>imagesearch</title>" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert requests.get(f"{web.url}/static/app.js", timeout=30).status_code == 200
    schema = requests.get(f"{web.url}/openapi.json", timeout=30).json()
    for path in ("/img/load", "/progress", "/img/search", "/v1/jobs/{job_id}/events"):
        assert path in schema["paths"]
    assert requests.get(f"{web.url}/docs", timeout=30).status_code == 200
    assert requests.get(f"{web.url}/readyz", timeout=30).json() == {"ready": True}


@pytest.mark.slow
def test_event_streams_are_capped_and_freed_when_the_browser_leaves(tmp_path: Path) -> None:
    """Watchers wait in their own bounded pool: past WEB_MAX_EVENT_STREAMS a new
    stream is 429 while other calls still answer; a watcher that goes away
    frees its place (and its gateway stream) at once, mid-job."""
    index = start_index(tmp_path / "index")
    # A job that stays running: its embedder is not there, and jobs wait out outages.
    gateway = start_gateway(
        tmp_path, f"127.0.0.1:{free_port()}", index.addr, job_outage_s=600, backend_wait_s=2
    )
    web = start_web(gateway, max_event_streams=2)
    try:
        folder, _ = photo_folder(tmp_path, 4)
        job = requests.post(f"{web.url}/v1/jobs", json={"folder": str(folder)}, timeout=30).json()
        url = f"{web.url}/v1/jobs/{job['job_id']}/events"
        watchers = [requests.get(url, stream=True, timeout=60) for _ in range(2)]
        # (A line iterator that is dropped closes its connection: keep them.)
        lines = [w.iter_lines(chunk_size=1, decode_unicode=True) for w in watchers]
        for w, line in zip(watchers, lines, strict=True):
            assert w.status_code == 200
            assert next(line).startswith("event: job")
        refused = requests.get(url, timeout=30)
        assert refused.status_code == 429, refused.text
        assert "WEB_MAX_EVENT_STREAMS" in refused.json()["detail"]
        assert requests.get(f"{web.url}/v1/jobs/{job['job_id']}", timeout=30).status_code == 200
        watchers[0].close()  # the browser tab closes
        assert wait_until(lambda: web.app.state.event_streams.open == 1, 30)
        again = requests.get(url, stream=True, timeout=60)
        assert again.status_code == 200
        assert requests.get(f"{web.url}/v1/jobs/{job['job_id']}", timeout=30).json()["state"] in (
            "pending",
            "running",
        ), "the job ended before the test could prove anything"
        again.close()
        watchers[1].close()
        assert wait_until(lambda: web.app.state.event_streams.open == 0, 30)
    finally:
        web.stop()
        gateway.running.stop(1)
        index.running.stop(1)
