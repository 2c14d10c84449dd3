"""Domain errors that carry a gRPC status, and the one rule (`status_of`) that maps any failure onto the status a
caller sees: `rpc` applies it to unary handlers, `rpc_stream` to server-streaming ones, and the stream handlers that
answer each message with its own status call it directly."""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import grpc

from shardsearch import logs

logger = logging.getLogger(__name__)


class ShardSearchError(Exception):
    """Base error: `code` is the gRPC status a caller sees, the message is what they read."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidArgument(ShardSearchError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ShardSearchError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ShardSearchError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Unavailable(ShardSearchError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ShardSearchError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(ShardSearchError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(ShardSearchError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class DataLoss(ShardSearchError):
    """Stored data was found damaged: the shard refuses to serve it rather than serve what survived."""

    code = grpc.StatusCode.DATA_LOSS


class Aborted(ShardSearchError):
    """The request was routed by an older ring layout than the shard's: re-read the layout and send it again."""

    code = grpc.StatusCode.ABORTED


class AnswerTooLarge(ResourceExhausted):
    """A shard's answer was over the gRPC message size limit: the request asked for too much at once, and asking
    again (or another shard) will not help."""


def from_rpc_error(exc: grpc.aio.AioRpcError, where: str) -> ShardSearchError:
    """Maps an outbound call's failure to a domain error, keeping its status and naming where it happened."""
    return from_status(exc.code(), exc.details() or "", where)


def from_status(code: grpc.StatusCode, details: str, where: str) -> ShardSearchError:
    """`from_rpc_error` for a status and message (a unary call's, or one search's on a stream)."""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
        return AnswerTooLarge(  # gRPC's "Sent message larger than max (N vs. LIMIT)"
            f"{where}: the answer is over the message size limit ({details}); ask for less at once: "
            "fewer ids or queries, a smaller k, or no payloads"
        )
    if code == grpc.StatusCode.CANCELLED:
        code = grpc.StatusCode.UNAVAILABLE
    elif code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        code = grpc.StatusCode.INTERNAL  # the server's own credentials were refused: not the caller's to fix
    return ShardSearchError(f"{where}: {details or code.name}", code)


T = TypeVar("T")


def status_of(exc: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """The status a call that raised `exc` answers with: a domain error's own code and message; anything else is a
    bug here, logged with its traceback and answered INTERNAL without internals in the message."""
    if isinstance(exc, ShardSearchError):
        return exc.code, str(exc)
    logger.error("%s failed", method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error in {method}; see server logs"


def rpc(method: str) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Decorates a unary servicer method: domain errors become `context.abort`, anything else INTERNAL.

    The servicer may have a `metrics` attribute (a `shardsearch.metrics.RpcMetrics`). The call's request id (see
    shardsearch.logs) is bound while it runs and sent back in the trailing metadata; its access line is logged.
    """

    def wrap(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(fn)
        async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            metrics = getattr(self, "metrics", None)
            if metrics is not None:
                metrics.inflight.inc()
            request_id = logs.request_id_from(context.invocation_metadata())
            bound = logs.bind_request_id(request_id)
            echo = ((logs.REQUEST_ID_HEADER, request_id),)
            context.set_trailing_metadata(echo)  # the caller can quote it
            try:
                return await fn(self, request, context)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[assignment]
                raise
            except Exception as exc:
                code, details = status_of(exc, method)
                await context.abort(code, details, echo)
            finally:
                elapsed = time.perf_counter() - start
                if metrics is not None:
                    metrics.inflight.dec()
                    metrics.observe_request(method, code, elapsed)
                logs.log_access(method, code, elapsed, context.peer)
                logs.unbind_request_id(bound)
            raise AssertionError("unreachable")  # abort() always raises

        return handler

    return wrap


def rpc_stream(
    method: str,
) -> Callable[[Callable[..., AsyncIterator[T]]], Callable[..., AsyncIterator[T]]]:
    """`rpc` for a server-streaming handler (an async generator): its request id is bound while it runs and a failure
    ends the stream with `status_of`'s status. Metrics and access lines are the handler's: a stream that answers
    each message with its own status counts those, not the stream."""

    def wrap(fn: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
        @functools.wraps(fn)
        async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[T]:
            logs.bind_request_id(logs.request_id_from(context.invocation_metadata()))
            try:
                async for message in fn(self, request, context):
                    yield message
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await context.abort(*status_of(exc, method))

        return handler

    return wrap
