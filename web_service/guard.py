"""What a hostile web page can make a user's browser send, refused before any
route runs:

- a request whose ``Host`` is not one this face serves (DNS rebinding: a
  page of ``evil.example`` whose name now points at 127.0.0.1): 400;
- a state-changing request (POST, PUT, PATCH, DELETE) that the browser marks
  as coming from another site (``Sec-Fetch-Site``, or an ``Origin`` that is
  neither this server nor one of WEB_ALLOWED_ORIGINS): 403. Requests with no
  ``Origin`` and no ``Sec-Fetch-Site`` (scripts, curl, seed 001's clients) pass;
- an upload (a multipart body) from a caller the gateway would refuse: the
  caller's token is checked first, so the body is never read (401/403); and
  more uploads at once than WEB_MAX_UPLOADS: 429, so that their bodies fit the
  pod's memory and ``/tmp``.

Health (``/healthz``, ``/readyz``) answers whatever the Host: probes dial the
pod's address.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from imagesearch.client import ImageSearchError
from web_service.errors import error_body, http_status

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# Upload routes and whether they write (the role the gateway will ask for).
UPLOADS: tuple[tuple[re.Pattern[str], bool], ...] = (
    (re.compile(r"/v1/collections/[^/]+/images"), True),
    (re.compile(r"/img/upload"), True),
    (re.compile(r"/v1/collections/[^/]+/search"), False),
    (re.compile(r"/img/search"), False),
)

# (authorization header or None, write?) -> None, or raises ImageSearchError.
CheckCaller = Callable[[str | None, bool], None]


def host_name(value: str) -> str:
    """The host of a Host header or netloc, lower case, without port or brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def netloc(value: str, scheme: str) -> str:
    """host:port with the scheme's default port written out."""
    host = value.strip().lower()
    if (host.startswith("[") and host.endswith("]")) or ":" not in host.rsplit("]", 1)[-1]:
        host += ":443" if scheme in ("https", "wss") else ":80"
    return host


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        hosts: frozenset[str] | None,
        origins: frozenset[str],
        max_uploads: int,
        check_caller: CheckCaller,
    ) -> None:
        """``hosts``: the names served (None: any); ``origins``: other sites
        allowed to change state (``https://app.example``)."""
        self.app = app
        self.hosts = hosts
        self.origins = frozenset(o.rstrip("/").lower() for o in origins)
        self.max_uploads = max_uploads
        self.uploading = 0
        self.check_caller = check_caller

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for key, value in scope.get("headers", ()):
            headers[key.decode("latin-1").lower()] = value.decode("latin-1")
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET").upper()
        host = headers.get("host", "")
        if path not in OPEN_PATHS and self.hosts is not None and host_name(host) not in self.hosts:
            shown = host[:80] or "(none)"
            await _answer(
                send,
                400,
                "INVALID_ARGUMENT",
                f"Host {shown!r} is not served here; add it to WEB_ALLOWED_HOSTS if it "
                "is this server's name",
            )
            return
        if method in STATE_CHANGING:
            refusal = self._cross_site(headers, host, scope.get("scheme", "http"))
            if refusal:
                await _answer(send, 403, "PERMISSION_DENIED", refusal)
                return
        write = upload_kind(method, path, headers.get("content-type", ""))
        if write is None:
            await self.app(scope, receive, send)
            return
        if self.uploading >= self.max_uploads:
            await _answer(
                send,
                429,
                "RESOURCE_EXHAUSTED",
                f"{self.max_uploads} uploads are being received already (WEB_MAX_UPLOADS); "
                "retry shortly",
            )
            return
        self.uploading += 1  # one event loop: no lock needed
        try:
            try:
                await run_in_threadpool(self.check_caller, headers.get("authorization"), write)
            except ImageSearchError as exc:
                await _answer(send, http_status(exc.code), exc.code.name, exc.message)
                return
            await self.app(scope, receive, send)
        finally:
            self.uploading -= 1

    def _cross_site(self, headers: dict[str, str], host: str, scheme: str) -> str:
        """Why a state-changing request is refused as cross-site ("" if not)."""
        origin = headers.get("origin", "").strip()
        if origin and origin.lower() != "null":
            parts = urlsplit(origin)
            own = bool(host) and netloc(parts.netloc, parts.scheme) == netloc(host, scheme)
            if own or origin.rstrip("/").lower() in self.origins:
                return ""
            return (
                f"a {origin[:80]!r} page may not change anything here (cross-site request "
                "refused); WEB_ALLOWED_ORIGINS lists the sites that may"
            )
        if origin or headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site"):
            return (
                "the browser marked this request as sent by another site; it may not change "
                "anything here (cross-site request refused)"
            )
        return ""


def upload_kind(method: str, path: str, content_type: str) -> bool | None:
    """For a multipart upload to an upload route: whether it writes; else None."""
    if method != "POST" or not content_type.lower().startswith("multipart/"):
        return None
    for pattern, write in UPLOADS:
        if pattern.fullmatch(path):
            return write
    return None


async def _answer(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps(error_body(code, message)).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
