"""``python -m web_service``: the HTTP face (seed 001's API, /v1, the page)."""

from __future__ import annotations

import logging
import sys

import uvicorn

from imagesearch import logs
from imagesearch.settings import SettingsError, load_settings
from web_service.app import create_app, gateway_client
from web_service.settings import WebSettings

log = logging.getLogger("web_service")


def main() -> int:
    try:
        settings = load_settings(WebSettings, "WEB_", sys.argv[1:], description=__doc__)
    except SettingsError as exc:
        print(f"web_service: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    client = gateway_client(settings)
    scheme = "https" if settings.tls_cert else "http"
    logs.event(
        log,
        "web.start",
        url=f"{scheme}://{settings.host}:{settings.port}/",
        gateway=settings.gateway_addr,
    )
    try:
        uvicorn.run(
            create_app(settings, client),
            host=settings.host,
            port=settings.port,
            ssl_certfile=settings.tls_cert or None,
            ssl_keyfile=settings.tls_key or None,
            log_config=None,  # our JSON logs
            access_log=False,
            timeout_graceful_shutdown=10,
            server_header=False,
        )
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
