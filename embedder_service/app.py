"""Builds the embedder's objects and starts its server (used by __main__ and tests)."""

from __future__ import annotations

import logging

from embedder_service.batcher import Batcher
from embedder_service.budget import PixelBudget
from embedder_service.decode import Decoder
from embedder_service.model import ComposingRunner, ModelRunner, make_runner
from embedder_service.servicer import EmbedderServicer
from embedder_service.settings import EmbedderSettings
from imagesearch import logs
from imagesearch.readiness import Readiness
from imagesearch.server import RunningServer, start_server
from imagesearch.v1 import embedder_pb2, embedder_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = embedder_pb2.DESCRIPTOR.services_by_name["EmbedderService"].full_name


def make_decoder(settings: EmbedderSettings, runner: ModelRunner) -> Decoder:
    info = runner.info
    sizes = (settings.max_pixels, info.resize, info.image_size)
    budget = PixelBudget(settings.decode_pixel_budget)
    formats = settings.image_formats
    if info.whole:
        return Decoder(*sizes, budget, whole=True, formats=formats)  # nvJPEG's path crops: PIL here
    if not settings.gpu_decode:
        return Decoder(*sizes, budget, formats=formats)
    if runner.device.type != "cuda":
        logs.event(
            log,
            "decode.gpu_unavailable",
            logging.WARNING,
            device=str(runner.device),
            note="EMBEDDER_GPU_DECODE=true needs the model on a CUDA device; decoding with PIL",
        )
        return Decoder(*sizes, budget, formats=formats)
    from embedder_service.gpu_decode import TorchJpegDecoder

    logs.event(log, "decode.gpu", device=str(runner.device))
    return TorchJpegDecoder(runner.device, *sizes, budget, formats=formats)


def start(settings: EmbedderSettings) -> RunningServer:
    """Loads the model, starts serving NOT_SERVING, warms up, then SERVING."""
    runner = make_runner(settings)
    decoder = make_decoder(settings, runner)
    decode_workers = settings.decode_threads(model_on_cpu=runner.device.type == "cpu")
    batcher = Batcher(
        runner.embed_with_text,
        decoder,
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_ms / 1000.0,
        queue_size=settings.queue_size,
        decode_workers=decode_workers,
        sizes=runner.padded_sizes,
    )
    ready = Readiness("the embedder is still warming up its model")
    text_problem = runner.text_problem if isinstance(runner, ComposingRunner) else None
    servicer = EmbedderServicer(batcher, runner.info, settings, ready, text_problem, runner.text)
    running = start_server(
        [lambda s: embedder_pb2_grpc.add_EmbedderServiceServicer_to_server(servicer, s)],
        [SERVICE_NAME],
        **settings.server_options(),
        serving=False,
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
