"""The FastAPI application: seed 001's API, /v1, the page at /, health."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagesearch.client import Client, ImageSearchError
from web_service import api, seed_api
from web_service.errors import error_body, on_gateway_error
from web_service.events import EventStreams
from web_service.guard import RequestGuard
from web_service.limits import BodyLimit
from web_service.models import HealthOut
from web_service.settings import WebSettings

STATIC = Path(__file__).parent / "static"
# The page loads only its own files; thumbnails come as blob: URLs (fetched
# with the caller's token).
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
        b"script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, with_headers)


async def on_invalid(_request: Request, exc: Exception) -> JSONResponse:
    """Malformed requests (a missing field, a number out of range) are 400,
    with the first problem in words and the rest listed."""
    assert isinstance(exc, RequestValidationError)
    problems = [
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg', '')}"
        for e in exc.errors()
    ]
    body = error_body("INVALID_ARGUMENT", "; ".join(problems) or "invalid request")
    return JSONResponse(body, 400)


def create_app(settings: WebSettings, client: Client) -> FastAPI:
    app = FastAPI(
        title="imagesearch",
        version="1",
        summary="Reverse image search: seed 001's HTTP API, the /v1 JSON API and a web page, "
        "in front of the imagesearch gRPC gateway",
    )
    app.state.settings = settings
    app.state.client = client
    app.state.event_streams = EventStreams(settings.max_event_streams)
    app.add_exception_handler(ImageSearchError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.include_router(seed_api.router)
    app.include_router(api.router)

    @app.get("/healthz", tags=["health"], summary="The web face answers (liveness)")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="The gateway and its backends serve (readiness): 200, else 503",
        responses={503: {"model": HealthOut}},
    )
    def readyz() -> JSONResponse:
        ready = client.ready(timeout=2.0)
        return JSONResponse(HealthOut(ready=ready).model_dump(), 200 if ready else 503)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    # Outermost but for the headers: refuses before any body is read.
    app.add_middleware(
        RequestGuard,
        hosts=settings.hosts,
        origins=frozenset(settings.allowed_origins),
        max_uploads=settings.max_uploads,
        max_bodies=settings.max_bodies,
        check_caller=lambda auth, write: client.as_caller(auth).check_access(write),
    )
    app.add_middleware(SecurityHeaders)
    return app


def gateway_client(settings: WebSettings) -> Client:
    return Client(
        settings.gateway_addr,
        tls=settings.gateway_tls,
        ca_file=settings.gateway_ca or None,
        timeout=settings.timeout_s,
    )
