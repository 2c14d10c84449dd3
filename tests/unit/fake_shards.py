"""Fake shard replicas for unit tests of the coordinator's shard pool and what drives it (tests/unit/test_shard_pool.py,
tests/unit/test_resharder.py).

The fakes stand in for grpc.aio channels under the generated stubs: messages cross them serialized (the real
shard_pb2 types), failures are `grpc.aio.AioRpcError`s with real status codes, and a call's timeout ends it with
DEADLINE_EXCEEDED (the handler is cancelled, as a server's would be). A server-streaming call (ExportCollection) is
answered by the replica's `stream` method."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

from shardsearch.coordinator.shards import Replication, ShardMetrics, ShardPool
from shardsearch.v1 import admin_pb2, shard_pb2

Handler = Callable[[Any], Awaitable[Message | None]]
"""How a fake replica answers one method: raise, wait, or return a response (None: what a healthy replica answers)."""

_METHODS = shard_pb2.DESCRIPTOR.services_by_name["ShardService"].methods_by_name


def _message_type(name: str) -> type[Message]:
    return getattr(shard_pb2, name)


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    """The error grpc.aio raises for a call that ended with `code`."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details or code.name)


def failing(code: grpc.StatusCode, details: str = "") -> Handler:
    async def handler(request: Any) -> None:
        raise rpc_error(code, details)

    return handler


def hanging(until: asyncio.Event | None = None) -> Handler:
    """Waits for `until` (for ever by default: until the call's deadline or its cancellation), then answers."""

    async def handler(request: Any) -> None:
        await (until or asyncio.Event()).wait()

    return handler


def first_call(handler: Handler) -> Handler:
    """`handler` for the first call made through this (shared by several replicas: whichever is asked first);
    later calls are answered normally."""
    calls = 0

    async def first(request: Any) -> Message | None:
        nonlocal calls
        calls += 1
        return await handler(request) if calls == 1 else None

    return first


class FakeReplica:
    """One shard replica: records every request it receives and answers as `on` says, else as a healthy one."""

    def __init__(self, address: str, log: list[tuple[str, str]]) -> None:
        self.address = address
        self.shard = address.rsplit("-r", 1)[0]
        self.topology = admin_pb2.Topology()
        """The ring layout it stores: requests routed by an older version are refused (ABORTED)."""
        self.on: dict[str, Handler] = {}
        self.received: list[tuple[str, Any]] = []
        self.cancelled: list[str] = []
        self.knows_streams = True
        """False: an older shard, which answers SearchStream with UNIMPLEMENTED."""
        self.stream_opens = 0
        self._log = log

    def requests(self, method: str) -> list[Any]:
        return [request for name, request in self.received if name == method]

    async def handle(self, method: str, request: Any) -> Message:
        self.received.append((method, request))
        self._log.append((self.address, method))
        try:
            handler = self.on.get(method)
            response = await handler(request) if handler is not None else None
            return response if response is not None else self.serve(method, request)
        except asyncio.CancelledError:
            self.cancelled.append(method)
            raise

    def check_layout(self, request: Any) -> None:
        """Refuses a request routed by an older layout than the one this replica stores (ABORTED), as shards do."""
        version = getattr(request, "topology_version", 0)
        if version and version < self.topology.version:
            raise rpc_error(grpc.StatusCode.ABORTED, f"routed by ring layout {version}, but shard {self.shard} has "
                            f"layout {self.topology.version}; re-read the layout and send the request again")

    def serve(self, method: str, request: Any) -> Message:
        """What a healthy replica with this layout answers."""
        self.check_layout(request)
        if method == "Get":
            return shard_pb2.ShardGetResponse(ids=request.ids)
        if method == "Search":
            return shard_pb2.ShardSearchResponse(n=request.n, k=request.k, ids=[self.address] * (request.n * request.k))
        if method == "Upsert":
            return shard_pb2.ShardUpsertResponse(upserted=len(request.ids))
        if method == "Delete":
            return shard_pb2.ShardDeleteResponse(deleted=len(request.ids))
        if method == "GetTopology":
            return shard_pb2.ShardGetTopologyResponse(topology=self.topology, shard=self.shard)
        return _message_type(_METHODS[method].output_type.name)()

    async def stream(self, method: str, request: Any) -> AsyncIterator[Message]:
        """A server-streaming call: not served by this replica (a subclass may)."""
        self.received.append((method, request))
        self._log.append((self.address, method))
        raise rpc_error(grpc.StatusCode.UNIMPLEMENTED, "not faked")
        yield  # an async generator


