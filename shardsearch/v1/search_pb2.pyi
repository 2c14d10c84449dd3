from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    METRIC_INNER_PRODUCT: _ClassVar[Metric]
    METRIC_L2: _ClassVar[Metric]

class PartialPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARTIAL_POLICY_UNSPECIFIED: _ClassVar[PartialPolicy]
    PARTIAL_POLICY_FAIL: _ClassVar[PartialPolicy]
    PARTIAL_POLICY_ALLOW: _ClassVar[PartialPolicy]

class VectorStore(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VECTOR_STORE_UNSPECIFIED: _ClassVar[VectorStore]
    VECTOR_STORE_FLOAT32: _ClassVar[VectorStore]
    VECTOR_STORE_FLOAT16: _ClassVar[VectorStore]
    VECTOR_STORE_SQ8: _ClassVar[VectorStore]

class Combine(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMBINE_UNSPECIFIED: _ClassVar[Combine]
    COMBINE_MEAN: _ClassVar[Combine]
    COMBINE_RRF: _ClassVar[Combine]
METRIC_UNSPECIFIED: Metric
METRIC_INNER_PRODUCT: Metric
METRIC_L2: Metric
PARTIAL_POLICY_UNSPECIFIED: PartialPolicy
PARTIAL_POLICY_FAIL: PartialPolicy
PARTIAL_POLICY_ALLOW: PartialPolicy
VECTOR_STORE_UNSPECIFIED: VectorStore
VECTOR_STORE_FLOAT32: VectorStore
VECTOR_STORE_FLOAT16: VectorStore
VECTOR_STORE_SQ8: VectorStore
COMBINE_UNSPECIFIED: Combine
COMBINE_MEAN: Combine
COMBINE_RRF: Combine

class IndexOptions(_message.Message):
    __slots__ = ("nlist", "pq_m", "pq_nbits", "train_threshold", "default_nprobe", "refine_factor", "vector_store")
    NLIST_FIELD_NUMBER: _ClassVar[int]
    PQ_M_FIELD_NUMBER: _ClassVar[int]
    PQ_NBITS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_NPROBE_FIELD_NUMBER: _ClassVar[int]
    REFINE_FACTOR_FIELD_NUMBER: _ClassVar[int]
    VECTOR_STORE_FIELD_NUMBER: _ClassVar[int]
    nlist: int
    pq_m: int
    pq_nbits: int
    train_threshold: int
    default_nprobe: int
    refine_factor: int
    vector_store: VectorStore
    def __init__(self, nlist: _Optional[int] = ..., pq_m: _Optional[int] = ..., pq_nbits: _Optional[int] = ..., train_threshold: _Optional[int] = ..., default_nprobe: _Optional[int] = ..., refine_factor: _Optional[int] = ..., vector_store: _Optional[_Union[VectorStore, str]] = ...) -> None: ...

class Collection(_message.Message):
    __slots__ = ("name", "dim", "metric", "index")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    metric: Metric
    index: IndexOptions
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., index: _Optional[_Union[IndexOptions, _Mapping]] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "dim", "metric", "index")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    metric: Metric
    index: IndexOptions
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., index: _Optional[_Union[IndexOptions, _Mapping]] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class DropCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[Collection]
    def __init__(self, collections: _Optional[_Iterable[_Union[Collection, _Mapping]]] = ...) -> None: ...

class DescribeCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ShardInfo(_message.Message):
    __slots__ = ("shard", "address", "vectors", "indexed_vectors", "buffered_vectors", "trained", "training", "index", "index_description", "error")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    INDEXED_VECTORS_FIELD_NUMBER: _ClassVar[int]
    BUFFERED_VECTORS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    INDEX_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    shard: str
    address: str
    vectors: int
    indexed_vectors: int
    buffered_vectors: int
    trained: bool
    training: bool
    index: IndexOptions
    index_description: str
    error: str
    def __init__(self, shard: _Optional[str] = ..., address: _Optional[str] = ..., vectors: _Optional[int] = ..., indexed_vectors: _Optional[int] = ..., buffered_vectors: _Optional[int] = ..., trained: _Optional[bool] = ..., training: _Optional[bool] = ..., index: _Optional[_Union[IndexOptions, _Mapping]] = ..., index_description: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class DescribeCollectionResponse(_message.Message):
    __slots__ = ("collection", "shards", "total_vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    shards: _containers.RepeatedCompositeFieldContainer[ShardInfo]
    total_vectors: int
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ..., shards: _Optional[_Iterable[_Union[ShardInfo, _Mapping]]] = ..., total_vectors: _Optional[int] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("id", "vector", "vector_f32", "payload", "text", "image", "fields")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    VECTOR_F32_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    vector_f32: bytes
    payload: bytes
    text: str
    image: bytes
    fields: _containers.MessageMap[str, Value]
    def __init__(self, id: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ..., vector_f32: _Optional[bytes] = ..., payload: _Optional[bytes] = ..., text: _Optional[str] = ..., image: _Optional[bytes] = ..., fields: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("keyword", "number", "keywords")
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    keyword: str
    number: float
    keywords: Keywords
    def __init__(self, keyword: _Optional[str] = ..., number: _Optional[float] = ..., keywords: _Optional[_Union[Keywords, _Mapping]] = ...) -> None: ...

class Keywords(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class Fields(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.MessageMap[str, Value]
    def __init__(self, values: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("match", "range", "all_of", "any_of", "none_of")
    MATCH_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    ALL_OF_FIELD_NUMBER: _ClassVar[int]
    ANY_OF_FIELD_NUMBER: _ClassVar[int]
    NONE_OF_FIELD_NUMBER: _ClassVar[int]
    match: Match
    range: Range
    all_of: Filters
    any_of: Filters
    none_of: Filters
    def __init__(self, match: _Optional[_Union[Match, _Mapping]] = ..., range: _Optional[_Union[Range, _Mapping]] = ..., all_of: _Optional[_Union[Filters, _Mapping]] = ..., any_of: _Optional[_Union[Filters, _Mapping]] = ..., none_of: _Optional[_Union[Filters, _Mapping]] = ...) -> None: ...

class Match(_message.Message):
    __slots__ = ("field", "values")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    field: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, field: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("field", "gt", "gte", "lt", "lte")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    GT_FIELD_NUMBER: _ClassVar[int]
    GTE_FIELD_NUMBER: _ClassVar[int]
    LT_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    field: str
    gt: float
    gte: float
    lt: float
    lte: float
    def __init__(self, field: _Optional[str] = ..., gt: _Optional[float] = ..., gte: _Optional[float] = ..., lt: _Optional[float] = ..., lte: _Optional[float] = ...) -> None: ...

class Filters(_message.Message):
    __slots__ = ("filters",)
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    filters: _containers.RepeatedCompositeFieldContainer[Filter]
    def __init__(self, filters: _Optional[_Iterable[_Union[Filter, _Mapping]]] = ...) -> None: ...

class Diversity(_message.Message):
    __slots__ = ("field", "max_per_value")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_VALUE_FIELD_NUMBER: _ClassVar[int]
    field: str
    max_per_value: int
    def __init__(self, field: _Optional[str] = ..., max_per_value: _Optional[int] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("collection", "items")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, collection: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("upserted",)
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    def __init__(self, upserted: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "vector", "k", "vector_f32", "nprobe", "partial_policy", "include_payload", "request_id", "skip_cache", "min_shards", "score_threshold", "filter", "diversity", "explain", "vectors_f32")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    VECTOR_F32_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_POLICY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SKIP_CACHE_FIELD_NUMBER: _ClassVar[int]
    MIN_SHARDS_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    VECTORS_F32_FIELD_NUMBER: _ClassVar[int]
    collection: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    k: int
    vector_f32: bytes
    nprobe: int
    partial_policy: PartialPolicy
    include_payload: bool
    request_id: str
    skip_cache: bool
    min_shards: int
    score_threshold: float
    filter: Filter
    diversity: Diversity
    explain: bool
    vectors_f32: bytes
    def __init__(self, collection: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ..., k: _Optional[int] = ..., vector_f32: _Optional[bytes] = ..., nprobe: _Optional[int] = ..., partial_policy: _Optional[_Union[PartialPolicy, str]] = ..., include_payload: _Optional[bool] = ..., request_id: _Optional[str] = ..., skip_cache: _Optional[bool] = ..., min_shards: _Optional[int] = ..., score_threshold: _Optional[float] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., diversity: _Optional[_Union[Diversity, _Mapping]] = ..., explain: _Optional[bool] = ..., vectors_f32: _Optional[bytes] = ...) -> None: ...

class Explain(_message.Message):
    __slots__ = ("cache", "merge_seconds", "shards")
    CACHE_FIELD_NUMBER: _ClassVar[int]
    MERGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    cache: str
    merge_seconds: float
    shards: _containers.RepeatedCompositeFieldContainer[ShardExplain]
    def __init__(self, cache: _Optional[str] = ..., merge_seconds: _Optional[float] = ..., shards: _Optional[_Iterable[_Union[ShardExplain, _Mapping]]] = ...) -> None: ...

class ShardExplain(_message.Message):
    __slots__ = ("shard", "address", "call_seconds", "queued_seconds", "search_seconds", "path", "nprobe", "refine_factor", "candidates", "matching", "buffered", "refine_depth", "shards_searched")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    REFINE_FACTOR_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MATCHING_FIELD_NUMBER: _ClassVar[int]
    BUFFERED_FIELD_NUMBER: _ClassVar[int]
    REFINE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    SHARDS_SEARCHED_FIELD_NUMBER: _ClassVar[int]
    shard: str
    address: str
    call_seconds: float
    queued_seconds: float
    search_seconds: float
    path: str
    nprobe: int
    refine_factor: int
    candidates: int
    matching: int
    buffered: int
    refine_depth: int
    shards_searched: int
    def __init__(self, shard: _Optional[str] = ..., address: _Optional[str] = ..., call_seconds: _Optional[float] = ..., queued_seconds: _Optional[float] = ..., search_seconds: _Optional[float] = ..., path: _Optional[str] = ..., nprobe: _Optional[int] = ..., refine_factor: _Optional[int] = ..., candidates: _Optional[int] = ..., matching: _Optional[int] = ..., buffered: _Optional[int] = ..., refine_depth: _Optional[int] = ..., shards_searched: _Optional[int] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "payload", "fields")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    payload: bytes
    fields: _containers.MessageMap[str, Value]
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., payload: _Optional[bytes] = ..., fields: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "partial", "missing_shards", "request_id", "cached", "explain")
    HITS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    partial: bool
    missing_shards: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    cached: bool
    explain: Explain
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., partial: _Optional[bool] = ..., missing_shards: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ..., cached: _Optional[bool] = ..., explain: _Optional[_Union[Explain, _Mapping]] = ...) -> None: ...

class BatchSearchRequest(_message.Message):
    __slots__ = ("collection", "vectors_f32", "vectors", "k", "nprobe", "partial_policy", "include_payload", "skip_cache", "min_shards", "score_threshold", "filter", "diversity")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    VECTORS_F32_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_POLICY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SKIP_CACHE_FIELD_NUMBER: _ClassVar[int]
    MIN_SHARDS_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    collection: str
    vectors_f32: bytes
    vectors: _containers.RepeatedScalarFieldContainer[float]
    k: int
    nprobe: int
    partial_policy: PartialPolicy
    include_payload: bool
    skip_cache: bool
    min_shards: int
    score_threshold: float
    filter: Filter
    diversity: Diversity
    def __init__(self, collection: _Optional[str] = ..., vectors_f32: _Optional[bytes] = ..., vectors: _Optional[_Iterable[float]] = ..., k: _Optional[int] = ..., nprobe: _Optional[int] = ..., partial_policy: _Optional[_Union[PartialPolicy, str]] = ..., include_payload: _Optional[bool] = ..., skip_cache: _Optional[bool] = ..., min_shards: _Optional[int] = ..., score_threshold: _Optional[float] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., diversity: _Optional[_Union[Diversity, _Mapping]] = ...) -> None: ...

class SearchByIdRequest(_message.Message):
    __slots__ = ("collection", "id", "k", "nprobe", "partial_policy", "include_payload", "skip_cache", "min_shards", "score_threshold", "request_id", "filter", "diversity")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_POLICY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SKIP_CACHE_FIELD_NUMBER: _ClassVar[int]
    MIN_SHARDS_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    collection: str
    id: str
    k: int
    nprobe: int
    partial_policy: PartialPolicy
    include_payload: bool
    skip_cache: bool
    min_shards: int
    score_threshold: float
    request_id: str
    filter: Filter
    diversity: Diversity
    def __init__(self, collection: _Optional[str] = ..., id: _Optional[str] = ..., k: _Optional[int] = ..., nprobe: _Optional[int] = ..., partial_policy: _Optional[_Union[PartialPolicy, str]] = ..., include_payload: _Optional[bool] = ..., skip_cache: _Optional[bool] = ..., min_shards: _Optional[int] = ..., score_threshold: _Optional[float] = ..., request_id: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., diversity: _Optional[_Union[Diversity, _Mapping]] = ...) -> None: ...

class WeightedQuery(_message.Message):
    __slots__ = ("vector_f32", "id", "text", "image", "weight")
    VECTOR_F32_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    vector_f32: bytes
    id: str
    text: str
    image: bytes
    weight: float
    def __init__(self, vector_f32: _Optional[bytes] = ..., id: _Optional[str] = ..., text: _Optional[str] = ..., image: _Optional[bytes] = ..., weight: _Optional[float] = ...) -> None: ...

class CombinedSearchRequest(_message.Message):
    __slots__ = ("collection", "queries", "combine", "k", "nprobe", "partial_policy", "include_payload", "skip_cache", "min_shards", "score_threshold", "request_id", "include_query_items", "filter", "diversity")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    COMBINE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_POLICY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SKIP_CACHE_FIELD_NUMBER: _ClassVar[int]
    MIN_SHARDS_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_QUERY_ITEMS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    collection: str
    queries: _containers.RepeatedCompositeFieldContainer[WeightedQuery]
    combine: Combine
    k: int
    nprobe: int
    partial_policy: PartialPolicy
    include_payload: bool
    skip_cache: bool
    min_shards: int
    score_threshold: float
    request_id: str
    include_query_items: bool
    filter: Filter
    diversity: Diversity
    def __init__(self, collection: _Optional[str] = ..., queries: _Optional[_Iterable[_Union[WeightedQuery, _Mapping]]] = ..., combine: _Optional[_Union[Combine, str]] = ..., k: _Optional[int] = ..., nprobe: _Optional[int] = ..., partial_policy: _Optional[_Union[PartialPolicy, str]] = ..., include_payload: _Optional[bool] = ..., skip_cache: _Optional[bool] = ..., min_shards: _Optional[int] = ..., score_threshold: _Optional[float] = ..., request_id: _Optional[str] = ..., include_query_items: _Optional[bool] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., diversity: _Optional[_Union[Diversity, _Mapping]] = ...) -> None: ...

class ListIdsRequest(_message.Message):
    __slots__ = ("collection", "page_size", "page_token")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    collection: str
    page_size: int
    page_token: str
    def __init__(self, collection: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListIdsResponse(_message.Message):
    __slots__ = ("ids", "next_page_token")
    IDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    next_page_token: str
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class BatchSearchResponse(_message.Message):
    __slots__ = ("results", "partial", "missing_shards")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResponse]
    partial: bool
    missing_shards: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResponse, _Mapping]]] = ..., partial: _Optional[bool] = ..., missing_shards: _Optional[_Iterable[str]] = ...) -> None: ...

class StreamSearchResponse(_message.Message):
    __slots__ = ("request_id", "response", "error_code", "error_message", "batch")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    response: SearchResponse
    error_code: int
    error_message: str
    batch: BatchSearchResponse
    def __init__(self, request_id: _Optional[str] = ..., response: _Optional[_Union[SearchResponse, _Mapping]] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ..., batch: _Optional[_Union[BatchSearchResponse, _Mapping]] = ...) -> None: ...

class SearchByTextRequest(_message.Message):
    __slots__ = ("collection", "text", "k", "nprobe", "partial_policy", "include_payload", "skip_cache", "min_shards", "score_threshold", "request_id", "filter", "diversity")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_POLICY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SKIP_CACHE_FIELD_NUMBER: _ClassVar[int]
    MIN_SHARDS_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    collection: str
    text: str
    k: int
    nprobe: int
    partial_policy: PartialPolicy
    include_payload: bool
    skip_cache: bool
    min_shards: int
    score_threshold: float
    request_id: str
    filter: Filter
    diversity: Diversity
    def __init__(self, collection: _Optional[str] = ..., text: _Optional[str] = ..., k: _Optional[int] = ..., nprobe: _Optional[int] = ..., partial_policy: _Optional[_Union[PartialPolicy, str]] = ..., include_payload: _Optional[bool] = ..., skip_cache: _Optional[bool] = ..., min_shards: _Optional[int] = ..., score_threshold: _Optional[float] = ..., request_id: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., diversity: _Optional[_Union[Diversity, _Mapping]] = ...) -> None: ...

class SearchByImageRequest(_message.Message):
    __slots__ = ("collection", "image", "k", "nprobe", "partial_policy", "include_payload", "skip_cache", "min_shards", "score_threshold", "request_id", "filter", "diversity")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_POLICY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SKIP_CACHE_FIELD_NUMBER: _ClassVar[int]
    MIN_SHARDS_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    collection: str
    image: bytes
    k: int
    nprobe: int
    partial_policy: PartialPolicy
    include_payload: bool
    skip_cache: bool
    min_shards: int
    score_threshold: float
    request_id: str
    filter: Filter
    diversity: Diversity
    def __init__(self, collection: _Optional[str] = ..., image: _Optional[bytes] = ..., k: _Optional[int] = ..., nprobe: _Optional[int] = ..., partial_policy: _Optional[_Union[PartialPolicy, str]] = ..., include_payload: _Optional[bool] = ..., skip_cache: _Optional[bool] = ..., min_shards: _Optional[int] = ..., score_threshold: _Optional[float] = ..., request_id: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., diversity: _Optional[_Union[Diversity, _Mapping]] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("texts", "images", "collection")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    collection: str
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., images: _Optional[_Iterable[bytes]] = ..., collection: _Optional[str] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("vector_f32", "cached")
    VECTOR_F32_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    vector_f32: bytes
    cached: bool
    def __init__(self, vector_f32: _Optional[bytes] = ..., cached: _Optional[bool] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("embeddings", "text_model", "image_model")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TEXT_MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_MODEL_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    text_model: str
    image_model: str
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., text_model: _Optional[str] = ..., image_model: _Optional[str] = ...) -> None: ...
