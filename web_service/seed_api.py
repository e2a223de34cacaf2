"""Seed 001's HTTP API, kept so that its web client and scripts work
unchanged; the collection is the optional ``table_name`` query parameter.

Kept without its holes: /data serves only files a server job indexed (the
gateway's GetImage rule), uploads are indexed from memory under a name made
of their content hash (nothing is written under a name the client chose),
bodies are bounded (WEB_MAX_UPLOAD_MB), and URLs are refused (no
server-side fetching)."""

from __future__ import annotations

from typing import Annotated

import grpc
from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field

from imagesearch import ids
from imagesearch.client import Client, ImageSearchError
from imagesearch.naming import COLLECTION_PATTERN, COLLECTION_RULE
from web_service.deps import caller, content_type, read_upload, settings
from web_service.settings import WebSettings

router = APIRouter(tags=["seed 001 API"])

Table = Annotated[
    str | None,
    Query(
        pattern=COLLECTION_PATTERN,
        description=f"collection (default: WEB_COLLECTION): {COLLECTION_RULE}",
    ),
]
Caller = Annotated[Client, Depends(caller)]
Settings = Annotated[WebSettings, Depends(settings)]


def _collection(table_name: str | None, config: WebSettings) -> str:
    return table_name or config.collection


class LoadIn(BaseModel):
    File: str = Field(min_length=1, max_length=4096, description="a folder on the server")


@router.post("/img/load", summary="Start indexing a server folder (answers at once)")
def load(body: LoadIn, client: Caller, config: Settings, table_name: Table = None) -> str:
    job = client.start_job(body.File, collection=_collection(table_name, config))
    return f"Started loading {body.File}: job {job.job_id}; GET /progress follows it"


@router.get("/progress", summary="Progress of the collection's latest job")
def progress(client: Caller, config: Settings, table_name: Table = None) -> str:
    jobs = client.list_jobs(collection=_collection(table_name, config), page_size=1, limit=1)
    if not jobs:
        return "current: 0, total: 0"
    return f"current: {jobs[0].done}, total: {jobs[0].total}"


@router.post("/img/count", summary="Images in the collection")
def count(client: Caller, config: Settings, table_name: Table = None) -> int:
    try:
        return client.count(collection=_collection(table_name, config)).count
    except ImageSearchError as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:
            return 0  # the seed counted a missing table as empty
        raise


@router.post("/img/search", summary="The topk most similar images: [[path, distance], ...]")
def search(
    client: Caller,
    config: Settings,
    image: Annotated[UploadFile | None, File(description="the query image")] = None,
    topk: Annotated[int, Form(ge=1, le=1000)] = 10,
    table_name: Table = None,
) -> list[tuple[str, float]]:
    hits = client.search(
        image=read_upload(image), collection=_collection(table_name, config), top_k=topk
    )
    return [(h.path, h.distance) for h in hits]


@router.post("/img/upload", summary="Index one uploaded image; answers its id")
def upload(
    client: Caller,
    config: Settings,
    image: Annotated[UploadFile | None, File(description="the image")] = None,
    url: Annotated[str | None, Form(max_length=4096, description="refused")] = None,
    table_name: Table = None,
) -> int:
    if url is not None:
        raise ImageSearchError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "this server does not fetch URLs; upload the image itself as the 'image' file",
        )
    data = read_upload(image)
    # The client's file name is not used: the image is named by its content.
    name = f"uploads/{ids.sha256(data).hex()}"
    report = client.index_images(
        [(name, data)], collection=_collection(table_name, config), return_images=True
    )
    if name in report.image_ids:
        return report.image_ids[name]
    error = report.errors[0] if report.errors else None
    raise ImageSearchError(
        error.code if error else grpc.StatusCode.INTERNAL,
        error.reason if error else "the gateway stored nothing and said nothing",
    )


@router.get(
    "/data",
    summary="The bytes of an image a server job indexed",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}, 404: {"description": "no such indexed file"}},
)
def data(
    client: Caller,
    config: Settings,
    image_path: Annotated[str, Query(min_length=1, max_length=4096)],
    table_name: Table = None,
) -> Response:
    try:
        body = client.get_image(image_path, collection=_collection(table_name, config))
    except ImageSearchError as exc:
        if exc.code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ):
            raise
        # Anything else is "not an indexed file": one answer, nothing to probe.
        raise ImageSearchError(
            grpc.StatusCode.NOT_FOUND, f"{image_path}: not an image a server job indexed"
        ) from None
    return Response(body, media_type=content_type(body))


@router.post("/img/drop", summary="Drop the collection")
def drop(client: Caller, config: Settings, table_name: Table = None) -> str:
    name = _collection(table_name, config)
    dropped = client.drop_collection(name)
    return "Successfully drop the collection!" if dropped else "No such collection"
