"""A bound on request bodies (WEB_MAX_UPLOAD_MB), enforced while they are read:
a declared Content-Length over it is refused at once, and a chunked body is
counted and refused with 413 as soon as it passes the bound."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from web_service.errors import error_body


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        over = False
        started = False

        async def counted() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    # The app sees the body end here; its answer is replaced below.
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if over and not started:
                started = True
                await self._refuse(send)
            if over:
                return  # the app's own answer to a cut-off body is dropped
            started = True
            await send(message)

        await self.app(scope, counted, guarded)

    async def _refuse(self, send: Send) -> None:
        mb = self.max_bytes / (1024 * 1024)
        body = json.dumps(
            error_body(
                "INVALID_ARGUMENT",
                f"the request body is over the limit of {mb:.0f} MiB (WEB_MAX_UPLOAD_MB)",
            )
        ).encode()
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
