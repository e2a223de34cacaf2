from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class CollectionInfo(_message.Message):
    __slots__ = ("name", "model", "dim", "metric", "index_type", "count", "pending", "composes", "text_model", "text_dim")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_TYPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    COMPOSES_FIELD_NUMBER: _ClassVar[int]
    TEXT_MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_DIM_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    dim: int
    metric: str
    index_type: str
    count: int
    pending: int
    composes: bool
    text_model: str
    text_dim: int
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[str] = ..., index_type: _Optional[str] = ..., count: _Optional[int] = ..., pending: _Optional[int] = ..., composes: _Optional[bool] = ..., text_model: _Optional[str] = ..., text_dim: _Optional[int] = ...) -> None: ...
