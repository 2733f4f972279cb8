"""TEI's error shape, the one table of this front end: `{"error", "error_type"}`."""

from fastapi.responses import JSONResponse

from server.api.http.errors import STATUS, answering_errors
from server.core.errors import ErrorCode, ServerError

ERROR_TYPES = {ErrorCode.UNAVAILABLE: "Overloaded", ErrorCode.INTERNAL: "Backend"}


def error_response(error: ServerError) -> JSONResponse:
    kind = ERROR_TYPES.get(error.code, "Validation")
    return JSONResponse({"error": error.message, "error_type": kind}, status_code=STATUS[error.code])


TeiRoute = answering_errors(error_response)
