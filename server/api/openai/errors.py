"""OpenAI's error shape, the one table of this front end."""

from fastapi.responses import JSONResponse

from server.api.http.errors import STATUS, answering_errors
from server.core.errors import ServerError


def error_document(message: str, status: int, code: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def error_body(error: ServerError) -> dict:
    status = STATUS[error.code]
    code = getattr(error, "openai_code", "model_not_found" if status == 404 else None)
    return error_document(error.message, status, code)


def error_response(error: ServerError) -> JSONResponse:
    return JSONResponse(error_body(error), status_code=STATUS[error.code])


OpenAIRoute = answering_errors(error_response)
