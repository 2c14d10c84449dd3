from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ShardSpec(_message.Message):
    __slots__ = ("name", "addresses")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    name: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class Topology(_message.Message):
    __slots__ = ("version", "shards", "vnodes", "move")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    VNODES_FIELD_NUMBER: _ClassVar[int]
    MOVE_FIELD_NUMBER: _ClassVar[int]
    version: int
    shards: _containers.RepeatedCompositeFieldContainer[ShardSpec]
    vnodes: int
    move: Move
    def __init__(self, version: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[ShardSpec, _Mapping]]] = ..., vnodes: _Optional[int] = ..., move: _Optional[_Union[Move, _Mapping]] = ...) -> None: ...

class Move(_message.Message):
    __slots__ = ("kind", "shard", "phase", "from_shards", "started_unix_ms", "ranges", "error", "finished_unix_ms")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Move.Kind]
        KIND_ADD: _ClassVar[Move.Kind]
        KIND_REMOVE: _ClassVar[Move.Kind]
    KIND_UNSPECIFIED: Move.Kind
    KIND_ADD: Move.Kind
    KIND_REMOVE: Move.Kind
    class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PHASE_UNSPECIFIED: _ClassVar[Move.Phase]
        PHASE_COPYING: _ClassVar[Move.Phase]
        PHASE_SWITCHED: _ClassVar[Move.Phase]
    PHASE_UNSPECIFIED: Move.Phase
    PHASE_COPYING: Move.Phase
    PHASE_SWITCHED: Move.Phase
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    FROM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    kind: Move.Kind
    shard: str
    phase: Move.Phase
    from_shards: _containers.RepeatedCompositeFieldContainer[ShardSpec]
    started_unix_ms: int
    ranges: _containers.RepeatedCompositeFieldContainer[MoveRange]
    error: str
    finished_unix_ms: int
    def __init__(self, kind: _Optional[_Union[Move.Kind, str]] = ..., shard: _Optional[str] = ..., phase: _Optional[_Union[Move.Phase, str]] = ..., from_shards: _Optional[_Iterable[_Union[ShardSpec, _Mapping]]] = ..., started_unix_ms: _Optional[int] = ..., ranges: _Optional[_Iterable[_Union[MoveRange, _Mapping]]] = ..., error: _Optional[str] = ..., finished_unix_ms: _Optional[int] = ...) -> None: ...

class MoveRange(_message.Message):
    __slots__ = ("collection", "source", "target", "copied", "items", "verified", "mismatched_rounds")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    COPIED_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    MISMATCHED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    source: str
    target: str
    copied: int
    items: int
    verified: bool
    mismatched_rounds: int
    def __init__(self, collection: _Optional[str] = ..., source: _Optional[str] = ..., target: _Optional[str] = ..., copied: _Optional[int] = ..., items: _Optional[int] = ..., verified: _Optional[bool] = ..., mismatched_rounds: _Optional[int] = ...) -> None: ...

class GetTopologyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AddShardRequest(_message.Message):
    __slots__ = ("shard",)
    SHARD_FIELD_NUMBER: _ClassVar[int]
    shard: ShardSpec
    def __init__(self, shard: _Optional[_Union[ShardSpec, _Mapping]] = ...) -> None: ...

class RemoveShardRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ResumeMoveRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RetrainRequest(_message.Message):
    __slots__ = ("collection", "shards", "force")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    shards: _containers.RepeatedScalarFieldContainer[str]
    force: bool
    def __init__(self, collection: _Optional[str] = ..., shards: _Optional[_Iterable[str]] = ..., force: _Optional[bool] = ...) -> None: ...

class GetRetrainStatusRequest(_message.Message):
    __slots__ = ("collection", "measure")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MEASURE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    measure: bool
    def __init__(self, collection: _Optional[str] = ..., measure: _Optional[bool] = ...) -> None: ...

class RetrainResponse(_message.Message):
    __slots__ = ("shards",)
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedCompositeFieldContainer[ShardRetrainStatus]
    def __init__(self, shards: _Optional[_Iterable[_Union[ShardRetrainStatus, _Mapping]]] = ...) -> None: ...

class ShardRetrainStatus(_message.Message):
    __slots__ = ("shard", "error", "status")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    shard: str
    error: str
    status: RetrainStatus
    def __init__(self, shard: _Optional[str] = ..., error: _Optional[str] = ..., status: _Optional[_Union[RetrainStatus, _Mapping]] = ...) -> None: ...

class RetrainStatus(_message.Message):
    __slots__ = ("state", "due", "reasons", "trained_on", "added_since_training", "list_imbalance", "estimated_recall", "estimated_at_unix_ms", "last")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[RetrainStatus.State]
        STATE_IDLE: _ClassVar[RetrainStatus.State]
        STATE_TRAINING: _ClassVar[RetrainStatus.State]
        STATE_EVALUATING: _ClassVar[RetrainStatus.State]
    STATE_UNSPECIFIED: RetrainStatus.State
    STATE_IDLE: RetrainStatus.State
    STATE_TRAINING: RetrainStatus.State
    STATE_EVALUATING: RetrainStatus.State
    STATE_FIELD_NUMBER: _ClassVar[int]
    DUE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_ON_FIELD_NUMBER: _ClassVar[int]
    ADDED_SINCE_TRAINING_FIELD_NUMBER: _ClassVar[int]
    LIST_IMBALANCE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_RECALL_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    state: RetrainStatus.State
    due: bool
    reasons: _containers.RepeatedScalarFieldContainer[str]
    trained_on: int
    added_since_training: int
    list_imbalance: float
    estimated_recall: float
    estimated_at_unix_ms: int
    last: RetrainOutcome
    def __init__(self, state: _Optional[_Union[RetrainStatus.State, str]] = ..., due: _Optional[bool] = ..., reasons: _Optional[_Iterable[str]] = ..., trained_on: _Optional[int] = ..., added_since_training: _Optional[int] = ..., list_imbalance: _Optional[float] = ..., estimated_recall: _Optional[float] = ..., estimated_at_unix_ms: _Optional[int] = ..., last: _Optional[_Union[RetrainOutcome, _Mapping]] = ...) -> None: ...

class RetrainOutcome(_message.Message):
    __slots__ = ("finished_unix_ms", "promoted", "recall_before", "recall_after", "duration_s", "trained_on", "reason")
    FINISHED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    RECALL_BEFORE_FIELD_NUMBER: _ClassVar[int]
    RECALL_AFTER_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    TRAINED_ON_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    finished_unix_ms: int
    promoted: bool
    recall_before: float
    recall_after: float
    duration_s: float
    trained_on: int
    reason: str
    def __init__(self, finished_unix_ms: _Optional[int] = ..., promoted: _Optional[bool] = ..., recall_before: _Optional[float] = ..., recall_after: _Optional[float] = ..., duration_s: _Optional[float] = ..., trained_on: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...
