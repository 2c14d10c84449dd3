"""The client's exceptions: one small tree keyed by gRPC status, each carrying the server's message.

`error_from(exc)` maps a failed call; catch `ClientError` for every failure, or a subclass (NotFound, Unavailable,
...) for one status. Re-exported by shardsearch.client.
"""

from __future__ import annotations

import grpc


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

