from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("node_id", "tier", "protocol", "home", "run")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    HOME_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    tier: str
    protocol: int
    home: str
    run: str
    def __init__(self, node_id: _Optional[str] = ..., tier: _Optional[str] = ..., protocol: _Optional[int] = ..., home: _Optional[str] = ..., run: _Optional[str] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("kind", "call_id", "seq", "last", "data", "hello", "report", "run")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        HELLO: _ClassVar[Frame.Kind]
        CHUNK: _ClassVar[Frame.Kind]
        ERROR: _ClassVar[Frame.Kind]
        PEER_REQUEST: _ClassVar[Frame.Kind]
        PEER_REPLY: _ClassVar[Frame.Kind]
        PEER_ERROR: _ClassVar[Frame.Kind]
    HELLO: Frame.Kind
    CHUNK: Frame.Kind
    ERROR: Frame.Kind
    PEER_REQUEST: Frame.Kind
    PEER_REPLY: Frame.Kind
    PEER_ERROR: Frame.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    kind: Frame.Kind
    call_id: int
    seq: int
    last: bool
    data: bytes
    hello: Hello
    report: Report
    run: str
    def __init__(self, kind: _Optional[_Union[Frame.Kind, str]] = ..., call_id: _Optional[int] = ..., seq: _Optional[int] = ..., last: _Optional[bool] = ..., data: _Optional[bytes] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., report: _Optional[_Union[Report, _Mapping]] = ..., run: _Optional[str] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("node_id", "seq", "sums", "maxima", "handler_s")
    class SumsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class MaximaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SUMS_FIELD_NUMBER: _ClassVar[int]
    MAXIMA_FIELD_NUMBER: _ClassVar[int]
    HANDLER_S_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    seq: int
    sums: _containers.ScalarMap[str, float]
    maxima: _containers.ScalarMap[str, float]
    handler_s: float
    def __init__(self, node_id: _Optional[str] = ..., seq: _Optional[int] = ..., sums: _Optional[_Mapping[str, float]] = ..., maxima: _Optional[_Mapping[str, float]] = ..., handler_s: _Optional[float] = ...) -> None: ...
