"""What every HTTP route reads from its request: the application service and the body (size-limited,
decompressed, JSON), both set on the app by `create_app`."""

from typing import Annotated

from fastapi import Depends, Request

from server.api.http import codec
from server.api.http.body import read_body
from server.service.services import Service


def service_of(request: Request) -> Service:
    return request.app.state.service


def trace_context(request: Request) -> str:
    """The W3C `traceparent` a client sent, read only while tracing is on."""
    return request.headers.get("traceparent", "") if service_of(request).tracing.on else ""


async def body_of(request: Request) -> bytes | memoryview:
    return await read_body(request, request.app.state.max_request_bytes)


async def json_of(request: Request) -> dict:
    """The body as a JSON object ({} when empty)."""
    return codec.parse_json(await body_of(request))


Served = Annotated[Service, Depends(service_of)]  # a route's parameter: the application service
Json = Annotated[dict, Depends(json_of)]  # a route's parameter: its body as a JSON object
