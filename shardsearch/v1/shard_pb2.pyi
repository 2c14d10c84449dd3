from shardsearch.v1 import admin_pb2 as _admin_pb2
from shardsearch.v1 import search_pb2 as _search_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RingSelection(_message.Message):
    __slots__ = ("ring", "vnodes", "owners", "buckets", "from_ring", "from_owners")
    RING_FIELD_NUMBER: _ClassVar[int]
    VNODES_FIELD_NUMBER: _ClassVar[int]
    OWNERS_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    FROM_RING_FIELD_NUMBER: _ClassVar[int]
    FROM_OWNERS_FIELD_NUMBER: _ClassVar[int]
    ring: _containers.RepeatedScalarFieldContainer[str]
    vnodes: int
    owners: _containers.RepeatedScalarFieldContainer[str]
    buckets: _containers.RepeatedScalarFieldContainer[int]
    from_ring: _containers.RepeatedScalarFieldContainer[str]
    from_owners: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ring: _Optional[_Iterable[str]] = ..., vnodes: _Optional[int] = ..., owners: _Optional[_Iterable[str]] = ..., buckets: _Optional[_Iterable[int]] = ..., from_ring: _Optional[_Iterable[str]] = ..., from_owners: _Optional[_Iterable[str]] = ...) -> None: ...

class ShardCreateCollectionRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: _search_pb2.Collection
    def __init__(self, collection: _Optional[_Union[_search_pb2.Collection, _Mapping]] = ...) -> None: ...

class ShardCreateCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: _search_pb2.Collection
    def __init__(self, collection: _Optional[_Union[_search_pb2.Collection, _Mapping]] = ...) -> None: ...

class ShardDropCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ShardDropCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShardListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShardListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[_search_pb2.Collection]
    def __init__(self, collections: _Optional[_Iterable[_Union[_search_pb2.Collection, _Mapping]]] = ...) -> None: ...

class ShardUpsertRequest(_message.Message):
    __slots__ = ("collection", "ids", "vectors_f32", "payloads", "version", "versions", "fields", "topology_version")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_F32_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_VERSION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    vectors_f32: bytes
    payloads: _containers.RepeatedScalarFieldContainer[bytes]
    version: int
    versions: _containers.RepeatedScalarFieldContainer[int]
    fields: _containers.RepeatedCompositeFieldContainer[_search_pb2.Fields]
    topology_version: int
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., vectors_f32: _Optional[bytes] = ..., payloads: _Optional[_Iterable[bytes]] = ..., version: _Optional[int] = ..., versions: _Optional[_Iterable[int]] = ..., fields: _Optional[_Iterable[_Union[_search_pb2.Fields, _Mapping]]] = ..., topology_version: _Optional[int] = ...) -> None: ...

class ShardUpsertResponse(_message.Message):
    __slots__ = ("upserted",)
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    def __init__(self, upserted: _Optional[int] = ...) -> None: ...

class ShardDeleteRequest(_message.Message):
    __slots__ = ("collection", "ids", "version", "versions", "topology_version")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_VERSION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    version: int
    versions: _containers.RepeatedScalarFieldContainer[int]
    topology_version: int
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., version: _Optional[int] = ..., versions: _Optional[_Iterable[int]] = ..., topology_version: _Optional[int] = ...) -> None: ...

class ShardDeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class ShardGetRequest(_message.Message):
    __slots__ = ("collection", "ids", "topology_version")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_VERSION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    topology_version: int
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., topology_version: _Optional[int] = ...) -> None: ...

class ShardGetResponse(_message.Message):
    __slots__ = ("ids", "vectors_f32", "payloads", "fields")
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_F32_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    vectors_f32: bytes
    payloads: _containers.RepeatedScalarFieldContainer[bytes]
    fields: _containers.RepeatedCompositeFieldContainer[_search_pb2.Fields]
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., vectors_f32: _Optional[bytes] = ..., payloads: _Optional[_Iterable[bytes]] = ..., fields: _Optional[_Iterable[_Union[_search_pb2.Fields, _Mapping]]] = ...) -> None: ...

class ShardSearchRequest(_message.Message):
    __slots__ = ("collection", "queries_f32", "n", "k", "nprobe", "include_payload", "filter", "include_fields", "topology_version", "explain", "shards", "shards_searched")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERIES_F32_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELDS_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_SEARCHED_FIELD_NUMBER: _ClassVar[int]
    collection: str
    queries_f32: bytes
    n: int
    k: int
    nprobe: int
    include_payload: bool
    filter: _search_pb2.Filter
    include_fields: bool
    topology_version: int
    explain: bool
    shards: int
    shards_searched: int
    def __init__(self, collection: _Optional[str] = ..., queries_f32: _Optional[bytes] = ..., n: _Optional[int] = ..., k: _Optional[int] = ..., nprobe: _Optional[int] = ..., include_payload: _Optional[bool] = ..., filter: _Optional[_Union[_search_pb2.Filter, _Mapping]] = ..., include_fields: _Optional[bool] = ..., topology_version: _Optional[int] = ..., explain: _Optional[bool] = ..., shards: _Optional[int] = ..., shards_searched: _Optional[int] = ...) -> None: ...

class ShardSearchResponse(_message.Message):
    __slots__ = ("n", "k", "ids", "scores_f32", "payloads", "fields", "explain")
    N_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_F32_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    n: int
    k: int
    ids: _containers.RepeatedScalarFieldContainer[str]
    scores_f32: bytes
    payloads: _containers.RepeatedScalarFieldContainer[bytes]
    fields: _containers.RepeatedCompositeFieldContainer[_search_pb2.Fields]
    explain: _search_pb2.ShardExplain
    def __init__(self, n: _Optional[int] = ..., k: _Optional[int] = ..., ids: _Optional[_Iterable[str]] = ..., scores_f32: _Optional[bytes] = ..., payloads: _Optional[_Iterable[bytes]] = ..., fields: _Optional[_Iterable[_Union[_search_pb2.Fields, _Mapping]]] = ..., explain: _Optional[_Union[_search_pb2.ShardExplain, _Mapping]] = ...) -> None: ...

