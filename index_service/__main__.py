"""``python -m index_service``: serve imagesearch.v1.Index."""

from __future__ import annotations

import sys

from imagesearch import logs
from imagesearch.server import serve_until_signal, start_metrics
from imagesearch.settings import SettingsError, load_settings
from index_service.app import start
from index_service.settings import IndexSettings


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(
            IndexSettings, "INDEX_", sys.argv[1:] if argv is None else argv, description=__doc__
        )
    except SettingsError as exc:
        print(f"index_service: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    running = start(settings)
    start_metrics(settings.metrics_port)
    serve_until_signal(running, "index")
    return 0


if __name__ == "__main__":
    sys.exit(main())
