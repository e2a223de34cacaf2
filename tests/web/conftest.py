"""The HTTP face on a real uvicorn server (ephemeral port, in a thread) in
front of a real gateway, index and embedder."""

from __future__ import annotations

import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from tests.conftest import (
    CLOTHING,
    JOB_STORES,
    Server,
    Stack,
    clothing_images,
    job_store_settings,
    start_gateway,
    start_index,
)
from web_service.app import create_app, gateway_client
from web_service.settings import WebSettings


@dataclass
class Web:
    url: str
    server: uvicorn.Server
    thread: threading.Thread
    app: FastAPI

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_web(gateway: Server, **overrides: object) -> Web:
    values: dict[str, object] = {"timeout_s": 120.0, **overrides}
    settings = WebSettings(host="127.0.0.1", port=0, gateway_addr=gateway.addr, **values)  # type: ignore[arg-type]
    app = create_app(settings, gateway_client(settings))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn stopped while starting"
        time.sleep(0.05)
    return Web(f"http://127.0.0.1:{port}", server, thread, app)


@pytest.fixture
def stack(stack_on_each_job_store: Stack) -> Stack:
    """The web face's tests run before a gateway with jobs in its files and
    one with jobs on NATS (what compose and k8s ship)."""
    return stack_on_each_job_store


@pytest.fixture
def web(stack: Stack) -> Iterator[Web]:
    running = start_web(stack.gateway)
    yield running
    running.stop()


@pytest.fixture(params=JOB_STORES)
def guarded_web(
    request: pytest.FixtureRequest, embedder: Server, tmp_path: Path
) -> Iterator[tuple[Web, dict[str, str]]]:
    """The web face before a gateway with tokens: {role: token} for read,
    write and admin; jobs in the gateway's files, and on NATS."""
    tokens = {role: f"{role}-{secrets.token_hex(16)}" for role in ("read", "write", "admin")}
    path = tmp_path / "tokens"
    path.write_text("".join(f"{r}:{t}\n" for r, t in tokens.items()))
    index = start_index(tmp_path / "index")
    gateway = start_gateway(
        tmp_path,
        embedder.addr,
        index.addr,
        tokens_file=str(path),
        **job_store_settings(request, request.param),
    )
    web = start_web(gateway)
    yield web, tokens
    web.stop()
    gateway.running.stop(1)
    index.running.stop(1)


def photo_folder(tmp: Path, count: int, skip: int = 0) -> tuple[Path, list[Path]]:
    """``count`` clothing photos (one or two of each class) copied to a folder
    under the gateway's allowed roots."""
    folder = tmp / "photos"
    folder.mkdir(exist_ok=True)
    by_class: dict[str, list[str]] = {}
    for name, label in clothing_images():
        by_class.setdefault(label, []).append(name)
    names = [n for group in zip(*by_class.values(), strict=False) for n in group][skip:]
    copied = []
    for name in names[:count]:
        target = folder / name.replace("/", "_")
        shutil.copy(CLOTHING / name, target)
        copied.append(target.resolve())
    return folder.resolve(), copied


@pytest.fixture(scope="session")
def words_web(words_stack: Stack) -> Iterator[Web]:
    running = start_web(words_stack.gateway)
    yield running
    running.stop()
