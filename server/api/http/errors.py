"""The one table from core error codes to HTTP status codes, as Triton uses them."""

import functools
from collections.abc import Callable

from fastapi.responses import JSONResponse, Response

from server.core.errors import ErrorCode, ServerError

STATUS = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.RESOURCE_EXHAUSTED: 413,
    ErrorCode.INTERNAL: 500,
}


def error_response(error: ServerError) -> JSONResponse:
    return JSONResponse({"error": error.message}, status_code=STATUS[error.code])


def responding(to_response: Callable[[ServerError], Response]) -> Callable:
    """A route decorator: the route's errors (its own checks' and the core's) answered by
    `to_response`, for front ends with an error shape of their own (OpenAI's, TEI's)."""

    def decorate(route: Callable) -> Callable:
        @functools.wraps(route)
        async def wrapped(*args, **kwargs):
            try:
                return await route(*args, **kwargs)
            except ServerError as error:
                return to_response(error)

        return wrapped

    return decorate
