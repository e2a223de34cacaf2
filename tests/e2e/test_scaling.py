"""Independent scaling on one machine: two embedder processes behind one
gateway target with round_robin; metrics endpoints scraped as Prometheus text."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from imagesearch.server import start_metrics
from imagesearch.v1 import gateway_pb2, gateway_pb2_grpc
from tests.conftest import (
    CLOTHING,
    channel,
    free_port,
    get_job,
    spawn_embedder,
    start_gateway,
    start_index,
    start_job,
    wait_job,
    wait_until,
)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, keyed by (name, labels); parsing fails on invalid text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def embed_calls(port: int) -> float:
    return sum(
        v
        for (name, labels), v in scrape(port).items()
        if name == "imagesearch_rpc_handled_total"
        and ("method", "/imagesearch.v1.EmbedderService/Embed") in labels
    )


@pytest.mark.processes
def test_two_replicas_share_the_load_and_one_can_die(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(4)]
    replicas = [
        spawn_embedder(ports[0], tmp_path / "e1.log", EMBEDDER_METRICS_PORT=str(ports[1])),
        spawn_embedder(ports[2], tmp_path / "e2.log", EMBEDDER_METRICS_PORT=str(ports[3])),
    ]
    index = start_index(tmp_path / "index")
    target = f"ipv4:127.0.0.1:{ports[0]},127.0.0.1:{ports[2]}"
    gateway = start_gateway(tmp_path, target, index.addr, embed_batch=4, job_concurrency=2)
    try:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel(gateway.port))
        job = start_job(stub, "scale", CLOTHING)
        wait_until(lambda: get_job(stub, job.job_id).done >= 16)
        assert embed_calls(ports[1]) > 0 and embed_calls(ports[3]) > 0  # both replicas were used
        replicas[0].send_signal(signal.SIGKILL)  # one replica dies mid-ingest
        replicas[0].wait()
        final = wait_job(stub, job.job_id, timeout=180)
        assert final.state == gateway_pb2.JOB_STATE_SUCCEEDED, final.message
        assert (final.indexed, final.failed) == (64, 0)
        assert stub.Count(gateway_pb2.CountRequest(collection="scale"), timeout=30).count == 64
        samples = scrape(ports[3])
        assert any(
            name == "imagesearch_embedder_batch_size_count" and v > 0
            for (name, _), v in samples.items()
        )
        assert any(name == "imagesearch_embedder_queue_depth" for (name, _) in samples)
    finally:
        for p in replicas:
            p.kill()
        gateway.running.stop(1)
        index.running.stop(1)


def test_in_process_metrics_endpoint_is_valid_prometheus_text(stack) -> None:
    """Gateway, index and embedder metrics (one registry in this process)."""
    port = free_port()
    start_metrics(port, host="127.0.0.1")
    stub = gateway_pb2_grpc.GatewayServiceStub(channel(stack.gateway.port))
    job = start_job(stub, "m", CLOTHING / "Hat", recursive=False)
    wait_until(lambda: get_job(stub, job.job_id).state == gateway_pb2.JOB_STATE_SUCCEEDED)
    # The job's last counters are updated a moment after its state.
    samples = wait_until(
        lambda: (
            (got := scrape(port)) and "imagesearch_job_files_total" in {n for n, _ in got} and got
        )
    )
    names = {name for name, _ in samples}
    for expected in (
        "imagesearch_rpc_handled_total",
        "imagesearch_rpc_seconds_bucket",
        "imagesearch_job_files_total",
        "imagesearch_jobs_running",
        "imagesearch_embedder_batch_size_bucket",
    ):
        assert expected in names, expected
    ok_index = [
        v
        for (n, labels), v in samples.items()
        if n == "imagesearch_rpc_handled_total"
        and ("method", "/imagesearch.v1.IndexService/Upsert") in labels
        and ("code", "OK") in labels
    ]
    assert ok_index and ok_index[0] >= 1
    indexed = [
        v
        for (n, labels), v in samples.items()
        if n == "imagesearch_job_files_total" and ("outcome", "indexed") in labels
    ]
    assert indexed and indexed[0] >= 8


def test_request_id_travels_downstream(stack, caplog) -> None:
    import logging

    stub = gateway_pb2_grpc.GatewayServiceStub(channel(stack.gateway.port))
    caplog.set_level(logging.INFO, logger="imagesearch.server")
    _, call = stub.ListCollections.with_call(
        gateway_pb2.ListCollectionsRequest(),
        metadata=(("x-request-id", "trace-me-42"),),
        timeout=30,
    )
    assert ("x-request-id", "trace-me-42") in call.trailing_metadata()
    methods = {
        r.fields["method"]
        for r in caplog.records
        if getattr(r, "request_id", None) == "trace-me-42"
    }
    assert methods == {
        "/imagesearch.v1.GatewayService/ListCollections",
        "/imagesearch.v1.IndexService/ListCollections",
        "/imagesearch.v1.EmbedderService/GetModelInfo",  # does its model compose?
    }
