"""What a hostile web page can make a visitor's browser send to a local
stack, refused by the HTTP face (real uvicorn, real gateway): cross-site state
changes, foreign Host names (DNS rebinding), uploads from callers the gateway
would refuse (before their body is read), and more uploads than fit."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from imagesearch.client import Client
from tests.conftest import (
    CLOTHING,
    ROOT,
    Server,
    Stack,
    clothing_images,
    free_port,
    start_gateway,
    start_index,
    wait_port,
    wait_until,
)
from tests.web.conftest import Web, start_web

EVIL = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}


def index_one(stack: Stack, collection: str = "images") -> None:
    photo = (CLOTHING / clothing_images()[0][0]).read_bytes()
    with Client(stack.gateway.addr, timeout=60) as client:
        assert client.index_images([("p.jpg", photo)], collection=collection).indexed == 1


def count(stack: Stack, collection: str = "images") -> int:
    with Client(stack.gateway.addr, timeout=60) as client:
        return client.count(collection=collection).count


def test_a_cross_site_page_cannot_change_anything(web: Web, stack: Stack) -> None:
    index_one(stack)
    drop = f"{web.url}/img/drop?table_name=images"
    answer = requests.post(drop, headers=EVIL, timeout=30)
    assert answer.status_code == 403, answer.text
    assert "cross-site" in answer.json()["detail"]
    # The browser's other marks, each alone, are refused too.
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},  # a sandboxed frame, a file:// page
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # another port of the same host
    ):
        assert requests.post(drop, headers=headers, timeout=30).status_code == 403, headers
    for method, path in (
        ("DELETE", "/v1/collections/images"),
        ("POST", "/v1/jobs/x/cancel"),
        ("POST", "/v1/collections/images/delete"),
    ):
        answer = requests.request(method, f"{web.url}{path}", headers=EVIL, timeout=30)
        assert answer.status_code == 403, (method, path)
    assert count(stack) == 1  # nothing changed
    # Reading cross-site is not a state change (CORS keeps the answer from the page).
    assert requests.get(f"{web.url}/v1/collections", headers=EVIL, timeout=30).status_code == 200
    # The page itself (same origin) and scripts (no Origin) still change things.
    own = {"Origin": web.url, "Sec-Fetch-Site": "same-origin"}
    assert requests.post(f"{web.url}/img/count", headers=own, timeout=30).json() == 1
    answer = requests.post(drop, timeout=30)
    assert answer.status_code == 200, answer.text
    with Client(stack.gateway.addr, timeout=60) as client:
        assert "images" not in [c.name for c in client.list_collections()]


def test_an_allowed_origin_may_change_state(stack: Stack) -> None:
    web = start_web(stack.gateway, allowed_origins=("https://app.example",))
    try:
        index_one(stack)
        answer = requests.post(
            f"{web.url}/img/count", headers={"Origin": "https://app.example"}, timeout=30
        )
        assert answer.status_code == 200 and answer.json() == 1
        answer = requests.post(
            f"{web.url}/img/count", headers={"Origin": "https://other.example"}, timeout=30
        )
        assert answer.status_code == 403
    finally:
        web.stop()


def test_a_foreign_host_is_refused(web: Web, stack: Stack) -> None:
    """DNS rebinding: evil.example now resolves to 127.0.0.1; its page's
    requests carry Host: evil.example."""
    port = urlsplit(web.url).port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.2", "localhost.evil.example"):
        answer = requests.get(f"{web.url}/v1/collections", headers={"Host": host}, timeout=30)
        assert answer.status_code == 400, host
        assert "WEB_ALLOWED_HOSTS" in answer.json()["detail"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST"):
        answer = requests.get(f"{web.url}/v1/collections", headers={"Host": host}, timeout=30)
        assert answer.status_code == 200, host
    # Probes dial the pod's address: health answers whatever the Host.
    assert requests.get(f"{web.url}/healthz", headers={"Host": "10.1.2.3"}, timeout=30).ok


def _open_upload(web: Web, path: str, declared: int, headers: str = "") -> socket.socket:
    """An upload whose headers and first bytes are sent, the rest held back."""
    parts = urlsplit(web.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.sendall(
        (
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\n"
            f"Content-Length: {declared}\r\n{headers}\r\n"
            '--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        ).encode()
    )
    return sock


def _status(sock: socket.socket) -> int:
    reply = sock.recv(4096).decode("latin-1")
    return int(reply.split(" ", 2)[1])


def test_uploads_are_refused_before_their_body_is_read(
    guarded_web: tuple[Web, dict[str, str]],
) -> None:
    """Tokens on: an upload without a token that allows it is answered at
    once, while 40 MB of its declared body have not been sent."""
    web, tokens = guarded_web
    cases = [
        ("/v1/collections/images/images", "", 401),
        ("/img/upload", "Authorization: Bearer wrong-token-0123456789\r\n", 401),
        ("/v1/collections/images/images", f"Authorization: Bearer {tokens['read']}\r\n", 403),
        ("/v1/collections/images/search", "", 401),
    ]
    for path, auth, status in cases:
        # The body is never sent: an answer at all means it was not waited for.
        with _open_upload(web, path, 40_000_000, auth) as sock:
            assert _status(sock) == status, (path, auth)
    # A token that may upload gets its upload read and indexed.
    photo = (CLOTHING / clothing_images()[0][0]).read_bytes()
    answer = requests.post(
        f"{web.url}/v1/collections/images/images",
        files=[("files", ("p.jpg", photo, "image/jpeg"))],
        headers={"Authorization": f"Bearer {tokens['write']}"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text


@pytest.mark.slow
def test_concurrent_uploads_are_capped(stack: Stack) -> None:
    web = start_web(stack.gateway, max_uploads=1)
    try:
        photo = (CLOTHING / clothing_images()[0][0]).read_bytes()

        def upload_until(status: int) -> requests.Response:
            """Uploads the photo until the answer has ``status`` (the event)."""
            got: list[requests.Response] = []

            def attempt() -> bool:
                got.append(
                    requests.post(
                        f"{web.url}/img/upload", files={"image": ("p.jpg", photo)}, timeout=60
                    )
                )
                return got[-1].status_code == status

            wait_until(attempt)
            return got[-1]

        with _open_upload(web, "/img/upload", 1_000_000) as held:
            # Once the first upload is being received, the next is refused.
            assert "WEB_MAX_UPLOADS" in upload_until(429).json()["detail"]
            held.close()
        # Once the held upload is gone, its place is free again.
        upload_until(200)
    finally:
        web.stop()


def _open_body(
    web: Web, path: str, declared: int, head: str = "", content_type: str = ""
) -> socket.socket:
    """A POST whose headers declare ``declared`` bytes of body, of which only
    the first few are sent."""
    parts = urlsplit(web.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    kind = content_type or "application/json"
    sock.sendall(
        (
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {declared}\r\n{head}\r\n" + '{"folder": "'
        ).encode()
    )
    return sock


def test_every_body_is_refused_before_it_is_read(guarded_web: tuple[Web, dict[str, str]]) -> None:
    """JSON and form bodies were parsed (up to 64 MiB each, any number at
    once) before the caller was checked: 16 unauthenticated 60 MiB JSON posts
    at once are each answered 401 while their bodies have not been sent; a
    read token's JSON to a write route gets 403 the same way; two
    Content-Type headers (the guard read the last, routes the first) get 400."""
    web, tokens = guarded_web
    socks = [_open_body(web, "/v1/jobs", 60 * 1024 * 1024) for _ in range(16)]
    try:
        assert [_status(s) for s in socks] == [401] * 16
    finally:
        for s in socks:
            s.close()
    read = f"Authorization: Bearer {tokens['read']}\r\n"
    for path, kind in (("/v1/jobs", ""), ("/img/load", "application/x-www-form-urlencoded")):
        with _open_body(web, path, 60 * 1024 * 1024, read, kind) as sock:
            assert _status(sock) == 403, path
    twice = f"Authorization: Bearer {tokens['write']}\r\nContent-Type: multipart/form-data\r\n"
    with _open_body(web, "/img/upload", 10_000, twice) as sock:
        assert _status(sock) == 400
    # A caller that may write has its JSON read and acted on.
    answer = requests.post(
        f"{web.url}/v1/jobs",
        json={"folder": "/no/such/folder"},
        headers={"Authorization": f"Bearer {tokens['write']}"},
        timeout=60,
    )
    assert answer.status_code in (400, 403, 404), answer.text  # judged by the gateway


def _push_body(url: str, declared: int) -> int:
    """A POST with no token that sends all of its ``declared`` bytes (as far
    as the server lets it), then reads the status."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(
            (
                f"POST /v1/jobs HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
            ).encode()
            + b'{"folder": "'
        )
        chunk = b"x" * (1 << 20)
        try:
            for _ in range(declared >> 20):
                sock.sendall(chunk)
        except OSError:
            pass  # refused and closed mid-body: what we want
        return _status(sock)