class FakeChannel:
    """What the generated ShardServiceStub asks of a grpc.aio.Channel, connected to one fake replica."""

    def __init__(self, replica: FakeReplica) -> None:
        self.replica = replica
        self.closed = False

    def unary_unary(self, path: str, request_serializer: Callable[[Any], bytes],
                    response_deserializer: Callable[[bytes], Any], **_: Any) -> Callable[..., Awaitable[Any]]:
        method = path.rsplit("/", 1)[1]
        request_type = _message_type(_METHODS[method].input_type.name)
        response_type = _message_type(_METHODS[method].output_type.name)

        async def call(request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
            wire = request_serializer(request)  # a request of another type fails here, as it would in grpc
            try:
                async with asyncio.timeout(timeout):
                    response = await self.replica.handle(method, request_type.FromString(wire))
            except TimeoutError:
                raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
            assert isinstance(response, response_type), (method, response)
            return response_deserializer(response.SerializeToString())

        return call

    def unary_stream(self, path: str, request_serializer: Callable[[Any], bytes],
                     response_deserializer: Callable[[bytes], Any], **_: Any) -> Callable[..., Any]:
        method = path.rsplit("/", 1)[1]
        request_type = _message_type(_METHODS[method].input_type.name)

        def call(request: Any, timeout: float | None = None, metadata: Any = None) -> AsyncIterator[Any]:
            wire = request_serializer(request)

            async def answers() -> AsyncIterator[Any]:
                async for response in self.replica.stream(method, request_type.FromString(wire)):
                    yield response_deserializer(response.SerializeToString())

            return answers()

        return call

    def stream_stream(self, path: str, request_serializer: Callable[[Any], bytes],
                      response_deserializer: Callable[[bytes], Any], **_: Any) -> Callable[[], FakeStreamCall]:
        assert path.endswith("/SearchStream")

        def call() -> FakeStreamCall:
            self.replica.stream_opens += 1
            return FakeStreamCall(self.replica, request_serializer, response_deserializer)

        return call

    async def close(self) -> None:
        self.closed = True


class FakeStreamCall:
    """A SearchStream call: each message written is served as a Search, its answer (or status) sent back by tag."""

    def __init__(self, replica: FakeReplica, serialize: Callable[[Any], bytes],
                 deserialize: Callable[[bytes], Any]) -> None:
        self._replica = replica
        self._serialize = serialize
        self._deserialize = deserialize
        self._replies: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._serving: set[asyncio.Task[None]] = set()
        self._done = False

    async def write(self, message: Any) -> None:
        if self._done:
            raise asyncio.InvalidStateError("RPC already finished.")
        request = shard_pb2.ShardSearchStreamRequest.FromString(self._serialize(message))
        if self._replica.knows_streams:
            task = asyncio.create_task(self._serve(request))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    async def _serve(self, message: shard_pb2.ShardSearchStreamRequest) -> None:
        reply = shard_pb2.ShardSearchStreamResponse(tag=message.tag)
        try:
            async with asyncio.timeout(message.timeout_s or None):
                reply.response.CopyFrom(await self._replica.handle("Search", message.request))
        except TimeoutError:
            reply.code, reply.message = grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "Deadline Exceeded"
        except grpc.aio.AioRpcError as exc:
            reply.code, reply.message = exc.code().value[0], exc.details() or ""
        self._replies.put_nowait(reply.SerializeToString())

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._read()

    async def _read(self) -> AsyncIterator[Any]:
        if not self._replica.knows_streams:
            raise rpc_error(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        while (reply := await self._replies.get()) is not None:
            yield self._deserialize(reply)

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK if self._replica.knows_streams else grpc.StatusCode.UNIMPLEMENTED

    def cancel(self) -> bool:
        self._done = True
        for task in self._serving:
            task.cancel()
        self._replies.put_nowait(None)
        return True


class FakeCluster:
    """Fake replicas by address, dialled through `channel`, and the one pool under test."""

    def __init__(self) -> None:
        self.replicas: dict[str, FakeReplica] = {}
        self.log: list[tuple[str, str]] = []
        """(address, method) of every request, in the order the replicas received them."""
        self.registry = CollectorRegistry()
        self.under_test: ShardPool | None = None

    def replica(self, address: str) -> FakeReplica:
        if address not in self.replicas:
            self.replicas[address] = FakeReplica(address, self.log)
        return self.replicas[address]

    def shard(self, name: str, replicas: int) -> list[FakeReplica]:
        return [self.replica(f"{name}-r{i}:50061") for i in range(replicas)]

    def channel(self, address: str) -> Any:
        return FakeChannel(self.replica(address))

    def pool(self, shards: dict[str, int], replication: Replication | None = None, *, streams: bool = False,
             clock: Callable[[], int] = lambda: 1_000) -> ShardPool:
        assert self.under_test is None, "one pool per cluster (its metrics are registered once)"
        layout = [(name, [r.address for r in self.shard(name, n)]) for name, n in shards.items()]
        self.under_test = ShardPool(layout, ShardMetrics(self.registry), channel_factory=self.channel,
                               replication=replication or Replication(), clock=clock, search_streams=streams)
        return self.under_test

    def called(self, method: str) -> list[str]:
        """Addresses that received `method`, in order."""
        return [address for address, name in self.log if name == method]

    def metric(self, name: str, shard: str = "s0", **labels: str) -> float:
        return self.registry.get_sample_value(name, {"shard": shard, **labels}) or 0.0

    async def close(self) -> None:
        if self.under_test is not None:
            await self.under_test.close()


async def until(condition: Callable[[], bool], timeout: float = 1.0) -> None:
    """Waits for background work (a resync) to reach `condition`; fails after `timeout`."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)
