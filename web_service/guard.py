"""What a hostile web page can make a user's browser send, refused before any
route runs:

- a request whose ``Host`` is not one this face serves (DNS rebinding: a
  page of ``evil.example`` whose name now points at 127.0.0.1): 400;
- a state-changing request (POST, PUT, PATCH, DELETE) that the browser marks
  as coming from another site (``Sec-Fetch-Site``, or an ``Origin`` that is
  neither this server nor one of WEB_ALLOWED_ORIGINS): 403. Requests with no
  ``Origin`` and no ``Sec-Fetch-Site`` (scripts, curl, seed 001's clients) pass;
- a request with a body (an upload, JSON, a form) from a caller the gateway
  would refuse: the caller's token is checked first (for writing, except on
  the search and count routes), so the body is never read (401/403); more
  uploads (multipart) at once than WEB_MAX_UPLOADS, or other bodies than
  WEB_MAX_BODIES: 429, so that their bodies fit the pod's memory and ``/tmp``;
- a request that repeats Host, Content-Type, Content-Length,
  Transfer-Encoding or Authorization: 400 (a guard reading one copy and a
  route reading the other could be told two stories).

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
# Routes whose body a read-only token may send (searches, counts); any other
# body's caller is checked for writing (the role the gateway will ask for).
READ_BODIES = re.compile(r"/v1/collections/[^/]+/search|/img/search|/img/count")
# Headers that must come once.
SINGLE = frozenset({"host", "content-type", "content-length", "transfer-encoding", "authorization"})

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
        max_bodies: int = 32,
    ) -> None:
        """``hosts``: the names served (None: any); ``origins``: other sites
        allowed to change state (``https://app.example``)."""
        self.app = app
        self.hosts = hosts
        self.origins = frozenset(o.rstrip("/").lower() for o in origins)
        self.max_uploads = max_uploads
        self.max_bodies = max_bodies
        self.uploading = 0  # multipart bodies being received
        self.receiving = 0  # other bodies
        self.check_caller = check_caller

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        repeated = ""
        for key, value in scope.get("headers", ()):
            name = key.decode("latin-1").lower()
            if name in headers and name in SINGLE:
                repeated = name
            headers.setdefault(name, value.decode("latin-1"))  # the first, as routes read it
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET").upper()
        if repeated:
            await _answer(send, 400, "INVALID_ARGUMENT", f"the {repeated} header is sent twice")
            return
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
        write = body_kind(method, path, headers)
        if write is None:
            await self.app(scope, receive, send)
            return
        upload = headers.get("content-type", "").lower().startswith("multipart/")
        taken, cap, setting = (
            (self.uploading, self.max_uploads, "uploads (WEB_MAX_UPLOADS)")
            if upload
            else (self.receiving, self.max_bodies, "request bodies (WEB_MAX_BODIES)")
        )
        if taken >= cap:
            await _answer(
                send,
                429,
                "RESOURCE_EXHAUSTED",
                f"{cap} {setting} are being received already; retry shortly",
            )
            return
        self._count(upload, 1)  # one event loop: no lock needed
        try:
            try:
                await run_in_threadpool(self.check_caller, headers.get("authorization"), write)
            except ImageSearchError as exc:
                await _answer(send, http_status(exc.code), exc.code.name, exc.message)
                return
            await self.app(scope, receive, send)
        finally:
            self._count(upload, -1)

    def _count(self, upload: bool, change: int) -> None:
        if upload:
            self.uploading += change
        else:
            self.receiving += change

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


def body_kind(method: str, path: str, headers: dict[str, str]) -> bool | None:
    """For a request that carries a body: whether its caller must be checked
    for writing (else for reading); None for one without a body."""
    if method not in STATE_CHANGING or path in OPEN_PATHS:
        return None
    length = headers.get("content-length", "").strip()
    if "transfer-encoding" not in headers and length in ("", "0"):
        return None
    return not READ_BODIES.fullmatch(path)


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
