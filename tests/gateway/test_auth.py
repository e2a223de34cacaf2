"""Bearer tokens with roles on a real gateway (GATEWAY_TOKENS_FILE), open
health, request ids that cannot forge log lines, reflection that can be closed."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from imagesearch.client import Client, ImageSearchError
from imagesearch.rpcs import Role
from imagesearch.server import REQUEST_ID_HEADER
from tests.conftest import (
    CLOTHING,
    ROOT,
    VENV_BIN,
    Server,
    start_gateway,
    start_index,
    wait_until,
)

TOKENS = {role: f"{role.name.lower()}-{secrets.token_hex(16)}" for role in Role}


@pytest.fixture
def guarded(embedder: Server, tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    tokens = tmp_path / "tokens"
    tokens.write_text(
        "# role:token\n" + "".join(f"{r.name.lower()}:{t}\n" for r, t in TOKENS.items())
    )
    index = start_index(tmp_path / "index")
    gateway = start_gateway(tmp_path, embedder.addr, index.addr, tokens_file=str(tokens))
    yield gateway, tokens
    gateway.running.stop(1)
    index.running.stop(1)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(ImageSearchError) as info:
        call()
    return info.value.code


def test_roles_are_enforced(guarded: tuple[Server, Path], caplog) -> None:
    gateway, _ = guarded
    caplog.set_level(logging.INFO)
    anonymous = Client(gateway.addr)
    wrong = Client(gateway.addr, token="read-" + "0" * 32)
    reader = Client(gateway.addr, token=TOKENS[Role.READ])
    writer = Client(gateway.addr, token=TOKENS[Role.WRITE])
    admin = Client(gateway.addr, token=TOKENS[Role.ADMIN])

    assert code_of(lambda: anonymous.count(collection="sec")) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: wrong.count(collection="sec")) == grpc.StatusCode.UNAUTHENTICATED
    assert (
        code_of(lambda: reader.index_images([], collection="sec"))
        == grpc.StatusCode.PERMISSION_DENIED
    )

    files = sorted(CLOTHING.rglob("*.jpg"))[:4]
    report = writer.index_images([(f.name, f.read_bytes()) for f in files], collection="sec")
    assert report.indexed == 4
    assert reader.count(collection="sec").count == 4
    assert (
        writer.search(collection="sec", image=files[0].read_bytes(), top_k=1)[0].path
        == files[0].name
    )

    for client in (reader, writer):
        assert code_of(lambda c=client: c.drop_collection("sec")) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert code_of(lambda c=client: c.delete(collection="sec", path_prefix="c")) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
    assert reader.count(collection="sec").count == 4  # nothing was dropped or deleted
    admin.drop_collection("sec")
    assert "sec" not in [c.name for c in admin.list_collections()]

    # Health answers without a token (probes, load balancers).
    with grpc.insecure_channel(gateway.addr) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # Tokens never reach the logs.
    for token in TOKENS.values():
        assert token not in caplog.text
    for client in (anonymous, wrong, reader, writer, admin):
        client.close()


def test_grpcurl_with_a_bearer_token(guarded: tuple[Server, Path]) -> None:
    gateway, _ = guarded

    def count(*headers: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / "grpcurl"), "-plaintext", *headers, "-d", '{"collection": "x"}',
             gateway.addr, "imagesearch.v1.GatewayService/Count"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    refused = count()
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
    allowed = count("-H", f"authorization: Bearer {TOKENS[Role.READ]}")
    # Authenticated: the answer is about the collection, not the token.
    assert "NotFound" in allowed.stderr, allowed.stderr
    # Reflection stays open, so grpcurl can list without a token.
    listed = subprocess.run(
        [str(VENV_BIN / "grpcurl"), "-plaintext", gateway.addr, "list"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "imagesearch.v1.GatewayService" in listed.stdout


@pytest.mark.processes
def test_the_cli_reads_imgsearch_token(guarded: tuple[Server, Path]) -> None:
    gateway, _ = guarded

    def cli(token: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "IMGSEARCH_GATEWAY": gateway.addr, "IMGSEARCH_TOKEN": token}
        return subprocess.run(
            [str(VENV_BIN / "imgsearch"), *args], capture_output=True, text=True, env=env,
            timeout=120,
        )  # fmt: skip

    listed = cli(TOKENS[Role.READ], "collections", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    refused = cli("", "collections")
    assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stderr
    assert "IMGSEARCH_TOKEN" in refused.stderr


def test_tokens_are_reloaded(guarded: tuple[Server, Path]) -> None:
    """SIGHUP runs the server's reload hooks (serve_until_signal); here they
    are run directly, as the signal handler does."""
    gateway, tokens = guarded
    fresh = "read:" + secrets.token_hex(16)
    old = Client(gateway.addr, token=TOKENS[Role.READ])
    new = Client(gateway.addr, token=fresh.split(":", 1)[1])
    assert old.list_collections() == []
    tokens.write_text(fresh + "\n")
    for hook in gateway.running.on_reload:
        hook()
    assert new.list_collections() == []
    assert code_of(old.list_collections) == grpc.StatusCode.UNAUTHENTICATED
    # A broken file keeps the tokens that work.
    tokens.write_text("superuser:" + secrets.token_hex(16) + "\n")
    for hook in gateway.running.on_reload:
        hook()
    assert new.list_collections() == []
    old.close()
    new.close()


@pytest.mark.processes
def test_a_bad_tokens_file_stops_the_gateway_without_showing_it(tmp_path: Path) -> None:
    secret = secrets.token_hex(16)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"read:{secrets.token_hex(16)}\nroot:{secret}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_TOKENS_FILE=str(tokens), GATEWAY_PORT="0", GATEWAY_HOST="127.0.0.1")
    done = subprocess.run(
        [sys.executable, "-m", "gateway"], capture_output=True, text=True, env=env, cwd=ROOT,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "line 2" in done.stderr and secret not in done.stderr


def test_request_ids_cannot_forge_log_lines(stack, caplog) -> None:
    caplog.set_level(logging.INFO)
    with grpc.insecure_channel(stack.gateway.addr) as channel:
        stub = channel.unary_unary(
            "/imagesearch.v1.GatewayService/ListCollections",
            request_serializer=lambda _: b"",
            response_deserializer=lambda b: b,
        )
        # (gRPC itself refuses newlines in header values; quotes, spaces and
        # length get through to the server.)
        for rid, kept in (("job-42.a_b:c", True), ('x" forged="1', False), ("a" * 200, False)):
            _, call = stub.with_call(b"", metadata=((REQUEST_ID_HEADER, rid),))
            echoed = dict(call.trailing_metadata())[REQUEST_ID_HEADER]
            assert (echoed == rid) is kept
    assert "forged" not in caplog.text


def test_reflection_can_be_closed(embedder: Server, tmp_path: Path) -> None:
    index = start_index(tmp_path / "index")
    gateway = start_gateway(tmp_path, embedder.addr, index.addr, reflection=False)
    try:
        with grpc.insecure_channel(gateway.addr) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            with pytest.raises(grpc.RpcError) as info:
                list(stub.ServerReflectionInfo(iter([request]), timeout=10))
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        gateway.running.stop(1)
        index.running.stop(1)


@pytest.mark.processes
def test_sighup_reloads_the_tokens_of_a_running_gateway(tmp_path: Path) -> None:
    """The real signal, on a gateway process (ListJobs needs no backend)."""
    import signal

    from tests.conftest import free_port, wait_port

    old, new = secrets.token_hex(16), secrets.token_hex(16)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"read:{old}\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_TOKENS_FILE=str(tokens),
        GATEWAY_PORT=str(port),
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_DATA_DIR=str(tmp_path / "gw"),
        GATEWAY_EMBEDDER_ADDR="127.0.0.1:1",
        GATEWAY_INDEX_ADDR="127.0.0.1:1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway"], env=env, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_port("127.0.0.1", port, 60)
        with Client(f"127.0.0.1:{port}", token=old) as before:
            assert before.list_jobs() == []
        tokens.write_text(f"read:{new}\n")
        proc.send_signal(signal.SIGHUP)

        def reloaded() -> bool:
            try:
                with Client(f"127.0.0.1:{port}", token=new, retries=1) as after:
                    return after.list_jobs() == []
            except ImageSearchError:
                return False

        wait_until(reloaded, 30)
        with Client(f"127.0.0.1:{port}", token=old) as stale:
            assert code_of(stale.list_jobs) == grpc.StatusCode.UNAUTHENTICATED
        assert proc.poll() is None  # SIGHUP reloads; it does not stop the gateway
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_sighup_while_a_service_starts_is_noted_not_fatal() -> None:
    """A service's port answers before serve_until_signal takes SIGHUP over;
    a SIGHUP in between (a tokens update racing a start) ended the process
    (SIGHUP's default). Stop 44's fresh-clone CI lost a gateway to it in
    test_sighup_reloads_the_tokens_of_a_running_gateway."""
    import signal

    from imagesearch.server import note_reloads

    before = signal.getsignal(signal.SIGHUP)
    try:
        noted = note_reloads()
        os.kill(os.getpid(), signal.SIGHUP)  # handled on the main thread, before the next line
        assert noted == [signal.SIGHUP]
    finally:
        signal.signal(signal.SIGHUP, before)
