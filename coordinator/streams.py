"""Searches to one shard replica over one long-lived `ShardService.SearchStream` call, multiplexed by tag.

A unary call costs grpc.aio a call set-up, metadata, a status and several event-loop hand-offs at both ends; a
message on an open stream costs about half of that (measured on 2 cores: ~240 vs ~490 us of server CPU per search,
~230 vs ~290 us of client CPU, and twice the sequential rate). Each search keeps what a unary call had: its own
deadline (sent in the message and enforced here), request id, status code and message.

The stream is opened on the first search and again after it fails; a failure of the stream fails the searches in
flight on it with its status (UNAVAILABLE when the replica went away), so fail-over and hedging see what a unary
call would have shown. A replica that does not know SearchStream (UNIMPLEMENTED: an older shard during a rolling
upgrade) is searched with unary calls, and offered a stream again a minute later (it may have been upgraded).

grpc.aio can lose a stream's status: when a write meets a call the server has already ended, it overwrites the
status with INTERNAL "Internal error from Core", and the reader may see that in place of the server's UNIMPLEMENTED.
A stream that ends so before it answered anything raises StreamFailed with `status_lost`: the caller asks again with
a unary call, whose status is never lost (an older shard answers it; a dead one fails it as UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

import grpc

from shardsearch import logs
from shardsearch.v1 import shard_pb2, shard_pb2_grpc

logger = logging.getLogger(__name__)


class StreamFailed(Exception):
    """A search over the stream ended with a status other than OK (the search's own, or the stream's)."""

    def __init__(self, code: grpc.StatusCode, details: str, status_lost: bool = False) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.status_lost = status_lost
        """The stream ended under a write before answering anything, and grpc.aio replaced its status: ask with a
        unary call to learn it."""


_CODES = {code.value[0]: code for code in grpc.StatusCode}
CORE_WRITE_ERROR = "Internal error from Core"  # grpc.aio's status for a call that ended while a write was under way
BROKEN = "the search stream to the shard broke"
UNARY_FOR_S = 60.0  # how long a replica that answered UNIMPLEMENTED is searched with unary calls before a new stream

Answer = asyncio.Future["shard_pb2.ShardSearchStreamResponse | StreamFailed"]


class SearchStream:
    def __init__(self, stub: shard_pb2_grpc.ShardServiceStub, unary_for_s: float = UNARY_FOR_S) -> None:
        self._stub = stub
        self._call: Any = None
        self._answered = False  # the current call has delivered a reply
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, Answer] = {}
        self._tags = itertools.count(1)
        self._write = asyncio.Lock()  # grpc.aio allows one write at a time on a call
        self._unary_for_s = unary_for_s
        self._unary_until = 0.0

    @property
    def supported(self) -> bool:
        """False for a while after the replica answered UNIMPLEMENTED: use unary Search."""
        return time.monotonic() >= self._unary_until

    async def search(self, request: shard_pb2.ShardSearchRequest, timeout: float) -> shard_pb2.ShardSearchResponse:
        """The replica's answer, or StreamFailed with the status a unary Search would have ended with."""
        loop = asyncio.get_running_loop()
        tag = next(self._tags)
        answer: Answer = loop.create_future()
        self._pending[tag] = answer
        expire = loop.call_later(max(timeout, 0.001), _expire, answer)
        try:
            message = shard_pb2.ShardSearchStreamRequest(
                tag=tag, request=request, timeout_s=timeout, request_id=logs.current_request_id()
            )
            async with self._write:
                call = self._open()
                try:
                    await call.write(message)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    # A write fails only once the call is over, with INTERNAL "Internal error from Core" whatever
                    # ended it (the shard went away, mostly: UNAVAILABLE), unless the call's status is UNIMPLEMENTED
                    # (an older shard): that must be seen even when it arrives before the reader reports it.
                    code, details = await _final_status(call)
                    if code == grpc.StatusCode.UNIMPLEMENTED:
                        details = "SearchStream is not implemented"
                    elif not (code == grpc.StatusCode.INTERNAL and details == CORE_WRITE_ERROR):  # that one: lost
                        code, details = grpc.StatusCode.UNAVAILABLE, BROKEN
                    self._failed(call, code, details)
            reply = await answer
        finally:
            expire.cancel()
            self._pending.pop(tag, None)
        if isinstance(reply, StreamFailed):
            raise reply
        if reply.code:
            raise StreamFailed(_CODES.get(reply.code, grpc.StatusCode.UNKNOWN), reply.message)
        return reply.response

    def _open(self) -> Any:
        if self._call is None:
            self._call = self._stub.SearchStream()
            self._answered = False
            self._reader = asyncio.create_task(self._read(self._call), name="shard search stream reader")
        return self._call

    async def _read(self, call: Any) -> None:
        try:
            async for reply in call:
                if call is self._call:
                    self._answered = True
                answer = self._pending.get(reply.tag)
                if answer is not None and not answer.done():
                    answer.set_result(reply)
            self._failed(call, grpc.StatusCode.UNAVAILABLE, "the shard ended the search stream")  # it is stopping
        except asyncio.CancelledError:
            self._failed(call, grpc.StatusCode.UNAVAILABLE, "the search stream was closed")
            raise
        except grpc.aio.AioRpcError as exc:
            self._failed(call, exc.code(), exc.details() or "")

    def _failed(self, call: Any, code: grpc.StatusCode, details: str) -> None:
        """The stream is over: the searches in flight on it fail with its status; the next search opens a new one."""
        if self._call is not call:
            return
        self._call = None
        lost = code == grpc.StatusCode.INTERNAL and details == CORE_WRITE_ERROR
        if code == grpc.StatusCode.OK or lost:
            code = grpc.StatusCode.UNAVAILABLE  # the call ended under a write: the shard went away, mostly
            details = BROKEN if lost else details
        details = details or code.name
        if code == grpc.StatusCode.UNIMPLEMENTED:
            self._unary_until = time.monotonic() + self._unary_for_s
            logger.info("this shard does not know SearchStream: searching it with unary calls")
        failure = StreamFailed(code, details, status_lost=lost and not self._answered)
        for answer in list(self._pending.values()):
            if not answer.done():
                answer.set_result(failure)
        call.cancel()

    async def close(self) -> None:
        call, reader = self._call, self._reader
        self._call = None
        if call is not None:
            call.cancel()
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def _final_status(call: Any) -> tuple[grpc.StatusCode | None, str]:
    try:
        return await asyncio.wait_for(call.code(), 1.0), await call.details()
    except (asyncio.TimeoutError, grpc.aio.AioRpcError):
        return None, ""


def _expire(answer: Answer) -> None:
    if not answer.done():
        answer.set_result(shard_pb2.ShardSearchStreamResponse(
            code=grpc.StatusCode.DEADLINE_EXCEEDED.value[0], message="Deadline Exceeded"))
