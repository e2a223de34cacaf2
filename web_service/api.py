"""The /v1 JSON API: the Gateway's calls over HTTP (OpenAPI at /openapi.json,
pages at /docs). Errors are ``{"detail", "code"}`` with the status from
``web_service.errors``; job progress streams as Server-Sent Events."""

from __future__ import annotations

from typing import Annotated

import grpc
from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import Response, StreamingResponse

from imagesearch.client import Client, ImageSearchError
from imagesearch.naming import COLLECTION_PATTERN, COLLECTION_RULE, OPTIONAL_COLLECTION_PATTERN
from web_service.deps import caller, content_type, read_upload
from web_service.events import EventStreams
from web_service.models import (
    CollectionOut,
    CollectionsOut,
    CountOut,
    DeletedOut,
    DeleteIn,
    DroppedOut,
    HitOut,
    IndexOut,
    JobOut,
    JobsOut,
    SearchOut,
    StartJobIn,
)

router = APIRouter(prefix="/v1")

Caller = Annotated[Client, Depends(caller)]
Name = Annotated[
    str, Path(pattern=COLLECTION_PATTERN, description=f"collection name: {COLLECTION_RULE}")
]
JobId = Annotated[str, Path(min_length=1, max_length=128)]
MAX_FILES = 256  # files in one upload call


def _image_id(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ImageSearchError(
            grpc.StatusCode.INVALID_ARGUMENT, f"image id {raw[:40]!r} is not an integer"
        ) from None
    if not -(2**63) <= value < 2**63:
        raise ImageSearchError(grpc.StatusCode.INVALID_ARGUMENT, "image ids are signed 64-bit")
    return value


@router.get("/collections", tags=["collections"])
def collections(client: Caller) -> CollectionsOut:
    return CollectionsOut(collections=[CollectionOut.of(x) for x in client.list_collections()])


@router.get("/collections/{collection}/count", tags=["collections"])
def count(collection: Name, client: Caller) -> CountOut:
    n = client.count(collection=collection)
    return CountOut(collection=collection, count=n.count, pending=n.pending)


@router.delete("/collections/{collection}", tags=["collections"], summary="Drop a collection")
def drop(collection: Name, client: Caller) -> DroppedOut:
    return DroppedOut(dropped=client.drop_collection(collection))


@router.post(
    "/collections/{collection}/delete",
    tags=["collections"],
    summary="Delete images by ids, exact paths or a path prefix",
)
def delete(collection: Name, body: DeleteIn, client: Caller) -> DeletedOut:
    if not (body.image_ids or body.paths or body.path_prefix):
        raise ImageSearchError(
            grpc.StatusCode.INVALID_ARGUMENT, "say what to delete: image_ids, paths or path_prefix"
        )
    done = client.delete(
        collection=collection,
        image_ids=[_image_id(i) for i in body.image_ids],
        paths=body.paths,
        path_prefix=body.path_prefix,
    )
    return DeletedOut(deleted=done.images, paths_removed=done.paths)


@router.post(
    "/collections/{collection}/search",
    tags=["search"],
    summary="Similar images to an uploaded image or a stored one, or images words name, best first",
)
def search(
    collection: Name,
    client: Caller,
    image: Annotated[UploadFile | None, File(description="the query image")] = None,
    image_id: Annotated[str | None, Form(max_length=24, description="or a stored image")] = None,
    top_k: Annotated[int, Form(ge=1, le=1000)] = 10,
    min_score: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
    path_prefix: Annotated[str, Form(max_length=4096)] = "",
    any_rotation: Annotated[bool, Form(description="match any right-angle rotation")] = False,
    text: Annotated[
        str,
        Form(
            max_length=500,
            description="alone: search by words ('red sneakers', 1-200 characters), for a "
            "collection with text vectors, else 409; with an image: a composed query, how "
            "the wanted image differs from it ('make the red cube blue'), for a collection "
            "of a composing model (tirg_css), else 409",
        ),
    ] = "",
) -> SearchOut:
    given = (image is not None) + (image_id is not None)
    if given > 1 or (given == 0 and not text):
        raise ImageSearchError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "send an image file or an image_id (with a text, to compose), or a text alone",
        )
    hits = client.search(
        image=read_upload(image) if image is not None else None,
        image_id=_image_id(image_id) if image_id is not None else None,
        collection=collection,
        top_k=top_k,
        min_score=min_score,
        path_prefix=path_prefix,
        any_rotation=any_rotation,
        text=text,
    )
    return SearchOut(collection=collection, hits=[HitOut.of(h, collection) for h in hits])


