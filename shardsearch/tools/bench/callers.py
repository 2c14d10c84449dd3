"""The three ways a benchmark calls SearchService, behind one signature: serialized request in, SearchResponses out.

Every caller takes pre-serialized bytes (no request serializer on the multicallables) and spreads calls round-robin
over its channels. A failed call raises CallFailed with the gRPC status code name, whichever way it failed.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import AsyncIterator, Protocol, Sequence

import grpc

from shardsearch.v1 import search_pb2

SERVICE = "/shardsearch.v1.SearchService/"
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_REQUEST_ID_TAG = bytes((search_pb2.SearchRequest.DESCRIPTOR.fields_by_name["request_id"].number << 3 | 2,))


class CallFailed(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class Caller(Protocol):
    async def __call__(self, payload: bytes) -> Sequence[search_pb2.SearchResponse]: ...

    async def close(self) -> None: ...


def with_request_id(payload: bytes, request_id: str) -> bytes:
    """Sets request_id on a serialized SearchRequest without parsing it: a field appended to a message overrides it."""
    encoded = request_id.encode()
    if len(encoded) > 127:
        raise ValueError("request_id longer than a one-byte length prefix")
    return payload + _REQUEST_ID_TAG + bytes((len(encoded),)) + encoded


class UnaryCaller:
    """Search (one query per call) or BatchSearch (many per call, answered or failed as a whole)."""

    def __init__(self, channels: Sequence[grpc.aio.Channel], timeout: float | None, batch: bool = False) -> None:
        method, reply = ("BatchSearch", search_pb2.BatchSearchResponse) if batch else ("Search", search_pb2.SearchResponse)
        self._calls = itertools.cycle([
            ch.unary_unary(SERVICE + method, response_deserializer=reply.FromString) for ch in channels
        ])
        self._timeout = timeout
        self._batch = batch

    async def __call__(self, payload: bytes) -> Sequence[search_pb2.SearchResponse]:
        try:
            reply = await next(self._calls)(payload, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise CallFailed(exc.code().name) from None
        return reply.results if self._batch else (reply,)

    async def close(self) -> None:
        pass


class _Stream:
    """One StreamSearch call: requests are queued to gRPC's writer, answers matched back by request_id.

    When the call fails, everything in flight on it fails with its status code and `failed` turns true.
    """

    def __init__(self, open_stream: grpc.aio.StreamStreamMultiCallable) -> None:
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future[search_pb2.StreamSearchResponse]] = {}
        self.failed = False
        self._call = open_stream(self._requests())
        self._reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[bytes]:
        while (payload := await self._outbox.get()) is not None:
            yield payload

    async def _read(self) -> None:
        code = "UNKNOWN"  # if the server ends the stream with requests unanswered
        try:
            async for reply in self._call:
                future = self._pending.pop(reply.request_id, None)
                if future is not None and not future.done():
                    future.set_result(reply)
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        self.failed = True
        self._outbox.put_nowait(None)  # ends the request generator, so gRPC's writer task finishes too
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CallFailed(code))
        self._pending.clear()

    async def request(self, request_id: str, payload: bytes,
                      timeout: float | None) -> Sequence[search_pb2.SearchResponse]:
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._outbox.put_nowait(with_request_id(payload, request_id))
        try:
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._pending.pop(request_id, None)
            raise CallFailed("DEADLINE_EXCEEDED") from None
        if reply.error_code:
            raise CallFailed(CODE_NAMES.get(reply.error_code, str(reply.error_code)))
        return reply.batch.results if reply.HasField("batch") else (reply.response,)

    async def close(self, grace: float) -> None:
        """Half-closes the stream and waits for the server to finish it; cancels it after `grace` seconds."""
        self._outbox.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), grace)
        except TimeoutError:
            self._call.cancel()
            await self._reader


class StreamCaller:
    """StreamSearch over `streams` long-lived bidi calls spread over the channels; a message is one query, or several
    (SearchRequest.vectors_f32: the `stream-batch` call), answered as a whole.

    A stream that fails is replaced on its next request, so a run rides through a coordinator restart (the failed
    messages are counted). The timeout is enforced by the client per message: a stream has one deadline for its life.
    """

    def __init__(self, channels: Sequence[grpc.aio.Channel], streams: int, timeout: float | None) -> None:
        self._open = [
            channels[i % len(channels)].stream_stream(
                SERVICE + "StreamSearch", response_deserializer=search_pb2.StreamSearchResponse.FromString
            )
            for i in range(streams)
        ]
        self._streams = [_Stream(open_stream) for open_stream in self._open]
        self._slots = itertools.cycle(range(streams))
        self._ids = itertools.count()
        self._timeout = timeout

    async def __call__(self, payload: bytes) -> Sequence[search_pb2.SearchResponse]:
        slot = next(self._slots)
        if self._streams[slot].failed:
            self._streams[slot] = _Stream(self._open[slot])
        return await self._streams[slot].request(str(next(self._ids)), payload, self._timeout)

    async def close(self) -> None:
        await asyncio.gather(*(stream.close(grace=5.0) for stream in self._streams))
