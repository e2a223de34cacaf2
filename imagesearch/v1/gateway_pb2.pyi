from imagesearch.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_PENDING: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_PENDING: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELED: JobState

class Query(_message.Message):
    __slots__ = ("image", "image_id", "path", "text")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    image_id: int
    path: str
    text: str
    def __init__(self, image: _Optional[bytes] = ..., image_id: _Optional[int] = ..., path: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "image", "image_id", "path", "top_k", "min_score", "path_prefix", "queries", "any_rotation", "text")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    PATH_PREFIX_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    ANY_ROTATION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    image: bytes
    image_id: int
    path: str
    top_k: int
    min_score: float
    path_prefix: str
    queries: _containers.RepeatedCompositeFieldContainer[Query]
    any_rotation: bool
    text: str
    def __init__(self, collection: _Optional[str] = ..., image: _Optional[bytes] = ..., image_id: _Optional[int] = ..., path: _Optional[str] = ..., top_k: _Optional[int] = ..., min_score: _Optional[float] = ..., path_prefix: _Optional[str] = ..., queries: _Optional[_Iterable[_Union[Query, _Mapping]]] = ..., any_rotation: _Optional[bool] = ..., text: _Optional[str] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("image_id", "path", "distance", "score", "width", "height", "paths", "more_paths")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    MORE_PATHS_FIELD_NUMBER: _ClassVar[int]
    image_id: int
    path: str
    distance: float
    score: float
    width: int
    height: int
    paths: _containers.RepeatedScalarFieldContainer[str]
    more_paths: int
    def __init__(self, image_id: _Optional[int] = ..., path: _Optional[str] = ..., distance: _Optional[float] = ..., score: _Optional[float] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., paths: _Optional[_Iterable[str]] = ..., more_paths: _Optional[int] = ...) -> None: ...

class QueryResult(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "results")
    HITS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    results: _containers.RepeatedCompositeFieldContainer[QueryResult]
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., results: _Optional[_Iterable[_Union[QueryResult, _Mapping]]] = ...) -> None: ...

class IndexImagesRequest(_message.Message):
    __slots__ = ("collection", "name", "data", "more_chunks", "return_images", "model")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MORE_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    RETURN_IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    collection: str
    name: str
    data: bytes
    more_chunks: bool
    return_images: bool
    model: str
    def __init__(self, collection: _Optional[str] = ..., name: _Optional[str] = ..., data: _Optional[bytes] = ..., more_chunks: _Optional[bool] = ..., return_images: _Optional[bool] = ..., model: _Optional[str] = ...) -> None: ...

class FileError(_message.Message):
    __slots__ = ("path", "reason", "code")
    PATH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    path: str
    reason: str
    code: int
    def __init__(self, path: _Optional[str] = ..., reason: _Optional[str] = ..., code: _Optional[int] = ...) -> None: ...

class IndexedImage(_message.Message):
    __slots__ = ("name", "image_id", "duplicate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    image_id: int
    duplicate: bool
    def __init__(self, name: _Optional[str] = ..., image_id: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class IndexImagesResponse(_message.Message):
    __slots__ = ("indexed", "duplicates", "failed", "errors", "images", "errors_omitted")
    INDEXED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_OMITTED_FIELD_NUMBER: _ClassVar[int]
    indexed: int
    duplicates: int
    failed: int
    errors: _containers.RepeatedCompositeFieldContainer[FileError]
    images: _containers.RepeatedCompositeFieldContainer[IndexedImage]
    errors_omitted: int
    def __init__(self, indexed: _Optional[int] = ..., duplicates: _Optional[int] = ..., failed: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[FileError, _Mapping]]] = ..., images: _Optional[_Iterable[_Union[IndexedImage, _Mapping]]] = ..., errors_omitted: _Optional[int] = ...) -> None: ...

class StartIndexJobRequest(_message.Message):
    __slots__ = ("collection", "folder", "recursive", "model")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FOLDER_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    collection: str
    folder: str
    recursive: bool
    model: str
    def __init__(self, collection: _Optional[str] = ..., folder: _Optional[str] = ..., recursive: _Optional[bool] = ..., model: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "state", "total", "done", "indexed", "duplicates", "failed", "errors", "collection", "folder", "recursive", "message", "created_at_ms", "updated_at_ms", "model", "walk_complete", "errors_omitted")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    INDEXED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FOLDER_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WALK_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    ERRORS_OMITTED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    total: int
    done: int
    indexed: int
    duplicates: int
    failed: int
    errors: _containers.RepeatedCompositeFieldContainer[FileError]
    collection: str
    folder: str
    recursive: bool
    message: str
    created_at_ms: int
    updated_at_ms: int
    model: str
    walk_complete: bool
    errors_omitted: int
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., total: _Optional[int] = ..., done: _Optional[int] = ..., indexed: _Optional[int] = ..., duplicates: _Optional[int] = ..., failed: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[FileError, _Mapping]]] = ..., collection: _Optional[str] = ..., folder: _Optional[str] = ..., recursive: _Optional[bool] = ..., message: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ..., model: _Optional[str] = ..., walk_complete: _Optional[bool] = ..., errors_omitted: _Optional[int] = ...) -> None: ...

class StartIndexJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("collection", "page_size", "page_token", "include_errors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    page_size: int
    page_token: str
    include_errors: bool
    def __init__(self, collection: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_errors: _Optional[bool] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ResumeJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ResumeJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class CountRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class CountResponse(_message.Message):
    __slots__ = ("count", "pending")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    count: int
    pending: int
    def __init__(self, count: _Optional[int] = ..., pending: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "image_ids", "paths", "path_prefix")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    PATH_PREFIX_FIELD_NUMBER: _ClassVar[int]
    collection: str
    image_ids: _containers.RepeatedScalarFieldContainer[int]
    paths: _containers.RepeatedScalarFieldContainer[str]
    path_prefix: str
    def __init__(self, collection: _Optional[str] = ..., image_ids: _Optional[_Iterable[int]] = ..., paths: _Optional[_Iterable[str]] = ..., path_prefix: _Optional[str] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "paths_removed")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    PATHS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    paths_removed: int
    def __init__(self, deleted: _Optional[int] = ..., paths_removed: _Optional[int] = ...) -> None: ...

class DropCollectionRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class DropCollectionResponse(_message.Message):
    __slots__ = ("dropped",)
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    dropped: bool
    def __init__(self, dropped: _Optional[bool] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[_common_pb2.CollectionInfo]
    def __init__(self, collections: _Optional[_Iterable[_Union[_common_pb2.CollectionInfo, _Mapping]]] = ...) -> None: ...

class GetImageRequest(_message.Message):
    __slots__ = ("collection", "path")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    collection: str
    path: str
    def __init__(self, collection: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class GetImageResponse(_message.Message):
    __slots__ = ("data", "image_id", "path")
    DATA_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    image_id: int
    path: str
    def __init__(self, data: _Optional[bytes] = ..., image_id: _Optional[int] = ..., path: _Optional[str] = ...) -> None: ...

class ReconcileRequest(_message.Message):
    __slots__ = ("collection", "backfill_thumbnails", "backfill_text")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    BACKFILL_THUMBNAILS_FIELD_NUMBER: _ClassVar[int]
    BACKFILL_TEXT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    backfill_thumbnails: bool
    backfill_text: bool
    def __init__(self, collection: _Optional[str] = ..., backfill_thumbnails: _Optional[bool] = ..., backfill_text: _Optional[bool] = ...) -> None: ...

class GetThumbnailRequest(_message.Message):
    __slots__ = ("collection", "image_id")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    collection: str
    image_id: int
    def __init__(self, collection: _Optional[str] = ..., image_id: _Optional[int] = ...) -> None: ...

class GetThumbnailResponse(_message.Message):
    __slots__ = ("data", "content_type")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    content_type: str
    def __init__(self, data: _Optional[bytes] = ..., content_type: _Optional[str] = ...) -> None: ...

class ReconcileResponse(_message.Message):
    __slots__ = ("marked_ready", "orphan_vectors_deleted", "missing_vectors", "reembedded", "unrepaired_paths", "unrepaired", "thumbnails_made", "thumbnails_missing", "text_made", "text_missing")
    MARKED_READY_FIELD_NUMBER: _ClassVar[int]
    ORPHAN_VECTORS_DELETED_FIELD_NUMBER: _ClassVar[int]
    MISSING_VECTORS_FIELD_NUMBER: _ClassVar[int]
    REEMBEDDED_FIELD_NUMBER: _ClassVar[int]
    UNREPAIRED_PATHS_FIELD_NUMBER: _ClassVar[int]
    UNREPAIRED_FIELD_NUMBER: _ClassVar[int]
    THUMBNAILS_MADE_FIELD_NUMBER: _ClassVar[int]
    THUMBNAILS_MISSING_FIELD_NUMBER: _ClassVar[int]
    TEXT_MADE_FIELD_NUMBER: _ClassVar[int]
    TEXT_MISSING_FIELD_NUMBER: _ClassVar[int]
    marked_ready: int
    orphan_vectors_deleted: int
    missing_vectors: int
    reembedded: int
    unrepaired_paths: _containers.RepeatedScalarFieldContainer[str]
    unrepaired: int
    thumbnails_made: int
    thumbnails_missing: int
    text_made: int
    text_missing: int
    def __init__(self, marked_ready: _Optional[int] = ..., orphan_vectors_deleted: _Optional[int] = ..., missing_vectors: _Optional[int] = ..., reembedded: _Optional[int] = ..., unrepaired_paths: _Optional[_Iterable[str]] = ..., unrepaired: _Optional[int] = ..., thumbnails_made: _Optional[int] = ..., thumbnails_missing: _Optional[int] = ..., text_made: _Optional[int] = ..., text_missing: _Optional[int] = ...) -> None: ...

class CheckAccessRequest(_message.Message):
    __slots__ = ("write",)
    WRITE_FIELD_NUMBER: _ClassVar[int]
    write: bool
    def __init__(self, write: _Optional[bool] = ...) -> None: ...

class CheckAccessResponse(_message.Message):
    __slots__ = ("role",)
    ROLE_FIELD_NUMBER: _ClassVar[int]
    role: str
    def __init__(self, role: _Optional[str] = ...) -> None: ...
