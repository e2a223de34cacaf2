"""``python -m embedder_service``: serve imagesearch.v1.Embedder."""

from __future__ import annotations

import sys

from embedder_service.app import start
from embedder_service.settings import EmbedderSettings
from embedder_service.weights import WeightsUnavailable
from imagesearch import logs
from imagesearch.server import serve_until_signal, start_metrics
from imagesearch.settings import SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(
            EmbedderSettings,
            "EMBEDDER_",
            sys.argv[1:] if argv is None else argv,
            description=__doc__,
        )
    except SettingsError as exc:
        print(f"embedder_service: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        running = start(settings)
    except WeightsUnavailable as exc:
        print(f"embedder_service: cannot load model weights: {exc}", file=sys.stderr)
        return 3
    start_metrics(settings.metrics_port)
    serve_until_signal(running, "embedder")
    return 0


if __name__ == "__main__":
    sys.exit(main())
