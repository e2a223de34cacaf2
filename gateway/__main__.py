"""``python -m gateway``: serve imagesearch.v1.Gateway, the public API."""

from __future__ import annotations

import sys

from gateway.app import start
from gateway.settings import GatewaySettings
from imagesearch import logs
from imagesearch.server import serve_until_signal, start_metrics
from imagesearch.settings import SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(
            GatewaySettings, "GATEWAY_", sys.argv[1:] if argv is None else argv, description=__doc__
        )
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    running = start(settings)
    start_metrics(settings.metrics_port)
    serve_until_signal(running, "gateway")
    return 0


if __name__ == "__main__":
    sys.exit(main())