@pytest.mark.processes
def test_bodies_pushed_at_once_leave_the_web_process_small(
    embedder: Server, tmp_path: Path
) -> None:
    """The web face as its own process (python -m web_service) before a
    gateway with tokens: 16 unauthenticated clients push 60 MiB JSON bodies
    at once. Each gets 401, and the process's peak RSS stays under 300 MiB."""
    path = tmp_path / "tokens"
    path.write_text(f"write:{secrets.token_hex(16)}\n")
    index = start_index(tmp_path / "index")
    gateway = start_gateway(tmp_path, embedder.addr, index.addr, tokens_file=str(path))
    port = free_port()
    log = tmp_path / "web.log"
    env = {**os.environ, "WEB_PORT": str(port), "WEB_GATEWAY_ADDR": gateway.addr}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "web_service"], env=env, cwd=ROOT, stdout=out, stderr=out
        )
    try:
        assert wait_port("127.0.0.1", port, 60), log.read_text()
        url = f"http://127.0.0.1:{port}"
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda _: _push_body(url, 60 * 1024 * 1024), range(16)))
        assert codes == [401] * 16
        status = Path(f"/proc/{proc.pid}/status").read_text()
        peak_kib = int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1])
        print(f"web face peak RSS {peak_kib / 1024:.0f} MiB")
        assert peak_kib < 300 * 1024
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        gateway.running.stop(1)
        index.running.stop(1)
