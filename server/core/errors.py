"""One error base for every protocol: front ends map `ServerError.code` to a status in one table each."""

import asyncio
from enum import Enum


class ErrorCode(Enum):
    INVALID_ARGUMENT = "invalid argument"
    NOT_FOUND = "not found"
    UNAVAILABLE = "unavailable"
    RESOURCE_EXHAUSTED = "resource exhausted"
    INTERNAL = "internal"


class ServerError(Exception):
    code = ErrorCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(ServerError):
    code = ErrorCode.INVALID_ARGUMENT


class NotFound(ServerError):
    code = ErrorCode.NOT_FOUND


class Unavailable(ServerError):
    code = ErrorCode.UNAVAILABLE


class TooLarge(ServerError):
    code = ErrorCode.RESOURCE_EXHAUSTED


class Internal(ServerError):
    code = ErrorCode.INTERNAL


class StartupFailed(Exception):
    """The server cannot serve as asked (with --exit-on-error, a model that failed to load at start)."""


def failure_reason(error: BaseException) -> str:
    """Triton's `reason` label of nv_inference_request_failure."""
    if isinstance(error, Unavailable):
        return "REJECTED"  # queue full, timed out in the queue, unloaded while waiting
    if isinstance(error, asyncio.CancelledError):
        return "CANCELED"
    if isinstance(error, ServerError):
        return "OTHER"
    return "BACKEND"
