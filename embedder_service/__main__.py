"""``python -m embedder_service``: serve imagesearch.v1.EmbedderService."""

import sys

from embedder_service.app import start
from embedder_service.model import CompileFailed
from embedder_service.settings import EmbedderSettings
from embedder_service.weights import WeightsUnavailable
from imagesearch.service_main import run

if __name__ == "__main__":
    sys.exit(
        run(
            "embedder_service",
            EmbedderSettings,
            "EMBEDDER_",
            start,
            __doc__,
            (WeightsUnavailable, CompileFailed),
        )
    )
