"""gRPC layer of the embedder: messages in and out, nothing else."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import CancelledError

import grpc

from embedder_service.batcher import Batcher
from embedder_service.model import ModelInfo
from embedder_service.settings import EmbedderSettings
from embedder_service.text import TextSide
from imagesearch import errors
from imagesearch.readiness import Readiness
from imagesearch.texts import text_problem
from imagesearch.v1 import embedder_pb2, embedder_pb2_grpc


class EmbedderServicer(embedder_pb2_grpc.EmbedderServiceServicer):
    def __init__(
        self,
        batcher: Batcher,
        info: ModelInfo,
        settings: EmbedderSettings,
        ready: Readiness | None = None,
        text_problem: Callable[[str], str] | None = None,
        text: TextSide | None = None,
    ) -> None:
        """``text_problem``: why a text cannot go with an image ('' when it
        can); only a composing model's embedder has one. ``text``: the model's
        text side (search by words), if it has one."""
        self.batcher = batcher
        self.text = text
        self.text_problem = text_problem
        self.info = info
        self.settings = settings
        # Set once the model is warm; Embed calls that come earlier wait for it.
        self.ready = ready or Readiness("the embedder is still warming up its model", ready=True)

    def Embed(
        self, request: embedder_pb2.EmbedderServiceEmbedRequest, context: grpc.ServicerContext
    ) -> embedder_pb2.EmbedderServiceEmbedResponse:
        count = len(request.images)
        limit = self.settings.max_images_per_request
        if count > limit:
            raise errors.invalid_argument(
                f"{count} images in one Embed call, limit {limit} "
                "(EMBEDDER_MAX_IMAGES_PER_REQUEST); split the request"
            )
        if any(image.text for image in request.images) and not self.info.composes:
            raise errors.failed_precondition(
                f"model {self.info.model} cannot compose a text with an image; send no text, "
                "or call an embedder that composes (EMBEDDER_MODEL=tirg_css)"
            )
        self.ready.wait(context)
        embeddings: list[embedder_pb2.Embedding | None] = [None] * count
        accepted: list[tuple[int, str, bytes]] = []
        for i, image in enumerate(request.images):
            name = image.name or f"image #{i}"
            data = image.data  # each read of a bytes field copies it: once
            problem = self.text_problem(image.text) if image.text and self.text_problem else ""
            if problem:
                embeddings[i] = embedder_pb2.Embedding(
                    name=image.name,
                    error=f"{name}: {problem}",
                    error_code=errors.status_code_number(grpc.StatusCode.INVALID_ARGUMENT),
                )
            elif len(data) > self.settings.max_image_bytes:
                embeddings[i] = embedder_pb2.Embedding(
                    name=image.name,
                    error=f"{name}: {len(data)} bytes, over the limit of "
                    f"{self.settings.max_image_bytes} (EMBEDDER_MAX_IMAGE_MB)",
                    error_code=errors.status_code_number(grpc.StatusCode.INVALID_ARGUMENT),
                )
            else:
                accepted.append((i, name, data))
        futures = self.batcher.submit(
            [(name, data) for _, name, data in accepted],
            request.thumbnail_px,
            request.rotations,
            [request.images[i].text for i, _, _ in accepted],
        )

        # A caller that cancels or runs out of time takes its queued images along.
        def drop_queued() -> None:
            self.batcher.cancel(futures)

        context.add_callback(drop_queued)
        for (i, _, _), fut in zip(accepted, futures, strict=True):
            try:
                result = fut.result()
            except CancelledError:
                return embedder_pb2.EmbedderServiceEmbedResponse()  # nobody is listening
            name = request.images[i].name
            if result.error is not None:
                embeddings[i] = embedder_pb2.Embedding(
                    name=name,
                    error=result.error.message,
                    error_code=errors.status_code_number(result.error.code),
                )
            else:
                assert result.vector is not None
                embeddings[i] = embedder_pb2.Embedding(
                    name=name,
                    vector=result.vector.astype("<f4").tobytes(),
                    width=result.width,
                    height=result.height,
                    thumbnail=result.thumbnail,
                    rotated_vectors=[v.astype("<f4").tobytes() for v in result.rotated],
                    text_vector=b""
                    if result.text is None or not request.text_vectors
                    else result.text.astype("<f4").tobytes(),
                )
        return embedder_pb2.EmbedderServiceEmbedResponse(
            embeddings=[e for e in embeddings if e is not None], model_id=self.info.model_id
        )

    def GetModelInfo(
        self,
        request: embedder_pb2.EmbedderServiceGetModelInfoRequest,
        context: grpc.ServicerContext,
    ) -> embedder_pb2.EmbedderServiceGetModelInfoResponse:
        i = self.info
        return embedder_pb2.EmbedderServiceGetModelInfoResponse(
            model=i.model,
            dim=i.dim,
            weights=i.weights,
            weights_digest=i.weights_digest,
            device=i.device,
            dtype=i.dtype,
            pretrained=i.pretrained,
            pooling=i.pooling,
            model_id=i.model_id,
            max_batch=self.settings.max_batch,
            max_pixels=self.settings.max_pixels,
            image_size=i.image_size,
            note=i.note,
            max_message_bytes=self.settings.max_message_mb * 1024 * 1024,
            max_image_bytes=self.settings.max_image_bytes,
            decode_pixel_budget=self.settings.decode_pixel_budget,
            composes=i.composes,
            text_dim=i.text_dim,
            text_model_id=i.text_model_id,
        )

    def EmbedText(
        self, request: embedder_pb2.EmbedderServiceEmbedTextRequest, context: grpc.ServicerContext
    ) -> embedder_pb2.EmbedderServiceEmbedTextResponse:
        if self.text is None:
            raise errors.failed_precondition(self._no_text())
        if not request.texts or len(request.texts) > self.settings.max_images_per_request:
            raise errors.invalid_argument(
                f"EmbedText takes 1 to {self.settings.max_images_per_request} texts, "
                f"got {len(request.texts)}"
            )
        for i, text in enumerate(request.texts):
            problem = text_problem(text)
            if problem:
                raise errors.invalid_argument(f"text #{i}: {problem}")
        vectors = self.text.text_vectors(list(request.texts))
        return embedder_pb2.EmbedderServiceEmbedTextResponse(
            vectors=[v.astype("<f4").tobytes() for v in vectors],
            text_model_id=self.info.text_model_id,
        )

    def _no_text(self) -> str:
        return (
            f"model {self.info.model} has no text side (search by words needs an ImageNet "
            "classifier: EMBEDDER_MODEL=efficientnet_lite0, resnet18, resnet50 or vgg16 with "
            "pretrained weights, or clip with a checkpoint folder; and EMBEDDER_TEXT=auto)"
        )
