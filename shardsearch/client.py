"""A typed Python client for shardsearch's public API (`SearchService`): `Client` (blocking) and `AsyncClient`.

Numpy in, numpy or small result objects out; no protobuf to write by hand::

    from shardsearch.client import Client, match, number_range, all_of

    with Client("localhost:50051") as client:
        client.create_collection("photos", dim=512, metric="ip")
        client.upsert("photos", ids, vectors, payloads=payloads, fields=[{"kind": "cat", "year": 2021}, ...])
        hits = client.search("photos", query, k=10, filter=all_of(match("kind", "cat"), number_range("year", gte=2020)))
        batches = client.search("photos", queries)  # a matrix: BatchSearch, split to fit the server's limits

Channels get the defaults a caller would otherwise get wrong: message limits that fit the largest answer the server
sends (64 MiB, not gRPC's 4 MiB receive default), keepalive, a deadline on every call, transparent retries of
UNAVAILABLE and RESOURCE_EXHAUSTED with jittered exponential backoff through gRPC's service config (the same JSON,
SERVICE_CONFIG, serves Go and Java callers: docs/service_config.json), and client-side round-robin over every
address a `dns:///` target resolves to (a headless Service). TLS, mutual TLS and bearer tokens are keyword
arguments. Failures raise one small exception tree keyed by gRPC status (NotFound, InvalidArgument, Unavailable,
...) carrying the server's message.

The client imports grpc, numpy and the generated messages only (no FAISS, tritonclient or Pillow).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Mapping, Sequence, Union

import grpc
import numpy as np

from shardsearch.v1 import search_pb2, search_pb2_grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT_S = 10.0
UPSERT_BATCH = 1000
MAX_QUERIES_PER_CALL = 1000
MAX_HITS_PER_CALL = 1_000_000  # the server's limit on queries x k in one BatchSearch

SERVICE_CONFIG: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": "shardsearch.v1.SearchService"}],
        "retryPolicy": {
            "maxAttempts": 4,
            "initialBackoff": "0.05s",
            "maxBackoff": "1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
        },
    }],
}
"""gRPC service config: round-robin over resolved addresses, and retries with jittered backoff (gRPC jitters
each backoff by +-20%). Retried calls are the idempotent ones: searches, reads, and writes (versioned upserts and
deletes apply once however often they arrive)."""

FieldValue = Union[str, float, int, Sequence[str]]


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES, retries: bool = True) -> list[tuple[str, Any]]:
    """The options every client channel gets (see the module docstring); without `retries` a failed call fails at
    once (what a benchmark or a tool with its own retry policy wants), still round-robin over resolved addresses."""
    config = SERVICE_CONFIG if retries else {"loadBalancingConfig": SERVICE_CONFIG["loadBalancingConfig"]}
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.enable_retries", 1 if retries else 0),
        ("grpc.service_config", json.dumps(config)),
    ]


# ---- errors ---------------------------------------------------------------------------------------------------


class ClientError(Exception):
    """A call failed: `code` is its gRPC status, `details` the server's message."""

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(details)
        self.details = details
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"


