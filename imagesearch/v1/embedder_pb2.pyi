from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Image(_message.Message):
    __slots__ = ("name", "data", "text")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    text: str
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ..., text: _Optional[str] = ...) -> None: ...

class EmbedderServiceEmbedRequest(_message.Message):
    __slots__ = ("images", "thumbnail_px", "rotations", "text_vectors")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_PX_FIELD_NUMBER: _ClassVar[int]
    ROTATIONS_FIELD_NUMBER: _ClassVar[int]
    TEXT_VECTORS_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    thumbnail_px: int
    rotations: bool
    text_vectors: bool
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., thumbnail_px: _Optional[int] = ..., rotations: _Optional[bool] = ..., text_vectors: _Optional[bool] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("name", "vector", "error", "error_code", "width", "height", "thumbnail", "rotated_vectors", "text_vector")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    ROTATED_VECTORS_FIELD_NUMBER: _ClassVar[int]
    TEXT_VECTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    vector: bytes
    error: str
    error_code: int
    width: int
    height: int
    thumbnail: bytes
    rotated_vectors: _containers.RepeatedScalarFieldContainer[bytes]
    text_vector: bytes
    def __init__(self, name: _Optional[str] = ..., vector: _Optional[bytes] = ..., error: _Optional[str] = ..., error_code: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., thumbnail: _Optional[bytes] = ..., rotated_vectors: _Optional[_Iterable[bytes]] = ..., text_vector: _Optional[bytes] = ...) -> None: ...

class EmbedderServiceEmbedResponse(_message.Message):
    __slots__ = ("embeddings", "model_id")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    model_id: str
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., model_id: _Optional[str] = ...) -> None: ...

class EmbedderServiceGetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EmbedderServiceGetModelInfoResponse(_message.Message):
    __slots__ = ("model", "dim", "weights", "weights_digest", "device", "dtype", "pretrained", "pooling", "model_id", "max_batch", "max_pixels", "image_size", "note", "max_message_bytes", "max_image_bytes", "decode_pixel_budget", "composes", "text_dim", "text_model_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    PRETRAINED_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_PIXELS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DECODE_PIXEL_BUDGET_FIELD_NUMBER: _ClassVar[int]
    COMPOSES_FIELD_NUMBER: _ClassVar[int]
    TEXT_DIM_FIELD_NUMBER: _ClassVar[int]
    TEXT_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    dim: int
    weights: str
    weights_digest: str
    device: str
    dtype: str
    pretrained: bool
    pooling: str
    model_id: str
    max_batch: int
    max_pixels: int
    image_size: int
    note: str
    max_message_bytes: int
    max_image_bytes: int
    decode_pixel_budget: int
    composes: bool
    text_dim: int
    text_model_id: str
    def __init__(self, model: _Optional[str] = ..., dim: _Optional[int] = ..., weights: _Optional[str] = ..., weights_digest: _Optional[str] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., pretrained: _Optional[bool] = ..., pooling: _Optional[str] = ..., model_id: _Optional[str] = ..., max_batch: _Optional[int] = ..., max_pixels: _Optional[int] = ..., image_size: _Optional[int] = ..., note: _Optional[str] = ..., max_message_bytes: _Optional[int] = ..., max_image_bytes: _Optional[int] = ..., decode_pixel_budget: _Optional[int] = ..., composes: _Optional[bool] = ..., text_dim: _Optional[int] = ..., text_model_id: _Optional[str] = ...) -> None: ...

class EmbedderServiceEmbedTextRequest(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...

class EmbedderServiceEmbedTextResponse(_message.Message):
    __slots__ = ("vectors", "text_model_id")
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    TEXT_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    vectors: _containers.RepeatedScalarFieldContainer[bytes]
    text_model_id: str
    def __init__(self, vectors: _Optional[_Iterable[bytes]] = ..., text_model_id: _Optional[str] = ...) -> None: ...
