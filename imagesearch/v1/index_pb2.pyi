from imagesearch.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_STATUS_UNSPECIFIED: _ClassVar[ImageStatus]
    IMAGE_STATUS_PENDING: _ClassVar[ImageStatus]
    IMAGE_STATUS_READY: _ClassVar[ImageStatus]

class PathOrigin(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PATH_ORIGIN_UNSPECIFIED: _ClassVar[PathOrigin]
    PATH_ORIGIN_SERVER: _ClassVar[PathOrigin]
    PATH_ORIGIN_STREAM: _ClassVar[PathOrigin]

class UpsertOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPSERT_OUTCOME_UNSPECIFIED: _ClassVar[UpsertOutcome]
    UPSERT_OUTCOME_INDEXED: _ClassVar[UpsertOutcome]
    UPSERT_OUTCOME_DUPLICATE: _ClassVar[UpsertOutcome]
    UPSERT_OUTCOME_REFUSED: _ClassVar[UpsertOutcome]
IMAGE_STATUS_UNSPECIFIED: ImageStatus
IMAGE_STATUS_PENDING: ImageStatus
IMAGE_STATUS_READY: ImageStatus
PATH_ORIGIN_UNSPECIFIED: PathOrigin
PATH_ORIGIN_SERVER: PathOrigin
PATH_ORIGIN_STREAM: PathOrigin
UPSERT_OUTCOME_UNSPECIFIED: UpsertOutcome
UPSERT_OUTCOME_INDEXED: UpsertOutcome
UPSERT_OUTCOME_DUPLICATE: UpsertOutcome
UPSERT_OUTCOME_REFUSED: UpsertOutcome

class ImageRecord(_message.Message):
    __slots__ = ("image_id", "path", "paths", "size", "width", "height", "sha256", "model", "status", "created_at_ms", "updated_at_ms", "collection", "server_paths")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SERVER_PATHS_FIELD_NUMBER: _ClassVar[int]
    image_id: int
    path: str
    paths: _containers.RepeatedScalarFieldContainer[str]
    size: int
    width: int
    height: int
    sha256: str
    model: str
    status: ImageStatus
    created_at_ms: int
    updated_at_ms: int
    collection: str
    server_paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, image_id: _Optional[int] = ..., path: _Optional[str] = ..., paths: _Optional[_Iterable[str]] = ..., size: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., sha256: _Optional[str] = ..., model: _Optional[str] = ..., status: _Optional[_Union[ImageStatus, str]] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ..., collection: _Optional[str] = ..., server_paths: _Optional[_Iterable[str]] = ...) -> None: ...

class UpsertItem(_message.Message):
    __slots__ = ("sha256", "path", "size", "width", "height", "vector", "origin", "thumbnail", "text_vector")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    TEXT_VECTOR_FIELD_NUMBER: _ClassVar[int]
    sha256: bytes
    path: str
    size: int
    width: int
    height: int
    vector: bytes
    origin: PathOrigin
    thumbnail: bytes
    text_vector: bytes
    def __init__(self, sha256: _Optional[bytes] = ..., path: _Optional[str] = ..., size: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., vector: _Optional[bytes] = ..., origin: _Optional[_Union[PathOrigin, str]] = ..., thumbnail: _Optional[bytes] = ..., text_vector: _Optional[bytes] = ...) -> None: ...

class IndexServiceUpsertRequest(_message.Message):
    __slots__ = ("collection", "model", "dim", "items", "text_model", "text_dim")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TEXT_MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_DIM_FIELD_NUMBER: _ClassVar[int]
    collection: str
    model: str
    dim: int
    items: _containers.RepeatedCompositeFieldContainer[UpsertItem]
    text_model: str
    text_dim: int
    def __init__(self, collection: _Optional[str] = ..., model: _Optional[str] = ..., dim: _Optional[int] = ..., items: _Optional[_Iterable[_Union[UpsertItem, _Mapping]]] = ..., text_model: _Optional[str] = ..., text_dim: _Optional[int] = ...) -> None: ...

class UpsertResult(_message.Message):
    __slots__ = ("image_id", "outcome", "path_added", "error", "code")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    PATH_ADDED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    image_id: int
    outcome: UpsertOutcome
    path_added: bool
    error: str
    code: int
    def __init__(self, image_id: _Optional[int] = ..., outcome: _Optional[_Union[UpsertOutcome, str]] = ..., path_added: _Optional[bool] = ..., error: _Optional[str] = ..., code: _Optional[int] = ...) -> None: ...

