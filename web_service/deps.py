"""What every route needs: the gateway client as the caller (their
Authorization header forwarded), uploads read within bounds, content types."""

from __future__ import annotations

import grpc
from fastapi import Request, UploadFile

from imagesearch.client import Client, ImageSearchError
from web_service.settings import WebSettings


def settings(request: Request) -> WebSettings:
    value: WebSettings = request.app.state.settings
    return value


def caller(request: Request) -> Client:
    """The gateway client, sending the caller's own Authorization header (the
    gateway checks tokens and roles; this face holds none)."""
    base: Client = request.app.state.client
    return base.as_caller(request.headers.get("authorization"))


def read_upload(upload: UploadFile | None, what: str = "image") -> bytes:
    """The bytes of an uploaded file (its size is bounded by WEB_MAX_UPLOAD_MB
    before it gets here). Its file name is never used on this machine."""
    if upload is None:
        raise ImageSearchError(
            grpc.StatusCode.INVALID_ARGUMENT, f"send the {what} as a multipart file field"
        )
    data = upload.file.read()
    if not data:
        name = upload.filename or what
        raise ImageSearchError(grpc.StatusCode.INVALID_ARGUMENT, f"{name}: empty file (0 bytes)")
    return data


MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF8", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),
    (b"BM", 0, "image/bmp"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
)


def content_type(data: bytes) -> str:
    """The image type from the first bytes (served with nosniff)."""
    for magic, offset, kind in MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return kind
    return "application/octet-stream"
