"""The JSON shapes of the /v1 API (they make its OpenAPI schema). Image ids
are int64, beyond what a JavaScript number holds exactly: they travel as
decimal strings."""

from __future__ import annotations

from urllib.parse import quote

from pydantic import BaseModel, Field

from imagesearch import client as c
from imagesearch.naming import COLLECTION_RULE, OPTIONAL_COLLECTION_PATTERN


def thumbnail_url(collection: str, image_id: int) -> str:
    return f"/v1/collections/{quote(collection, safe='')}/images/{image_id}/thumbnail"


class HitOut(BaseModel):
    image_id: str = Field(description="int64 as a decimal string")
    path: str
    score: float = Field(description="cosine similarity in [0, 1]; higher is closer")
    distance: float = Field(description="lower is closer; ascending in a result list")
    width: int
    height: int
    paths: list[str]
    more_paths: int
    thumbnail_url: str

    @classmethod
    def of(cls, hit: c.Hit, collection: str) -> HitOut:
        return cls(
            image_id=str(hit.image_id),
            path=hit.path,
            score=hit.score,
            distance=hit.distance,
            width=hit.width,
            height=hit.height,
            paths=list(hit.paths),
            more_paths=hit.more_paths,
            thumbnail_url=thumbnail_url(collection, hit.image_id),
        )


class SearchOut(BaseModel):
    collection: str
    hits: list[HitOut]


class FileErrorOut(BaseModel):
    path: str
    reason: str
    code: str = Field(description="gRPC status name, e.g. INVALID_ARGUMENT")

    @classmethod
    def of(cls, e: c.FileError) -> FileErrorOut:
        return cls(path=e.path, reason=e.reason, code=e.code.name)


class IndexOut(BaseModel):
    files: int
    indexed: int
    duplicates: int
    failed: int
    errors: list[FileErrorOut]
    errors_omitted: int
    image_ids: dict[str, str] = Field(description="file name -> image id (decimal string)")

    @classmethod
    def of(cls, r: c.IndexReport) -> IndexOut:
        return cls(
            files=r.files,
            indexed=r.indexed,
            duplicates=r.duplicates,
            failed=r.failed,
            errors=[FileErrorOut.of(e) for e in r.errors],
            errors_omitted=r.errors_omitted,
            image_ids={k: str(v) for k, v in r.image_ids.items()},
        )


class JobOut(BaseModel):
    """The client's Job (imagesearch.client), as ``Job.as_dict`` gives it;
    a test keeps the two field for field."""

    job_id: str
    state: str = Field(description="pending, running, succeeded, failed or canceled")
    terminal: bool
    collection: str
    folder: str
    recursive: bool
    total: int
    done: int
    indexed: int
    duplicates: int
    failed: int
    message: str
    errors: list[FileErrorOut]
    created_at_ms: int
    updated_at_ms: int
    model: str = Field(default="", description="the model the job asked for a new collection")
    walk_complete: bool = Field(
        default=False, description="the folder is walked to the end: total is final"
    )
    errors_omitted: int = Field(
        default=0, description="file errors counted in failed but not listed in errors"
    )

    @classmethod
    def of(cls, j: c.Job) -> JobOut:
        return cls.model_validate(j.as_dict())


class JobsOut(BaseModel):
    jobs: list[JobOut]


class StartJobIn(BaseModel):
    collection: str = Field(
        default="",
        pattern=OPTIONAL_COLLECTION_PATTERN,
        description=f"empty: the gateway's default; else {COLLECTION_RULE}",
    )
    folder: str = Field(min_length=1, max_length=4096, description="under the allowed roots")
    recursive: bool = True
    model: str = Field(
        default="",
        max_length=64,
        description="model of a collection this creates (e.g. tirg_css); empty: the default",
    )


class CollectionOut(BaseModel):
    name: str
    model: str
    dim: int
    metric: str
    count: int
    pending: int
    composes: bool  # searches may carry a text change ("and change it")
    words: bool = Field(description="searchable by words (it holds text vectors)")

    @classmethod
    def of(cls, x: c.Collection) -> CollectionOut:
        return cls(
            name=x.name, model=x.model, dim=x.dim, metric=x.metric, count=x.count,
            pending=x.pending, composes=x.composes, words=bool(x.text_model),
        )  # fmt: skip


class CollectionsOut(BaseModel):
    collections: list[CollectionOut]


class CountOut(BaseModel):
    collection: str
    count: int = Field(description="images ready for search")
    pending: int = Field(description="images still waiting for their vector")


class DeleteIn(BaseModel):
    image_ids: list[str] = Field(default=[], max_length=10000, description="decimal strings")
    paths: list[str] = Field(default=[], max_length=10000)
    path_prefix: str = Field(default="", max_length=4096)


class DeletedOut(BaseModel):
    deleted: int = Field(description="images removed")
    paths_removed: int


class DroppedOut(BaseModel):
    dropped: bool


class HealthOut(BaseModel):
    ready: bool = Field(description="the gateway and its backends serve")