@router.post(
    "/collections/{collection}/images",
    tags=["indexing"],
    summary="Index uploaded images (named by the client: never served back by /file)",
)
def index_images(
    collection: Name,
    client: Caller,
    files: Annotated[list[UploadFile], File(description="images")],
    model: Annotated[
        str,
        Form(
            max_length=64,
            description="model of a collection this creates (e.g. tirg_css); empty: the "
            "gateway's default embedder",
        ),
    ] = "",
) -> IndexOut:
    if len(files) > MAX_FILES:
        raise ImageSearchError(
            grpc.StatusCode.INVALID_ARGUMENT, f"{len(files)} files in one call, limit {MAX_FILES}"
        )
    images = [(f.filename or f"upload #{n}", read_upload(f)) for n, f in enumerate(files)]
    report = client.index_images(images, collection=collection, return_images=True, model=model)
    return IndexOut.of(report)


@router.get(
    "/collections/{collection}/images/{image_id}/thumbnail",
    tags=["images"],
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
)
def thumbnail(
    request: Request,
    collection: Name,
    image_id: Annotated[str, Path(max_length=24)],
    client: Caller,
) -> Response:
    """An id is its image's content, so a thumbnail's ETag is its id, but the
    browser asks again every time (no-cache): a deleted image's thumbnail is
    gone at once (404), a kept one costs a 304 without its bytes."""
    data = client.get_thumbnail(_image_id(image_id), collection=collection)
    etag = f'"{collection}-{_image_id(image_id)}"'
    headers = {"Cache-Control": "private, no-cache", "ETag": etag}
    if etag in (t.strip() for t in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="image/jpeg", headers=headers)


@router.get(
    "/collections/{collection}/file",
    tags=["images"],
    summary="The bytes of an image a server job indexed, by its path",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}},
)
def file(
    collection: Name,
    client: Caller,
    path: Annotated[str, Query(min_length=1, max_length=4096)],
) -> Response:
    data = client.get_image(path, collection=collection)
    return Response(data, media_type=content_type(data))


@router.post("/jobs", tags=["jobs"], summary="Index a folder on the server")
def start_job(body: StartJobIn, client: Caller) -> JobOut:
    job = client.start_job(
        body.folder, collection=body.collection, recursive=body.recursive, model=body.model
    )
    return JobOut.of(job)


@router.get("/jobs", tags=["jobs"], summary="Jobs, newest first (without their file errors)")
def list_jobs(
    client: Caller,
    collection: Annotated[str, Query(pattern=OPTIONAL_COLLECTION_PATTERN)] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobsOut:
    jobs = client.list_jobs(collection=collection, page_size=min(limit, 1000), limit=limit)
    return JobsOut(jobs=[JobOut.of(j) for j in jobs])


@router.get("/jobs/{job_id}", tags=["jobs"])
def get_job(job_id: JobId, client: Caller) -> JobOut:
    return JobOut.of(client.get_job(job_id))


@router.post("/jobs/{job_id}/cancel", tags=["jobs"])
def cancel_job(job_id: JobId, client: Caller) -> JobOut:
    return JobOut.of(client.cancel_job(job_id))


@router.post("/jobs/{job_id}/resume", tags=["jobs"])
def resume_job(job_id: JobId, client: Caller) -> JobOut:
    return JobOut.of(client.resume_job(job_id))


@router.get(
    "/jobs/{job_id}/events",
    tags=["jobs"],
    summary="The job now and at every change, as Server-Sent Events (event: job), until it ends",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def job_events(job_id: JobId, request: Request, client: Caller) -> StreamingResponse:
    streams: EventStreams = request.app.state.event_streams
    streams.check()
    client.get_job(job_id)  # NOT_FOUND and refusals answer with their status, before the stream
    return StreamingResponse(
        streams.stream(client, job_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