class InvalidArgument(ClientError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ClientError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ClientError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(ClientError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ClientError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(ClientError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(ClientError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ClientError):
    code = grpc.StatusCode.ABORTED


class Unavailable(ClientError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ClientError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class DataLoss(ClientError):
    code = grpc.StatusCode.DATA_LOSS


class Internal(ClientError):
    code = grpc.StatusCode.INTERNAL


_ERRORS: dict[grpc.StatusCode, type[ClientError]] = {
    cls.code: cls for cls in (InvalidArgument, NotFound, AlreadyExists, PermissionDenied, Unauthenticated,
                              ResourceExhausted, FailedPrecondition, Aborted, Unavailable, DeadlineExceeded,
                              DataLoss, Internal)
}


def error_from(exc: grpc.RpcError) -> ClientError:
    """The ClientError for a failed call (its subclass by status; ClientError itself for the others)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or code.name
    return _ERRORS.get(code, ClientError)(details, code)


# ---- results and filters --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    """Inner product (larger is better) or squared L2 distance (smaller is better), by the collection's metric."""
    payload: bytes = b""
    fields: dict[str, FieldValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Item:
    id: str
    vector: np.ndarray
    payload: bytes = b""
    fields: dict[str, FieldValue] = field(default_factory=dict)


def match(name: str, *values: str) -> search_pb2.Filter:
    """Field `name` (a keyword, or a keyword list) holds one of `values`."""
    return search_pb2.Filter(match=search_pb2.Match(field=name, values=list(values)))


def number_range(name: str, *, gt: float | None = None, gte: float | None = None, lt: float | None = None,
                 lte: float | None = None) -> search_pb2.Filter:
    """Number field `name` within the given bounds (each optional)."""
    bounds = {key: value for key, value in (("gt", gt), ("gte", gte), ("lt", lt), ("lte", lte)) if value is not None}
    return search_pb2.Filter(range=search_pb2.Range(field=name, **bounds))


def all_of(*filters: search_pb2.Filter) -> search_pb2.Filter:
    return search_pb2.Filter(all_of=search_pb2.Filters(filters=list(filters)))


def any_of(*filters: search_pb2.Filter) -> search_pb2.Filter:
    return search_pb2.Filter(any_of=search_pb2.Filters(filters=list(filters)))


def none_of(*filters: search_pb2.Filter) -> search_pb2.Filter:
    return search_pb2.Filter(none_of=search_pb2.Filters(filters=list(filters)))


def to_value(value: FieldValue) -> search_pb2.Value:
    if isinstance(value, bool):
        raise TypeError("a field value is a str, a number or a list of str, not a bool")
    if isinstance(value, str):
        return search_pb2.Value(keyword=value)
    if isinstance(value, (int, float)):
        return search_pb2.Value(number=float(value))
    return search_pb2.Value(keywords=search_pb2.Keywords(values=list(value)))


def from_value(value: search_pb2.Value) -> FieldValue:
    kind = value.WhichOneof("kind")
    if kind == "keyword":
        return value.keyword
    if kind == "number":
        return value.number
    return list(value.keywords.values)


def _fields(values: Mapping[str, search_pb2.Value]) -> dict[str, FieldValue]:
    return {name: from_value(value) for name, value in values.items()}


def _hits(response: search_pb2.SearchResponse) -> list[Hit]:
    return [Hit(h.id, h.score, h.payload, _fields(h.fields)) for h in response.hits]


def _matrix(vectors: Any) -> np.ndarray:
    array = np.ascontiguousarray(vectors, dtype="<f4")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"vectors: expected one vector or a matrix, got shape {array.shape}")
    return array


# ---- requests (shared by both clients) ------------------------------------------------------------------------

METRICS = {"l2": search_pb2.METRIC_L2, "ip": search_pb2.METRIC_INNER_PRODUCT,
           "inner_product": search_pb2.METRIC_INNER_PRODUCT}


VECTOR_STORES = {"float32": search_pb2.VECTOR_STORE_FLOAT32, "float16": search_pb2.VECTOR_STORE_FLOAT16,
                 "sq8": search_pb2.VECTOR_STORE_SQ8}


def _create(name: str, dim: int, metric: str, vector_store: str | None,
            index: Mapping[str, int]) -> search_pb2.CreateCollectionRequest:
    if metric not in METRICS:
        raise ValueError(f"metric: one of {', '.join(METRICS)}")
    options = search_pb2.IndexOptions()
    for option, value in index.items():
        if option == "vector_store" or option not in search_pb2.IndexOptions.DESCRIPTOR.fields_by_name:
            raise ValueError(f"{option}: not an index option")
        setattr(options, option, value)
    if vector_store is not None:
        if vector_store not in VECTOR_STORES:
            raise ValueError(f"vector_store: one of {', '.join(VECTOR_STORES)}")
        options.vector_store = VECTOR_STORES[vector_store]
    return search_pb2.CreateCollectionRequest(name=name, dim=dim, metric=METRICS[metric], index=options)


def _upserts(collection: str, ids: Sequence[str], vectors: Any, payloads: Sequence[bytes] | None,
             fields: Sequence[Mapping[str, FieldValue]] | None, batch: int) -> Iterator[search_pb2.UpsertRequest]:
    matrix = _matrix(vectors)
    if len(ids) != matrix.shape[0]:
        raise ValueError(f"{len(ids)} ids for {matrix.shape[0]} vectors")
    for name, given in (("payloads", payloads), ("fields", fields)):
        if given is not None and len(given) != len(ids):
            raise ValueError(f"{name}: {len(given)} for {len(ids)} ids")
    item_bytes = matrix.shape[1] * 4 + 300 + max((len(p) for p in payloads or ()), default=0) + 16_384 * bool(fields)
    step = max(1, min(batch, (MAX_MESSAGE_BYTES // 2) // item_bytes))  # ids <= 256 bytes, fields <= 16 KiB
    for lo in range(0, len(ids), step):
        items = []
        for i in range(lo, min(len(ids), lo + step)):
            item = search_pb2.Item(id=ids[i], vector_f32=matrix[i].tobytes())
            if payloads is not None:
                item.payload = payloads[i]
            if fields is not None:
                for key, value in fields[i].items():
                    item.fields[key].CopyFrom(to_value(value))
            items.append(item)
        yield search_pb2.UpsertRequest(collection=collection, items=items)


def _search_options(k: int, filter: search_pb2.Filter | None, nprobe: int, include_payload: bool,
                    skip_cache: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"k": k, "nprobe": nprobe, "include_payload": include_payload, "skip_cache": skip_cache}
    if filter is not None:
        options["filter"] = filter
    return options


def _batches(collection: str, queries: np.ndarray, options: dict[str, Any]) -> Iterator[search_pb2.BatchSearchRequest]:
    step = max(1, min(MAX_QUERIES_PER_CALL, MAX_HITS_PER_CALL // max(1, options["k"])))
    for lo in range(0, queries.shape[0], step):
        yield search_pb2.BatchSearchRequest(collection=collection, vectors_f32=queries[lo : lo + step].tobytes(),
                                            **options)


def _items(response: search_pb2.GetResponse) -> list[Item]:
    out = []
    for item in response.items:
        vector = np.frombuffer(item.vector_f32, dtype="<f4") if item.vector_f32 else np.asarray(item.vector, "<f4")
        out.append(Item(item.id, vector, item.payload, _fields(item.fields)))
    return out


# ---- channels --------------------------------------------------------------------------------------------------


class SettingsError(ValueError):
    """Connection settings that cannot work (a certificate without its key, an unreadable file); names the setting
    or the path, never a file's contents."""


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"cannot read {what} file {path!r}: {exc.strerror or type(exc).__name__}") from None
    if not data.strip():
        raise SettingsError(f"{what} file {path!r} is empty")
    return data


def read_token(path: str) -> str:
    """The first token of a token file (a line is `<token> [role]`: shardsearch.security's format)."""
    data = _read(path, "token")
    assert data is not None
    return data.split()[0].decode("ascii", "replace")


@dataclass(frozen=True)
class _Security:
    credentials: grpc.ChannelCredentials | None
    metadata: tuple[tuple[str, str], ...]
    options: list[tuple[str, Any]]


def _security(tls: bool, ca_file: str | None, cert_file: str | None, key_file: str | None, server_name: str | None,
              token: str | None, token_file: str | None, options: Sequence[tuple[str, Any]] | None,
              retries: bool) -> _Security:
    if bool(cert_file) != bool(key_file):
        raise SettingsError("a client certificate needs both its certificate and its key file")
    if token_file:
        token = read_token(token_file)
    secure = tls or bool(ca_file or cert_file)
    if server_name and not secure:
        raise SettingsError("a TLS server name needs TLS (a CA file, a client certificate or tls)")
    credentials = None
    if secure:
        credentials = grpc.ssl_channel_credentials(_read(ca_file, "TLS CA"), _read(key_file, "TLS client key"),
                                                   _read(cert_file, "TLS client certificate"))
    opts = channel_options(retries=retries) + list(options or ())
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    metadata = ((AUTH_HEADER, f"Bearer {token}"),) if token else ()
    return _Security(credentials, metadata, opts)


AUTH_HEADER = "authorization"


class _BearerToken:
    """Adds the token to an asyncio call's metadata. An interceptor, not call credentials: grpc Python runs a
    call-credentials plugin on a new thread for every RPC (1.4-3x fewer calls/s than an interceptor at 32
    concurrent calls, measured on 2 shared cores; an interceptor costs about what passing the metadata by hand
    does), and refuses call credentials on plaintext channels."""

    def __init__(self, token: str | bytes) -> None:
        self._header = (AUTH_HEADER, "Bearer " + (token.decode("ascii") if isinstance(token, bytes) else token))

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(details.method, details.timeout,
                                          grpc.aio.Metadata(*(details.metadata or ()), self._header),
                                          details.credentials, details.wait_for_ready)

    def __repr__(self) -> str:  # never the token
        return f"{type(self).__name__}(<redacted>)"


class _UnaryUnaryToken(_BearerToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: grpc.aio.ClientCallDetails,
                                    request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStreamToken(_BearerToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: grpc.aio.ClientCallDetails,
                                     request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnaryToken(_BearerToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: grpc.aio.ClientCallDetails,
                                     request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


class _StreamStreamToken(_BearerToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: grpc.aio.ClientCallDetails,
                                      request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


def token_interceptors(token: str | bytes) -> list[grpc.aio.ClientInterceptor]:
    """grpc.aio interceptors sending `authorization: Bearer <token>` with every call (one per call kind: grpc.aio
    files each interceptor under one kind only)."""
    return [kind(token) for kind in (_UnaryUnaryToken, _UnaryStreamToken, _StreamUnaryToken, _StreamStreamToken)]


class _Base:
    """The channel and the call defaults."""

    def __init__(
        self, target: str, *, timeout: float = DEFAULT_TIMEOUT_S, tls: bool = False, ca_file: str | None = None,
        cert_file: str | None = None, key_file: str | None = None, server_name: str | None = None,
        token: str | None = None, token_file: str | None = None, options: Sequence[tuple[str, Any]] | None = None,
        retries: bool = True,
    ) -> None:
        """`target`: "host:port", or "dns:///name:port" to round-robin over every address it resolves to; TLS when
        `tls` or a CA or client certificate is given (mutual TLS with `cert_file` and `key_file`); `token` (or the
        first token of `token_file`) is sent as a bearer token; every call takes `timeout` seconds unless told;
        `retries` False turns gRPC's retries off (see channel_options); `options` are added to the channel's.
        Settings that cannot work raise SettingsError (a ValueError) naming them."""
        self.target = target
        self.timeout = timeout
        sec = _security(tls, ca_file, cert_file, key_file, server_name, token, token_file, options, retries)
        self._metadata = sec.metadata
        self._channel = self._connect(target, sec)
        self._stub = search_pb2_grpc.SearchServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def _connect(self, target: str, sec: _Security) -> Any:
        raise NotImplementedError

    def _deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout


class Client(_Base):
    """Blocking client (see _Base.__init__ for the connection settings)."""

    _channel: grpc.Channel

    def _connect(self, target: str, sec: _Security) -> grpc.Channel:
        if sec.credentials is None:
            return grpc.insecure_channel(target, sec.options)
        return grpc.secure_channel(target, sec.credentials, sec.options)

    @property
    def channel(self) -> grpc.Channel:
        """The underlying channel, for calls the client does not wrap (AdminService, say); pass `metadata` with
        each (the bearer token)."""
        return self._channel

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def wait_ready(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Waits until the channel is connected; Unavailable if it is not within `timeout` seconds."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise Unavailable(f"could not connect to {self.target} within {timeout:g} s") from None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from(exc) from None

    def create_collection(self, name: str, dim: int, metric: str = "l2", *, vector_store: str | None = None,
                          timeout: float | None = None, **index: int) -> search_pb2.Collection:
        """`vector_store`: "float32" (the default), "float16" or "sq8" (memory against precision: see the
        VectorStore enum). `index`: IndexOptions fields (nlist, pq_m, pq_nbits, train_threshold, default_nprobe,
        refine_factor)."""
        response: search_pb2.CreateCollectionResponse = self._call(
            "CreateCollection", _create(name, dim, metric, vector_store, index), timeout)
        return response.collection

    def drop_collection(self, name: str, *, timeout: float | None = None) -> None:
        self._call("DropCollection", search_pb2.DropCollectionRequest(name=name), timeout)

    def list_collections(self, *, timeout: float | None = None) -> list[search_pb2.Collection]:
        return list(self._call("ListCollections", search_pb2.ListCollectionsRequest(), timeout).collections)

    def describe(self, name: str, *, timeout: float | None = None) -> search_pb2.DescribeCollectionResponse:
        response: search_pb2.DescribeCollectionResponse = self._call(
            "DescribeCollection", search_pb2.DescribeCollectionRequest(name=name), timeout)
        return response

    def upsert(self, collection: str, ids: Sequence[str], vectors: Any, *, payloads: Sequence[bytes] | None = None,
               fields: Sequence[Mapping[str, FieldValue]] | None = None, batch_size: int = UPSERT_BATCH,
               timeout: float | None = None) -> int:
        """Writes the items in chunks (of `batch_size`, and within the message limit); returns how many."""
        return sum(self._call("Upsert", request, timeout).upserted
                   for request in _upserts(collection, ids, vectors, payloads, fields, batch_size))

    def search(self, collection: str, vectors: Any, k: int = 10, *, filter: search_pb2.Filter | None = None,
               nprobe: int = 0, include_payload: bool = False, skip_cache: bool = False,
               timeout: float | None = None) -> Any:
        """One vector: its hits (list[Hit]). A matrix: one list of hits per row (BatchSearch, in several calls if
        the rows or rows x k pass what one call may carry)."""
        options = _search_options(k, filter, nprobe, include_payload, skip_cache)
        queries = _matrix(vectors)
        if np.ndim(vectors) == 1:
            request = search_pb2.SearchRequest(collection=collection, vector_f32=queries[0].tobytes(), **options)
            return _hits(self._call("Search", request, timeout))
        return [_hits(result) for request in _batches(collection, queries, options)
                for result in self._call("BatchSearch", request, timeout).results]

    def search_by_id(self, collection: str, item_id: str, k: int = 10, *, filter: search_pb2.Filter | None = None,
                     nprobe: int = 0, include_payload: bool = False, timeout: float | None = None) -> list[Hit]:
        request = search_pb2.SearchByIdRequest(collection=collection, id=item_id,
                                               **_search_options(k, filter, nprobe, include_payload, False))
        return _hits(self._call("SearchById", request, timeout))

    def search_text(self, collection: str, text: str, k: int = 10, *, filter: search_pb2.Filter | None = None,
                    include_payload: bool = False, timeout: float | None = None) -> list[Hit]:
        request = search_pb2.SearchByTextRequest(collection=collection, text=text,
                                                 **_search_options(k, filter, 0, include_payload, False))
        return _hits(self._call("SearchByText", request, timeout))

    def search_image(self, collection: str, image: bytes, k: int = 10, *, filter: search_pb2.Filter | None = None,
                     include_payload: bool = False, timeout: float | None = None) -> list[Hit]:
        request = search_pb2.SearchByImageRequest(collection=collection, image=image,
                                                  **_search_options(k, filter, 0, include_payload, False))
        return _hits(self._call("SearchByImage", request, timeout))

    def get(self, collection: str, ids: Sequence[str], *, timeout: float | None = None) -> list[Item]:
        """The items that exist, in request order (vectors as float32)."""
        return _items(self._call("Get", search_pb2.GetRequest(collection=collection, ids=list(ids)), timeout))

    def delete(self, collection: str, ids: Sequence[str], *, timeout: float | None = None) -> int:
        """Returns how many of the ids existed."""
        return int(self._call("Delete", search_pb2.DeleteRequest(collection=collection, ids=list(ids)), timeout).deleted)

    def list_ids(self, collection: str, *, page_size: int = 1000, timeout: float | None = None) -> Iterator[str]:
        """Every id of the collection, a page at a time (each page one call)."""
        for ids, _ in self.list_id_pages(collection, page_size=page_size, timeout=timeout):
            yield from ids

    def list_id_pages(self, collection: str, *, page_size: int = 1000, page_token: str = "",
                      timeout: float | None = None) -> Iterator[tuple[list[str], str]]:
        """(ids, token after them) per page, from `page_token` on: a listing can be resumed from any token."""
        token = page_token
        while True:
            page = self._call("ListIds", search_pb2.ListIdsRequest(collection=collection, page_size=page_size,
                                                                   page_token=token), timeout)
            token = page.next_page_token
            yield list(page.ids), token
            if not token:
                return


class AsyncClient(_Base):
    """`Client` for asyncio: the same methods, awaited (`list_ids` is an async iterator)."""

    _channel: grpc.aio.Channel

    def _connect(self, target: str, sec: _Security) -> grpc.aio.Channel:
        interceptors = token_interceptors(sec.metadata[0][1].removeprefix("Bearer ")) if sec.metadata else None
        if sec.credentials is None:
            return grpc.aio.insecure_channel(target, sec.options, interceptors=interceptors)
        return grpc.aio.secure_channel(target, sec.credentials, sec.options, interceptors=interceptors)

    @property
    def channel(self) -> grpc.aio.Channel:
        """The underlying channel, for calls the client does not wrap (AdminService, pre-serialized requests); it
        sends the bearer token with every call itself."""
        return self._channel

    async def wait_ready(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Waits until the channel is connected; Unavailable if it is not within `timeout` seconds."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            raise Unavailable(f"could not connect to {self.target} within {timeout:g} s") from None

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        try:
            return await getattr(self._stub, method)(request, timeout=self._deadline(timeout))  # token: interceptor
        except grpc.RpcError as exc:
            raise error_from(exc) from None

    async def create_collection(self, name: str, dim: int, metric: str = "l2", *, vector_store: str | None = None,
                                timeout: float | None = None, **index: int) -> search_pb2.Collection:
        response: search_pb2.CreateCollectionResponse = await self._call(
            "CreateCollection", _create(name, dim, metric, vector_store, index), timeout)
        return response.collection

    async def drop_collection(self, name: str, *, timeout: float | None = None) -> None:
        await self._call("DropCollection", search_pb2.DropCollectionRequest(name=name), timeout)

    async def list_collections(self, *, timeout: float | None = None) -> list[search_pb2.Collection]:
        return list((await self._call("ListCollections", search_pb2.ListCollectionsRequest(), timeout)).collections)

    async def describe(self, name: str, *, timeout: float | None = None) -> search_pb2.DescribeCollectionResponse:
        response: search_pb2.DescribeCollectionResponse = await self._call(
            "DescribeCollection", search_pb2.DescribeCollectionRequest(name=name), timeout)
        return response

    async def upsert(self, collection: str, ids: Sequence[str], vectors: Any, *,
                     payloads: Sequence[bytes] | None = None, fields: Sequence[Mapping[str, FieldValue]] | None = None,
                     batch_size: int = UPSERT_BATCH, timeout: float | None = None) -> int:
        total = 0
        for request in _upserts(collection, ids, vectors, payloads, fields, batch_size):
            total += (await self._call("Upsert", request, timeout)).upserted
        return total

    async def search(self, collection: str, vectors: Any, k: int = 10, *, filter: search_pb2.Filter | None = None,
                     nprobe: int = 0, include_payload: bool = False, skip_cache: bool = False,
                     timeout: float | None = None) -> Any:
        options = _search_options(k, filter, nprobe, include_payload, skip_cache)
        queries = _matrix(vectors)
        if np.ndim(vectors) == 1:
            request = search_pb2.SearchRequest(collection=collection, vector_f32=queries[0].tobytes(), **options)
            return _hits(await self._call("Search", request, timeout))
        out: list[list[Hit]] = []
        for batch in _batches(collection, queries, options):
            out.extend(_hits(result) for result in (await self._call("BatchSearch", batch, timeout)).results)
        return out

    async def search_by_id(self, collection: str, item_id: str, k: int = 10, *,
                           filter: search_pb2.Filter | None = None, nprobe: int = 0, include_payload: bool = False,
                           timeout: float | None = None) -> list[Hit]:
        request = search_pb2.SearchByIdRequest(collection=collection, id=item_id,
                                               **_search_options(k, filter, nprobe, include_payload, False))
        return _hits(await self._call("SearchById", request, timeout))

    async def get(self, collection: str, ids: Sequence[str], *, timeout: float | None = None) -> list[Item]:
        return _items(await self._call("Get", search_pb2.GetRequest(collection=collection, ids=list(ids)), timeout))

    async def delete(self, collection: str, ids: Sequence[str], *, timeout: float | None = None) -> int:
        response = await self._call("Delete", search_pb2.DeleteRequest(collection=collection, ids=list(ids)), timeout)
        return int(response.deleted)

    async def list_ids(self, collection: str, *, page_size: int = 1000,
                       timeout: float | None = None) -> AsyncIterator[str]:
        token = ""
        while True:
            page = await self._call("ListIds", search_pb2.ListIdsRequest(
                collection=collection, page_size=page_size, page_token=token), timeout)
            for item_id in page.ids:
                yield item_id
            token = page.next_page_token
            if not token:
                return


__all__ = [
    "AsyncClient", "Client", "ClientError", "Hit", "Item", "SERVICE_CONFIG", "SettingsError", "all_of", "any_of",
    "channel_options", "error_from", "match", "none_of", "number_range", "read_token", "token_interceptors", *(cls.__name__ for cls in _ERRORS.values()),
]
