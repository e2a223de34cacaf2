"""The embedder over gRPC with the real pretrained MobileNetV2 weights."""

from __future__ import annotations

import io
import json
import subprocess

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from imagesearch.v1 import embedder_pb2, embedder_pb2_grpc
from tests.conftest import (
    CLOTHING,
    ODD,
    VENV_BIN,
    Server,
    channel,
    clothing_images,
    odd_manifest,
    start_embedder,
)


def stub(server: Server) -> embedder_pb2_grpc.EmbedderServiceStub:
    return embedder_pb2_grpc.EmbedderServiceStub(channel(server.port))


def embed(server: Server, images: list[tuple[str, bytes]]) -> list[embedder_pb2.Embedding]:
    request = embedder_pb2.EmbedderServiceEmbedRequest(
        images=[embedder_pb2.Image(name=n, data=d) for n, d in images]
    )
    return list(stub(server).Embed(request, timeout=300).embeddings)


def vec(e: embedder_pb2.Embedding) -> np.ndarray:
    assert not e.error, e.error
    return np.frombuffer(e.vector, dtype="<f4")


@pytest.fixture(scope="module")
def clothing_vectors(embedder: Server) -> tuple[np.ndarray, list[str]]:
    rows = clothing_images()
    out = embed(embedder, [(p, (CLOTHING / p).read_bytes()) for p, _ in rows])
    return np.stack([vec(e) for e in out]), [label for _, label in rows]


def test_model_info_reports_real_weights(embedder: Server) -> None:
    info = stub(embedder).GetModelInfo(
        embedder_pb2.EmbedderServiceGetModelInfoRequest(), timeout=10
    )
    assert info.model == "mobilenet_v2"
    assert info.dim == 1280
    assert info.pretrained is True
    assert info.weights == "bundled"
    assert len(info.weights_digest) == 64
    # EMBEDDER_DEVICE=auto: the GPU where torch sees one (the model id does not change).
    assert info.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert info.model_id.startswith("mobilenet_v2/avg/")


def test_clothing_vectors_are_unit_length_1280d(
    clothing_vectors: tuple[np.ndarray, list[str]],
) -> None:
    vectors, _ = clothing_vectors
    assert vectors.shape == (64, 1280)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_real_weights_group_classes(clothing_vectors: tuple[np.ndarray, list[str]]) -> None:
    """Nearest neighbours share the class far more often than chance (1/8)."""
    vectors, labels = clothing_vectors
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1)
    top = np.argsort(-sims, axis=1)[:, :5]
    precision = np.mean([[labels[j] == labels[i] for j in top[i]] for i in range(len(labels))])
    assert precision > 0.4, precision


def test_reencoded_copy_is_nearer_than_other_classes(
    embedder: Server, clothing_vectors: tuple[np.ndarray, list[str]]
) -> None:
    vectors, labels = clothing_vectors
    rows = clothing_images()
    for idx in (0, 17, 40):
        img = Image.open(CLOTHING / rows[idx][0]).convert("RGB")
        img = img.resize((img.width * 2 // 3, img.height * 2 // 3))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        copy = vec(embed(embedder, [("copy.png", buf.getvalue())])[0])
        sim_copy = float(copy @ vectors[idx])
        other = [float(vectors[idx] @ vectors[j]) for j in range(64) if labels[j] != labels[idx]]
        assert sim_copy > max(other), (rows[idx][0], sim_copy, max(other))
        assert sim_copy > 0.9


def test_same_image_twice_same_vector(embedder: Server) -> None:
    data = (CLOTHING / clothing_images()[3][0]).read_bytes()
    a, b = embed(embedder, [("a", data), ("b", data)])
    assert np.allclose(vec(a), vec(b), atol=1e-5)
    (c,) = embed(embedder, [("c", data)])
    assert np.allclose(vec(a), vec(c), atol=1e-2)  # a different batch may round differently


def test_odd_images_one_batch_matches_manifest(embedder: Server) -> None:
    manifest = odd_manifest()
    out = embed(embedder, [(name, (ODD / name).read_bytes()) for name, _ in manifest])
    assert len(out) == len(manifest) == 55
    for (name, expect), e in zip(manifest, out, strict=True):
        assert e.name == name
        if expect == "ok":
            assert not e.error, f"{name}: {e.error}"
            assert len(e.vector) == 1280 * 4 and e.width > 0 and e.height > 0
        else:
            assert e.error and not e.vector, name
            assert name in e.error  # the message names the file
            assert e.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]  # never retried
    # The service keeps serving after all that.
    (good,) = embed(embedder, [("hopper", (ODD / "hopper.jpg").read_bytes())])
    assert not good.error


def test_pixel_limit_refused_before_decoding(embedder: Server) -> None:
    (e,) = embed(embedder, [("bomb", (ODD / "bomb-30000x30000.png").read_bytes())])
    assert e.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]  # permanent: too large
    assert "900000000" in e.error and "EMBEDDER_MAX_PIXELS" in e.error


