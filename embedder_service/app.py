"""Builds the embedder's objects and starts its server (used by __main__ and tests)."""

from __future__ import annotations

import logging

from embedder_service.batcher import Batcher
from embedder_service.budget import PixelBudget
from embedder_service.decode import Decoder
from embedder_service.device_decode import DeviceDecoder
from embedder_service.model import ComposingRunner, ModelRunner, make_runner
from embedder_service.servicer import EmbedderServicer
from embedder_service.settings import EmbedderSettings
from imagesearch import logs
from imagesearch.readiness import Readiness
from imagesearch.server import RunningServer, start_server
from imagesearch.v1 import embedder_pb2, embedder_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = embedder_pb2.DESCRIPTOR.services_by_name["EmbedderService"].full_name


def make_decoders(
    settings: EmbedderSettings, runner: ModelRunner
) -> tuple[Decoder, DeviceDecoder | None]:
    """Pillow's decoder, and with EMBEDDER_GPU_DECODE the device decoder that
    takes the JPEGs it can in batches."""
    info = runner.info
    budget = PixelBudget(settings.decode_pixel_budget)
    decoder = Decoder(
        settings.max_pixels,
        info.resize,
        info.image_size,
        budget,
        whole=info.whole,
        formats=settings.image_formats,
    )
    if not settings.gpu_decode:
        return decoder, None
    if info.whole:  # squashed whole, not cropped: Pillow's alone
        logs.event(log, "decode.device_unused", logging.WARNING, model=info.model)
        return decoder, None
    if runner.device.type != "cuda":
        logs.event(
            log,
            "decode.device_on_cpu",
            logging.WARNING,
            note="EMBEDDER_GPU_DECODE=true with the model on the CPU: JPEGs are decoded in "
            "batches with libjpeg-turbo, slower than PIL's reduced-size decode (for tests "
            "and comparison)",
        )
    else:
        logs.event(log, "decode.gpu", device=str(runner.device))
    return decoder, DeviceDecoder(runner.device, decoder, settings.decode_pixel_budget)


def start(settings: EmbedderSettings) -> RunningServer:
    """Loads the model, starts serving NOT_SERVING, warms up, then SERVING."""
    runner = make_runner(settings)
    decoder, device = make_decoders(settings, runner)
    decode_workers = settings.decode_threads(model_on_cpu=runner.device.type == "cpu")
    batcher = Batcher(
        runner.embed_with_text,
        decoder,
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_ms / 1000.0,
        queue_size=settings.queue_size,
        decode_workers=decode_workers,
        sizes=runner.padded_sizes,
        device=device,
        busy_wait_s=settings.busy_wait_ms / 1000.0,
    )
    ready = Readiness("the embedder is still warming up its model")
    text_problem = runner.text_problem if isinstance(runner, ComposingRunner) else None
    servicer = EmbedderServicer(batcher, runner.info, settings, ready, text_problem, runner.text)
    running = start_server(
        [lambda s: embedder_pb2_grpc.add_EmbedderServiceServicer_to_server(servicer, s)],
        [SERVICE_NAME],
        **settings.server_options(),
        serving=False,
        reuse_port=settings.processes > 1,
    )
    running.on_stop.append(batcher.close)
    if settings.warmup:
        if runner.compiled:
            logs.event(
                log,
                "model.compiling",
                batch_sizes=",".join(map(str, runner.buckets())),
                note="torch.compile warm-up before SERVING: up to a minute per size on a "
                "small CPU the first time, seconds once Inductor's cache is warm",
            )
        seconds = runner.warm_up()
        logs.event(log, "model.warmup", ms=round(seconds * 1000), compiled=runner.compiled)
    ready.set()
    running.set_serving(True)
    logs.event(
        log,
        "serving",
        service=SERVICE_NAME,
        port=running.port,
        model_id=runner.info.model_id,
        device=runner.info.device,
        dtype=runner.info.dtype,
        decode_workers=decode_workers,
    )
    return running
