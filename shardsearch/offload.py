"""Blocking work (FAISS, numpy over many rows, disk) awaited from the event loop, run on an executor."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class Offload:
    """`await run(fn, *args)` runs `fn(*args)` on `executor` (None: the loop's default) without blocking the loop.
    The hop costs tens of microseconds: work smaller than that runs inline (callers decide by measurement)."""

    def __init__(self, executor: Executor | None) -> None:
        self.executor = executor

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