def test_exif_orientation_is_applied(embedder: Server) -> None:
    img = Image.new("RGB", (300, 100), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    (e,) = embed(embedder, [("rotated.jpg", buf.getvalue())])
    assert (e.width, e.height) == (100, 300)


def test_too_many_images_is_invalid_argument(embedder: Server) -> None:
    images = [embedder_pb2.Image(name=str(i), data=b"x") for i in range(1025)]
    with pytest.raises(grpc.RpcError) as err:
        stub(embedder).Embed(embedder_pb2.EmbedderServiceEmbedRequest(images=images), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1025" in str(err.value.details())


def test_full_queue_answers_resource_exhausted() -> None:
    server = start_embedder(queue_size=4, max_batch=2)
    try:
        data = (ODD / "hopper.jpg").read_bytes()
        with pytest.raises(grpc.RpcError) as err:
            embed(server, [(str(i), data) for i in range(5)])
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "EMBEDDER_QUEUE_SIZE" in str(err.value.details())
        assert len(embed(server, [(str(i), data) for i in range(4)])) == 4
    finally:
        server.running.stop(1)


def test_random_resnet50_is_2048d_and_says_so() -> None:
    server = start_embedder(model="resnet50", weights="random")
    try:
        info = stub(server).GetModelInfo(
            embedder_pb2.EmbedderServiceGetModelInfoRequest(), timeout=10
        )
        assert info.dim == 2048 and info.pretrained is False and info.weights == "random"
        assert "random" in info.note
        (e,) = embed(server, [("hopper", (ODD / "hopper.jpg").read_bytes())])
        assert len(e.vector) == 2048 * 4
    finally:
        server.running.stop(1)


def test_grpcurl_lists_services_and_health(embedder: Server) -> None:
    grpcurl = str(VENV_BIN / "grpcurl")
    listed = subprocess.run(
        [grpcurl, "-plaintext", embedder.addr, "list"], capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert "imagesearch.v1.EmbedderService" in listed.stdout.split()
    assert "grpc.health.v1.Health" in listed.stdout.split()
    health = subprocess.run(
        [
            grpcurl,
            "-plaintext",
            "-d",
            '{"service": "imagesearch.v1.EmbedderService"}',
            embedder.addr,
            "grpc.health.v1.Health/Check",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["status"] == "SERVING"


def test_decoded_pixels_in_flight_stay_within_the_budget() -> None:
    """Large transparent PNGs (RGBA, the costliest conversion) in one call, four
    decode threads, a budget that fits two at a time: each image succeeds or
    is refused as overload, and the peak (a metric) never passes the budget."""
    from prometheus_client import REGISTRY

    side = 3000  # 9 Mpx each
    img = Image.new("RGBA", (side, side), (200, 40, 40, 90))
    img.paste((20, 20, 220, 255), (0, 0, side // 2, side // 2))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    budget = 2 * side * side + side  # room for two, not three
    server = start_embedder(
        decode_workers=4, max_pixels=side * side, decode_pixel_budget=budget, max_batch=4
    )
    try:
        out = embed(server, [(f"big-{i}.png", buf.getvalue()) for i in range(8)])
        codes = {e.error_code for e in out}
        assert codes <= {0, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}, [e.error for e in out]
        assert sum(not e.error for e in out) >= 1
        peak = REGISTRY.get_sample_value("imagesearch_embedder_decode_pixels_peak")
        assert peak is not None and side * side <= peak <= budget
        assert REGISTRY.get_sample_value("imagesearch_embedder_decode_pixels_in_flight") == 0
    finally:
        server.running.stop(1)


def turned(data: bytes, k: int) -> bytes:
    """The image turned by 90*k degrees counter-clockwise, as a PNG (lossless)."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    for _ in range(k):
        img = img.transpose(Image.Transpose.ROTATE_90)
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def test_rotated_views_match_the_turned_images(embedder: Server) -> None:
    """With ``rotations`` each image comes back with the vectors of its 90, 180
    and 270 degree turns, from one batch: the same vectors (up to a pixel of
    cropping) as the turned images embedded on their own."""
    names = [p for p, _ in clothing_images()[:3]]
    originals = [turned((CLOTHING / n).read_bytes(), 0) for n in names]
    request = embedder_pb2.EmbedderServiceEmbedRequest(
        images=[embedder_pb2.Image(name=n, data=d) for n, d in zip(names, originals, strict=True)],
        rotations=True,
    )
    with_views = list(stub(embedder).Embed(request, timeout=300).embeddings)
    plain = embed(embedder, list(zip(names, originals, strict=True)))
    for name, data, e, p in zip(names, originals, with_views, plain, strict=True):
        assert len(e.rotated_vectors) == 3, name
        assert float(vec(e) @ vec(p)) > 0.9999  # the image as it is: the same vector
        for k, raw in enumerate(e.rotated_vectors, start=1):
            view = np.frombuffer(raw, dtype="<f4")
            (alone,) = embed(embedder, [(f"{name} turned {k}", turned(data, k))])
            assert float(view @ vec(alone)) > 0.98, (name, k)
            assert float(view @ vec(e)) < 0.98, "a turned view must differ from the image"
    # Without asking, no views.
    assert all(len(p.rotated_vectors) == 0 for p in plain)


def batch_sizes() -> dict[str, float]:
    from prometheus_client import REGISTRY

    return {
        s.labels.get("le", ""): s.value
        for m in REGISTRY.collect()
        if m.name == "imagesearch_embedder_batch_size"
        for s in m.samples
        if s.name.endswith("_bucket")
    }


def batches_over(size: int) -> float:
    buckets = batch_sizes()
    return buckets["+Inf"] - buckets[f"{float(size)}"]


def batches_total() -> float:
    return batch_sizes()["+Inf"]


def test_rotated_views_share_batches_without_passing_max_batch() -> None:
    """An image with rotations takes four model rows: batches stay within
    max_batch (4 here) and every caller gets its own vectors back, whether
    calls with and without rotations come at once."""
    from concurrent.futures import ThreadPoolExecutor

    server = start_embedder(max_batch=4, max_wait_ms=50.0)
    before_over, before_total = batches_over(4), batches_total()
    try:
        names = [p for p, _ in clothing_images()[:5]]
        images = [(n, (CLOTHING / n).read_bytes()) for n in names]
        alone = [vec(e) for e in embed(server, images)]

        def call(rotations: bool, part: list[tuple[str, bytes]]) -> list[embedder_pb2.Embedding]:
            request = embedder_pb2.EmbedderServiceEmbedRequest(
                images=[embedder_pb2.Image(name=n, data=d) for n, d in part], rotations=rotations
            )
            return list(stub(server).Embed(request, timeout=300).embeddings)

        with ThreadPoolExecutor(4) as pool:
            turned_calls = [
                pool.submit(call, True, images[:2]),
                pool.submit(call, True, images[2:3]),
            ]
            plain_calls = [pool.submit(call, False, images[3:])]
            got = [e for f in turned_calls + plain_calls for e in f.result()]
        for e, expected in zip(got, alone, strict=True):
            assert float(vec(e) @ expected) > 0.9999, e.name
        assert [len(e.rotated_vectors) for e in got] == [3, 3, 3, 0, 0]
        # (The histogram is process-wide; this test's batches are the ones since `before`.)
        assert batches_over(4) == before_over, "a model batch passed max_batch"
        assert batches_total() - before_total >= 4  # 3 rotated images + 3 plain: 4+ batches
    finally:
        server.running.stop(1)
