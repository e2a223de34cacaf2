"""gRPC status -> HTTP status, one table for every route. A 500 means a bug
here, never a refusal of the caller's input."""

from __future__ import annotations

import grpc
from fastapi import Request
from fastapi.responses import JSONResponse

from imagesearch.client import ImageSearchError

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


def error_body(code: str, message: str) -> dict[str, str]:
    """Every error answer: ``{"detail": sentence, "code": gRPC code name}``."""
    return {"detail": message, "code": code}


async def on_gateway_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ImageSearchError)
    status = http_status(exc.code)
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(error_body(exc.code.name, exc.message), status, headers=headers)
