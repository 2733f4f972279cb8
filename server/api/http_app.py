"""The HTTP front end: the routers of every route family on one FastAPI app, inference on its own lean
ASGI route in front, restricted API groups checked first, all under the access log."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from server.api.access_log import HttpAccessLog
from server.api.http import generate, repository, shared_memory, trace_logging, v2
from server.api.http.errors import error_response
from server.api.http.infer_route import InferRoute
from server.api.http.restricted import RestrictedApi
from server.api.ollama import routes as ollama
from server.api.openai import routes as openai
from server.api.openai.errors import error_document
from server.api.openai.responses import ResponseStore
from server.api.restrictions import NO_RESTRICTIONS, Restrictions
from server.api.tei import routes as tei
from server.core.errors import ServerError
from server.service.services import Service

ROUTERS = (v2.router, repository.router, shared_memory.router, trace_logging.router, generate.router,
           openai.router, tei.router, ollama.router)


def create_app(
    service: Service,
    max_request_bytes: int,
    access_log: bool = True,
    restrictions: Restrictions = NO_RESTRICTIONS,
) -> ASGIApp:
    app = FastAPI(title="ortserve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service, app.state.max_request_bytes = service, max_request_bytes
    app.state.responses = ResponseStore()
    app.add_exception_handler(ServerError, _server_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for router in ROUTERS:
        app.include_router(router)
    served = InferRoute(app, service, max_request_bytes)
    if restrictions.rules:
        served = RestrictedApi(served, restrictions)
    return HttpAccessLog(served) if access_log else served


async def _server_error(_: Request, error: ServerError):
    return error_response(error)


async def _http_error(request: Request, error: HTTPException):
    if request.url.path.startswith("/v1/"):  # OpenAI's shape on every /v1 route, 404 included
        document = error_document(str(error.detail), error.status_code)
    else:
        document = {"error": str(error.detail)}
    return JSONResponse(document, status_code=error.status_code)


async def _validation_error(_: Request, error: RequestValidationError):
    return JSONResponse({"error": str(error)}, status_code=400)
