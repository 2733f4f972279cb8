"""The one table from core error codes to HTTP status codes, as Triton uses them, and the route class
that answers a router's errors in its own protocol's shape (OpenAI's, TEI's)."""

from collections.abc import Callable

from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

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


def answering_errors(to_response: Callable[[ServerError], Response]) -> type[APIRoute]:
    """A route class for an `APIRouter`: every error of its routes (their request values' checks and the
    service's) answered by `to_response`."""

    class ErrorShapedRoute(APIRoute):
        def get_route_handler(self):
            handle = super().get_route_handler()

            async def handler(request):
                try:
                    return await handle(request)
                except ServerError as error:
                    return to_response(error)

            return handler

    return ErrorShapedRoute
