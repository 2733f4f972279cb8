"""The HTTP/REST front end: KServe v2 and Triton's extensions, decoding into the core and back."""

import gzip
import zlib

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from server.api.access_log import HttpAccessLog
from server.api.http import codec
from server.api.http.errors import error_response
from server.api.http.generation import add_generation_routes
from server.core.errors import InvalidArgument, ServerError, TooLarge
from server.core.service import InferenceService
from server.repository.config import to_json

_DECOMPRESSORS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def create_app(service: InferenceService, max_request_bytes: int, access_log: bool = True) -> FastAPI:
    app = FastAPI(title="ortserve", docs_url=None, redoc_url=None, openapi_url=None)
    if access_log:
        app.add_middleware(HttpAccessLog)

    @app.exception_handler(ServerError)
    async def server_error(_: Request, error: ServerError):
        return error_response(error)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException):
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError):
        return JSONResponse({"error": str(error)}, status_code=400)

    async def body(request: Request) -> bytes:
        return await read_body(request, max_request_bytes)

    @app.get("/v2/health/live")
    async def live():
        return Response(status_code=200 if service.live else 400)

    @app.get("/v2/health/ready")
    async def ready():
        return Response(status_code=200 if service.ready() else 400)

    @app.get("/v2")
    async def server_metadata():
        return service.server_metadata()

    @app.get("/v2/models/stats")
    async def all_statistics():
        return {"model_stats": service.statistics()}

    @app.get("/v2/models/{model}")
    @app.get("/v2/models/{model}/versions/{version}")
    async def model_metadata(model: str, version: str = ""):
        return service.model_metadata(model, version)

    @app.get("/v2/models/{model}/ready")
    @app.get("/v2/models/{model}/versions/{version}/ready")
    async def model_ready(model: str, version: str = ""):
        return Response(status_code=200 if service.model_ready(model, version) else 400)

    @app.get("/v2/models/{model}/config")
    @app.get("/v2/models/{model}/versions/{version}/config")
    async def model_config(model: str, version: str = ""):
        return to_json(service.model_config(model, version))

    @app.get("/v2/models/{model}/stats")
    @app.get("/v2/models/{model}/versions/{version}/stats")
    async def model_statistics(model: str, version: str = ""):
        return {"model_stats": service.statistics(model, version)}

    @app.post("/v2/models/{model}/infer")
    @app.post("/v2/models/{model}/versions/{version}/infer")
    async def infer(request: Request, model: str, version: str = ""):
        header_length = request.headers.get(codec.HEADER_LENGTH)
        decoded = codec.decode_infer(await body(request), header_length, model, version)
        binary_default = bool(decoded.parameters.get("binary_data_output", False))
        response = await service.infer(decoded)
        content, json_length = codec.encode_infer(response, binary_default)
        headers = {}
        if json_length is not None:
            headers[codec.HEADER_LENGTH] = str(json_length)
        media_type = "application/json" if json_length is None else "application/octet-stream"
        encoding = _accepted_encoding(request.headers.get("accept-encoding", ""))
        if encoding:
            content = gzip.compress(content) if encoding == "gzip" else zlib.compress(content)
            headers["Content-Encoding"] = encoding
        return Response(content, headers=headers, media_type=media_type)

    @app.post("/v2/repository/index")
    async def repository_index(request: Request):
        ready_only = codec.parse_json(await body(request)).get("ready", False)
        return [
            {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
            for e in service.repository_index(bool(ready_only))
        ]

    @app.post("/v2/repository/models/{model}/load")
    async def load(request: Request, model: str):
        parameters = codec.parse_json(await body(request)).get("parameters", {})
        config = parameters.get("config") if isinstance(parameters, dict) else None
        if config is not None and not isinstance(config, str):
            raise InvalidArgument("load parameter 'config' must be a string holding a model config")
        await service.load(model, config)
        return Response(status_code=200)

    @app.post("/v2/repository/models/{model}/unload")
    async def unload(request: Request, model: str):
        await body(request)
        await service.unload(model)
        return Response(status_code=200)

    add_generation_routes(app, service, body)
    return app


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed, refused once it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body is {declared} bytes, the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding not in _DECOMPRESSORS:
        raise InvalidArgument(f"unsupported Content-Encoding '{encoding}', expected gzip or deflate")
    decompressor = zlib.decompressobj(_DECOMPRESSORS[encoding])
    try:
        data = decompressor.decompress(data, limit + 1)
    except zlib.error as error:
        raise InvalidArgument(f"request body is not valid {encoding} data: {error}") from None
    if len(data) > limit or decompressor.unconsumed_tail:
        raise TooLarge(f"decompressed request body is over the limit of {limit} bytes")
    return data


def _accepted_encoding(accept: str) -> str | None:
    offered = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return next((encoding for encoding in ("gzip", "deflate") if encoding in offered), None)