class ShardSearchStreamRequest(_message.Message):
    __slots__ = ("tag", "request", "timeout_s", "request_id")
    TAG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    tag: int
    request: ShardSearchRequest
    timeout_s: float
    request_id: str
    def __init__(self, tag: _Optional[int] = ..., request: _Optional[_Union[ShardSearchRequest, _Mapping]] = ..., timeout_s: _Optional[float] = ..., request_id: _Optional[str] = ...) -> None: ...

class ShardSearchStreamResponse(_message.Message):
    __slots__ = ("tag", "response", "code", "message")
    TAG_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    tag: int
    response: ShardSearchResponse
    code: int
    message: str
    def __init__(self, tag: _Optional[int] = ..., response: _Optional[_Union[ShardSearchResponse, _Mapping]] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ShardListIdsRequest(_message.Message):
    __slots__ = ("collection", "after", "resume", "limit", "topology_version", "select")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    after: int
    resume: bool
    limit: int
    topology_version: int
    select: RingSelection
    def __init__(self, collection: _Optional[str] = ..., after: _Optional[int] = ..., resume: _Optional[bool] = ..., limit: _Optional[int] = ..., topology_version: _Optional[int] = ..., select: _Optional[_Union[RingSelection, _Mapping]] = ...) -> None: ...

class ShardListIdsResponse(_message.Message):
    __slots__ = ("ids", "next_after", "more")
    IDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    next_after: int
    more: bool
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., next_after: _Optional[int] = ..., more: _Optional[bool] = ...) -> None: ...

class ShardStatsRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class ShardStatsResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: _search_pb2.ShardInfo
    def __init__(self, info: _Optional[_Union[_search_pb2.ShardInfo, _Mapping]] = ...) -> None: ...

class ShardExportRequest(_message.Message):
    __slots__ = ("collection", "chunk_items", "select")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ITEMS_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    chunk_items: int
    select: RingSelection
    def __init__(self, collection: _Optional[str] = ..., chunk_items: _Optional[int] = ..., select: _Optional[_Union[RingSelection, _Mapping]] = ...) -> None: ...

class ShardExportChunk(_message.Message):
    __slots__ = ("collection", "items", "deletes")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DELETES_FIELD_NUMBER: _ClassVar[int]
    collection: _search_pb2.Collection
    items: ShardUpsertRequest
    deletes: ShardDeleteRequest
    def __init__(self, collection: _Optional[_Union[_search_pb2.Collection, _Mapping]] = ..., items: _Optional[_Union[ShardUpsertRequest, _Mapping]] = ..., deletes: _Optional[_Union[ShardDeleteRequest, _Mapping]] = ...) -> None: ...

class ShardResyncRequest(_message.Message):
    __slots__ = ("reason", "missed_version")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MISSED_VERSION_FIELD_NUMBER: _ClassVar[int]
    reason: str
    missed_version: int
    def __init__(self, reason: _Optional[str] = ..., missed_version: _Optional[int] = ...) -> None: ...

class ShardResyncResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShardGetTopologyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShardGetTopologyResponse(_message.Message):
    __slots__ = ("topology", "shard")
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    topology: _admin_pb2.Topology
    shard: str
    def __init__(self, topology: _Optional[_Union[_admin_pb2.Topology, _Mapping]] = ..., shard: _Optional[str] = ...) -> None: ...

class ShardSetTopologyRequest(_message.Message):
    __slots__ = ("topology", "shard", "replaces")
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    REPLACES_FIELD_NUMBER: _ClassVar[int]
    topology: _admin_pb2.Topology
    shard: str
    replaces: _admin_pb2.Topology
    def __init__(self, topology: _Optional[_Union[_admin_pb2.Topology, _Mapping]] = ..., shard: _Optional[str] = ..., replaces: _Optional[_Union[_admin_pb2.Topology, _Mapping]] = ...) -> None: ...

class ShardSetTopologyResponse(_message.Message):
    __slots__ = ("dropped",)
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    dropped: int
    def __init__(self, dropped: _Optional[int] = ...) -> None: ...

class ShardChecksumRequest(_message.Message):
    __slots__ = ("collection", "select", "topology_version")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_VERSION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    select: RingSelection
    topology_version: int
    def __init__(self, collection: _Optional[str] = ..., select: _Optional[_Union[RingSelection, _Mapping]] = ..., topology_version: _Optional[int] = ...) -> None: ...

class ShardChecksumResponse(_message.Message):
    __slots__ = ("counts", "sums")
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    SUMS_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.RepeatedScalarFieldContainer[int]
    sums: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, counts: _Optional[_Iterable[int]] = ..., sums: _Optional[_Iterable[int]] = ...) -> None: ...

class ShardRetrainRequest(_message.Message):
    __slots__ = ("collection", "force")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    force: bool
    def __init__(self, collection: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class ShardRetrainStatusRequest(_message.Message):
    __slots__ = ("collection", "measure")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MEASURE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    measure: bool
    def __init__(self, collection: _Optional[str] = ..., measure: _Optional[bool] = ...) -> None: ...

class ShardRetrainResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _admin_pb2.RetrainStatus
    def __init__(self, status: _Optional[_Union[_admin_pb2.RetrainStatus, _Mapping]] = ...) -> None: ...
