"""The one table from core error codes to HTTP status codes, as Triton uses them."""

from fastapi.responses import JSONResponse

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
