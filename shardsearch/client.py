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
from typing import Any, AsyncIterator, Iterator, Mapping, Sequence

import grpc
import numpy as np

from shardsearch.client_channels import (
    AUTH_HEADER,
    SERVICE_CONFIG,
    Security,
    SettingsError,
    channel_options,
    read_token,
    security_of,
    token_interceptors,
)
from shardsearch.client_errors import (
    Aborted,
    AlreadyExists,
    ClientError,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    error_from,
)
from shardsearch.client_messages import (
    MAX_HITS_PER_CALL,
    MAX_MESSAGE_BYTES,
    MAX_QUERIES_PER_CALL,
    METRICS,
    UPSERT_BATCH,
    VECTOR_STORES,
    FieldValue,
    Hit,
    Item,
    all_of,
    any_of,
    batch_requests,
    create_request,
    from_value,
    hits_of,
    items_of,
    match,
    matrix_of,
    none_of,
    number_range,
    search_options,
    to_value,
    upsert_requests,
)
from shardsearch.v1 import search_pb2, search_pb2_grpc

__all__ = [
    "AUTH_HEADER", "DEFAULT_TIMEOUT_S", "MAX_HITS_PER_CALL", "MAX_MESSAGE_BYTES", "MAX_QUERIES_PER_CALL", "METRICS",
    "SERVICE_CONFIG", "UPSERT_BATCH", "VECTOR_STORES", "Aborted", "AlreadyExists", "AsyncClient", "Client",
    "ClientError", "DataLoss", "DeadlineExceeded", "FailedPrecondition", "FieldValue", "Hit", "Internal",
    "InvalidArgument", "Item", "NotFound", "PermissionDenied", "ResourceExhausted", "SettingsError", "Unauthenticated",
    "Unavailable", "all_of", "any_of", "channel_options", "error_from", "from_value", "match", "none_of",
    "number_range", "read_token", "to_value", "token_interceptors",
]

DEFAULT_TIMEOUT_S = 10.0


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
        sec = security_of(tls, ca_file, cert_file, key_file, server_name, token, token_file, options, retries)
        self._metadata = sec.metadata
        self._channel = self._connect(target, sec)
        self._stub = search_pb2_grpc.SearchServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def _connect(self, target: str, sec: Security) -> Any:
        raise NotImplementedError

    def _deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout


class Client(_Base):
    """Blocking client (see _Base.__init__ for the connection settings)."""

    _channel: grpc.Channel

    def _connect(self, target: str, sec: Security) -> grpc.Channel:
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
            "CreateCollection", create_request(name, dim, metric, vector_store, index), timeout)
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
                   for request in upsert_requests(collection, ids, vectors, payloads, fields, batch_size))

    def search(self, collection: str, vectors: Any, k: int = 10, *, filter: search_pb2.Filter | None = None,
               nprobe: int = 0, include_payload: bool = False, skip_cache: bool = False,
               timeout: float | None = None) -> Any:
        """One vector: its hits (list[Hit]). A matrix: one list of hits per row (BatchSearch, in several calls if
        the rows or rows x k pass what one call may carry)."""
        options = search_options(k, filter, nprobe, include_payload, skip_cache)
        queries = matrix_of(vectors)
        if np.ndim(vectors) == 1:
            request = search_pb2.SearchRequest(collection=collection, vector_f32=queries[0].tobytes(), **options)
            return hits_of(self._call("Search", request, timeout))
        return [hits_of(result) for request in batch_requests(collection, queries, options)
                for result in self._call("BatchSearch", request, timeout).results]

    def search_by_id(self, collection: str, item_id: str, k: int = 10, *, filter: search_pb2.Filter | None = None,
                     nprobe: int = 0, include_payload: bool = False, timeout: float | None = None) -> list[Hit]:
        request = search_pb2.SearchByIdRequest(collection=collection, id=item_id,
                                               **search_options(k, filter, nprobe, include_payload, False))
        return hits_of(self._call("SearchById", request, timeout))

    def search_text(self, collection: str, text: str, k: int = 10, *, filter: search_pb2.Filter | None = None,
                    include_payload: bool = False, timeout: float | None = None) -> list[Hit]:
        request = search_pb2.SearchByTextRequest(collection=collection, text=text,
                                                 **search_options(k, filter, 0, include_payload, False))
        return hits_of(self._call("SearchByText", request, timeout))

    def search_image(self, collection: str, image: bytes, k: int = 10, *, filter: search_pb2.Filter | None = None,
                     include_payload: bool = False, timeout: float | None = None) -> list[Hit]:
        request = search_pb2.SearchByImageRequest(collection=collection, image=image,
                                                  **search_options(k, filter, 0, include_payload, False))
        return hits_of(self._call("SearchByImage", request, timeout))

    def get(self, collection: str, ids: Sequence[str], *, timeout: float | None = None) -> list[Item]:
        """The items that exist, in request order (vectors as float32)."""
        return items_of(self._call("Get", search_pb2.GetRequest(collection=collection, ids=list(ids)), timeout))

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

    def _connect(self, target: str, sec: Security) -> grpc.aio.Channel:
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
            "CreateCollection", create_request(name, dim, metric, vector_store, index), timeout)
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
        for request in upsert_requests(collection, ids, vectors, payloads, fields, batch_size):
            total += (await self._call("Upsert", request, timeout)).upserted
        return total

    async def search(self, collection: str, vectors: Any, k: int = 10, *, filter: search_pb2.Filter | None = None,
                     nprobe: int = 0, include_payload: bool = False, skip_cache: bool = False,
                     timeout: float | None = None) -> Any:
        options = search_options(k, filter, nprobe, include_payload, skip_cache)
        queries = matrix_of(vectors)
        if np.ndim(vectors) == 1:
            request = search_pb2.SearchRequest(collection=collection, vector_f32=queries[0].tobytes(), **options)
            return hits_of(await self._call("Search", request, timeout))
        out: list[list[Hit]] = []
        for batch in batch_requests(collection, queries, options):
            out.extend(hits_of(result) for result in (await self._call("BatchSearch", batch, timeout)).results)
        return out

    async def search_by_id(self, collection: str, item_id: str, k: int = 10, *,
                           filter: search_pb2.Filter | None = None, nprobe: int = 0, include_payload: bool = False,
                           timeout: float | None = None) -> list[Hit]:
        request = search_pb2.SearchByIdRequest(collection=collection, id=item_id,
                                               **search_options(k, filter, nprobe, include_payload, False))
        return hits_of(await self._call("SearchById", request, timeout))

    async def get(self, collection: str, ids: Sequence[str], *, timeout: float | None = None) -> list[Item]:
        return items_of(await self._call("Get", search_pb2.GetRequest(collection=collection, ids=list(ids)), timeout))

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
