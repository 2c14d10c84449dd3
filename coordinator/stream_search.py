"""StreamSearch's flow: each message searched concurrently, answers sent as they complete, within a window."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, Callable, TypeVar

Q = TypeVar("Q")
A = TypeVar("A")
STREAM_WINDOW = 64  # requests of one StreamSearch processed concurrently


async def answered(
    requests: AsyncIterator[Q], answer: Callable[[Q], Awaitable[A]], window: int = STREAM_WINDOW
) -> AsyncIterator[A]:
    """`answer(request)` for each request, run concurrently; yields the answers as they complete. At most `window`
    requests are being answered or answered-but-unsent at a time: a client that stops reading stops the stream (gRPC
    flow control then stops its writes), so its answers never pile up here. `answer` reports its own failures in
    its answer; one that raises ends the stream."""
    answers: asyncio.Queue[A | None] = asyncio.Queue()
    slots = asyncio.Semaphore(window)

    async def one(request: Q) -> None:
        try:
            response = await answer(request)
        except BaseException:
            slots.release()
            raise
        answers.put_nowait(response)  # its slot is released once it has been sent

    async def feed() -> None:
        pending: set[asyncio.Task[None]] = set()
        try:
            async for request in requests:
                await slots.acquire()
                task = asyncio.create_task(one(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
        except BaseException:  # the stream broke (a message that does not parse, a cancelled call)
            for task in pending:
                task.cancel()  # nobody will read their answers
            raise
        finally:
            await answers.put(None)

    feeder = asyncio.create_task(feed())
    try:
        while (item := await answers.get()) is not None:
            yield item  # returns once gRPC has taken the message (flow control: once the client reads)
            slots.release()
        await feeder
    finally:
        feeder.cancel()