class IndexServiceUpsertResponse(_message.Message):
    __slots__ = ("results", "indexed", "duplicates")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    INDEXED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[UpsertResult]
    indexed: int
    duplicates: int
    def __init__(self, results: _Optional[_Iterable[_Union[UpsertResult, _Mapping]]] = ..., indexed: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class IndexServiceSearchRequest(_message.Message):
    __slots__ = ("collection", "vectors", "image_ids", "top_k", "path_prefix", "min_score", "model", "text_vectors", "text_model", "expand")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    PATH_PREFIX_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_VECTORS_FIELD_NUMBER: _ClassVar[int]
    TEXT_MODEL_FIELD_NUMBER: _ClassVar[int]
    EXPAND_FIELD_NUMBER: _ClassVar[int]
    collection: str
    vectors: _containers.RepeatedScalarFieldContainer[bytes]
    image_ids: _containers.RepeatedScalarFieldContainer[int]
    top_k: int
    path_prefix: str
    min_score: float
    model: str
    text_vectors: _containers.RepeatedScalarFieldContainer[bytes]
    text_model: str
    expand: int
    def __init__(self, collection: _Optional[str] = ..., vectors: _Optional[_Iterable[bytes]] = ..., image_ids: _Optional[_Iterable[int]] = ..., top_k: _Optional[int] = ..., path_prefix: _Optional[str] = ..., min_score: _Optional[float] = ..., model: _Optional[str] = ..., text_vectors: _Optional[_Iterable[bytes]] = ..., text_model: _Optional[str] = ..., expand: _Optional[int] = ...) -> None: ...

class IndexHit(_message.Message):
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

class IndexHits(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[IndexHit]
    def __init__(self, hits: _Optional[_Iterable[_Union[IndexHit, _Mapping]]] = ...) -> None: ...

class IndexServiceSearchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[IndexHits]
    def __init__(self, results: _Optional[_Iterable[_Union[IndexHits, _Mapping]]] = ...) -> None: ...

class IndexServiceGetRequest(_message.Message):
    __slots__ = ("collection", "image_ids", "paths", "include_pending")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PENDING_FIELD_NUMBER: _ClassVar[int]
    collection: str
    image_ids: _containers.RepeatedScalarFieldContainer[int]
    paths: _containers.RepeatedScalarFieldContainer[str]
    include_pending: bool
    def __init__(self, collection: _Optional[str] = ..., image_ids: _Optional[_Iterable[int]] = ..., paths: _Optional[_Iterable[str]] = ..., include_pending: _Optional[bool] = ...) -> None: ...

class IndexServiceGetResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[ImageRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[ImageRecord, _Mapping]]] = ...) -> None: ...

class IndexServiceReconcileRequest(_message.Message):
    __slots__ = ("collection", "thumbnails_limit", "text_limit")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    THUMBNAILS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    TEXT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    thumbnails_limit: int
    text_limit: int
    def __init__(self, collection: _Optional[str] = ..., thumbnails_limit: _Optional[int] = ..., text_limit: _Optional[int] = ...) -> None: ...

class IndexServiceReconcileResponse(_message.Message):
    __slots__ = ("marked_ready", "orphan_vectors_deleted", "needs_reembedding", "missing_vectors", "needs_thumbnail", "thumbnails_missing", "needs_text", "text_missing")
    MARKED_READY_FIELD_NUMBER: _ClassVar[int]
    ORPHAN_VECTORS_DELETED_FIELD_NUMBER: _ClassVar[int]
    NEEDS_REEMBEDDING_FIELD_NUMBER: _ClassVar[int]
    MISSING_VECTORS_FIELD_NUMBER: _ClassVar[int]
    NEEDS_THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    THUMBNAILS_MISSING_FIELD_NUMBER: _ClassVar[int]
    NEEDS_TEXT_FIELD_NUMBER: _ClassVar[int]
    TEXT_MISSING_FIELD_NUMBER: _ClassVar[int]
    marked_ready: int
    orphan_vectors_deleted: int
    needs_reembedding: _containers.RepeatedCompositeFieldContainer[ImageRecord]
    missing_vectors: int
    needs_thumbnail: _containers.RepeatedCompositeFieldContainer[ImageRecord]
    thumbnails_missing: int
    needs_text: _containers.RepeatedCompositeFieldContainer[ImageRecord]
    text_missing: int
    def __init__(self, marked_ready: _Optional[int] = ..., orphan_vectors_deleted: _Optional[int] = ..., needs_reembedding: _Optional[_Iterable[_Union[ImageRecord, _Mapping]]] = ..., missing_vectors: _Optional[int] = ..., needs_thumbnail: _Optional[_Iterable[_Union[ImageRecord, _Mapping]]] = ..., thumbnails_missing: _Optional[int] = ..., needs_text: _Optional[_Iterable[_Union[ImageRecord, _Mapping]]] = ..., text_missing: _Optional[int] = ...) -> None: ...

class IndexServiceCountRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class IndexServiceCountResponse(_message.Message):
    __slots__ = ("count", "pending")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    count: int
    pending: int
    def __init__(self, count: _Optional[int] = ..., pending: _Optional[int] = ...) -> None: ...

class IndexServiceDeleteRequest(_message.Message):
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

class IndexServiceDeleteResponse(_message.Message):
    __slots__ = ("deleted", "paths_removed")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    PATHS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    paths_removed: int
    def __init__(self, deleted: _Optional[int] = ..., paths_removed: _Optional[int] = ...) -> None: ...

class IndexServiceDropCollectionRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class IndexServiceDropCollectionResponse(_message.Message):
    __slots__ = ("dropped",)
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    dropped: bool
    def __init__(self, dropped: _Optional[bool] = ...) -> None: ...

class IndexServiceListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IndexServiceListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[_common_pb2.CollectionInfo]
    def __init__(self, collections: _Optional[_Iterable[_Union[_common_pb2.CollectionInfo, _Mapping]]] = ...) -> None: ...

class IndexServiceGetThumbnailsRequest(_message.Message):
    __slots__ = ("collection", "image_ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    image_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, collection: _Optional[str] = ..., image_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Thumbnail(_message.Message):
    __slots__ = ("image_id", "data")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    image_id: int
    data: bytes
    def __init__(self, image_id: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class IndexServiceGetThumbnailsResponse(_message.Message):
    __slots__ = ("thumbnails",)
    THUMBNAILS_FIELD_NUMBER: _ClassVar[int]
    thumbnails: _containers.RepeatedCompositeFieldContainer[Thumbnail]
    def __init__(self, thumbnails: _Optional[_Iterable[_Union[Thumbnail, _Mapping]]] = ...) -> None: ...
