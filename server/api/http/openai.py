"""OpenAI's API shapes shared by its routes (one error table), and `POST /v1/embeddings`."""

import base64
import json
from collections.abc import Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from server.api.http import codec
from server.api.http.errors import STATUS, responding
from server.core.errors import InvalidArgument, ServerError
from server.core.service import InferenceService
from server.core.types import TextRequest

EMBEDDING_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}
ENCODING_FORMATS = ("float", "base64")


def error_document(message: str, status: int, code: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def error_body(error: ServerError) -> dict:
    status = STATUS[error.code]
    return error_document(error.message, status, "model_not_found" if status == 404 else None)


def error_response(error: ServerError) -> JSONResponse:
    return JSONResponse(error_body(error), status_code=STATUS[error.code])


openai_errors = responding(error_response)


def add_embedding_routes(app: FastAPI, service: InferenceService, body: Callable) -> None:
    @app.post("/v1/embeddings")
    @openai_errors
    async def embeddings(request: Request):
        payload = codec.parse_json(await body(request))
        text_request, encoding = embedding_request(payload)
        result = await service.encode(text_request)
        return json_response({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": _encoded(v, encoding)}
                     for i, v in enumerate(result.vectors)],
            "model": result.model_name,
            "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
        })


def json_response(document) -> Response:
    """Plain `json.dumps`: FastAPI's encoder walks every float of a vector in Python first."""
    return Response(json.dumps(document), media_type="application/json")


def embedding_request(payload: dict) -> tuple[TextRequest, str]:
    unknown = sorted(set(payload) - EMBEDDING_FIELDS)
    if unknown:
        raise InvalidArgument(
            f"parameter {', '.join(map(repr, unknown))} is not supported by ortserve's /v1/embeddings"
        )
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidArgument("'model' must name a model (see GET /v1/models)")
    encoding = payload.get("encoding_format") or "float"
    if encoding not in ENCODING_FORMATS:
        raise InvalidArgument(f"'encoding_format' must be float or base64, got {encoding!r}")
    dimensions = payload.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
        raise InvalidArgument(f"'dimensions' must be a positive integer, got {dimensions!r}")
    inputs = text_inputs(payload.get("input"), "input")
    return TextRequest(model, "embed", inputs, dimensions=dimensions, protocol="http"), encoding


def text_inputs(value, field: str) -> list:
    """A string, a list of strings, a list of token ids, or a list of such lists: a list of inputs."""
    if isinstance(value, str):
        value = [value]
    elif isinstance(value, list) and value and all(type(i) is int for i in value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InvalidArgument(
            f"'{field}' must be a string, a list of strings, a list of token ids or a list of such lists"
        )
    for index, item in enumerate(value):
        if isinstance(item, str) and not item:
            raise InvalidArgument(f"'{field}' item {index} is an empty string")
        if not isinstance(item, str | list):
            raise InvalidArgument(
                f"'{field}' item {index} must be a string or a list of token ids, got {type(item).__name__}"
            )
    if len({isinstance(item, str) for item in value}) > 1:
        raise InvalidArgument(f"'{field}' mixes strings and token id lists; send one kind per request")
    return value


def _encoded(vector: np.ndarray, encoding: str):
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()
