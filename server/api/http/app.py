"""The HTTP/REST front end: KServe v2 and Triton's extensions, decoding into the core and back."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from server.api.access_log import HttpAccessLog
from server.api.http import codec, openai
from server.api.http.body import read_body
from server.api.http.errors import error_response
from server.api.http.generation import add_chat_routes, add_generation_routes
from server.api.http.infer_route import InferRoute
from server.api.http.openai import add_embedding_routes
from server.api.http.restricted import RestrictedApi
from server.api.http.tei import add_tei_routes
from server.api.restrictions import NO_RESTRICTIONS, Restrictions
from server.core.errors import InvalidArgument, ServerError
from server.core.service import InferenceService
from server.repository.config import to_json
from server.repository.overrides import FILE_PREFIX


def create_app(
    service: InferenceService,
    max_request_bytes: int,
    access_log: bool = True,
    restrictions: Restrictions = NO_RESTRICTIONS,
) -> ASGIApp:
    """Inference on its own lean route, everything else on FastAPI, restricted groups checked first, all
    under the access log."""
    app = FastAPI(title="ortserve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ServerError)
    async def server_error(_: Request, error: ServerError):
        return error_response(error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        if request.url.path.startswith("/v1/"):  # OpenAI's shape on every /v1 route, 404 included
            return JSONResponse(openai.error_document(str(error.detail), error.status_code),
                                status_code=error.status_code)
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
        if not isinstance(parameters, dict):
            raise InvalidArgument("'parameters' of a load request must be a JSON object")
        config = parameters.get("config")
        if config is not None and not isinstance(config, str):
            raise InvalidArgument("load parameter 'config' must be a string holding a model config")
        files = {key: codec.base64_value(f"load parameter '{key}'", value)
                 for key, value in parameters.items() if key.startswith(FILE_PREFIX)}
        await service.load(model, config, files)
        return Response(status_code=200)

    @app.post("/v2/repository/models/{model}/unload")
    async def unload(request: Request, model: str):
        await body(request)
        await service.unload(model)
        return Response(status_code=200)

    @app.get("/v2/systemsharedmemory/status")
    @app.get("/v2/systemsharedmemory/region/{name}/status")
    async def shared_memory_status(name: str = ""):
        return service.shared_memory.system.status(name)

    @app.post("/v2/systemsharedmemory/region/{name}/register")
    async def shared_memory_register(request: Request, name: str):
        document = codec.parse_json(await body(request))
        key = document.get("key")
        if not isinstance(key, str):
            raise InvalidArgument("a shared memory registration needs 'key', the shared memory object's name")
        offset, byte_size = _count(document, "offset", 0), _count(document, "byte_size")
        service.shared_memory.system.register(name, key, offset, byte_size)
        return Response(status_code=200)

    @app.post("/v2/systemsharedmemory/unregister")
    @app.post("/v2/systemsharedmemory/region/{name}/unregister")
    async def shared_memory_unregister(request: Request, name: str = ""):
        await body(request)
        service.shared_memory.system.unregister(name)
        return Response(status_code=200)

    @app.get("/v2/cudasharedmemory/status")
    @app.get("/v2/cudasharedmemory/region/{name}/status")
    async def cuda_shared_memory_status(name: str = ""):
        return service.shared_memory.cuda.status(name)

    @app.post("/v2/cudasharedmemory/region/{name}/register")
    async def cuda_shared_memory_register(request: Request, name: str):
        document = codec.parse_json(await body(request))
        raw_handle = document.get("raw_handle")
        if not isinstance(raw_handle, dict) or not isinstance(raw_handle.get("b64"), str):
            raise InvalidArgument(
                "a CUDA shared memory registration needs 'raw_handle': {\"b64\": the base64 of the "
                "cudaIpcMemHandle_t}"
            )
        handle = codec.base64_value("'raw_handle'", raw_handle["b64"])
        device_id, byte_size = _count(document, "device_id"), _count(document, "byte_size")
        service.shared_memory.cuda.register(name, handle, device_id, byte_size)
        return Response(status_code=200)

    @app.post("/v2/cudasharedmemory/unregister")
    @app.post("/v2/cudasharedmemory/region/{name}/unregister")
    async def cuda_shared_memory_unregister(request: Request, name: str = ""):
        await body(request)
        service.shared_memory.cuda.unregister(name)
        return Response(status_code=200)

    add_generation_routes(app, service, body)
    add_chat_routes(app, service, body)
    add_embedding_routes(app, service, body)
    add_tei_routes(app, service, body)
    served = InferRoute(app, service, max_request_bytes)
    if restrictions.rules:
        served = RestrictedApi(served, restrictions)
    return HttpAccessLog(served) if access_log else served


def _count(document: dict, field: str, default=None) -> int:
    """A shared memory registration's offset, size or device: an integer >= 0."""
    value = document.get(field, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"shared memory '{field}' must be an integer >= 0, got {value!r}")
    return value
