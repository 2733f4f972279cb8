"""`POST /v2/models/{model}[/versions/{version}]/infer` as a plain ASGI app in front of FastAPI.

Inference is the hot path, so these requests skip FastAPI's middleware layers, routing and dependency
solving and go straight to the codec and the core. Every other route stays on FastAPI.
"""

import asyncio
import gzip
import re
import zlib

from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.http import codec
from server.api.http.body import read_body
from server.api.http.errors import error_response
from server.core.errors import ServerError
from server.core.fields import boolean
from server.service.services import Service

PARTS_FROM = 64 << 10  # a smaller body is joined and sent at once: one send costs less than a copy of it
# zlib's default, as Triton compresses answers (gzip's own default, 9, takes several times as long for a
# body hardly smaller)
COMPRESSION_LEVEL = 6
INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


class InferRoute:
    def __init__(self, app: ASGIApp, service: Service, max_request_bytes: int):
        self.app, self.inference, self.limit = app, service.inference, max_request_bytes
        self.tracing = service.tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = scope["type"] == "http" and INFER_PATH.fullmatch(scope["path"])
        if not match:
            return await self.app(scope, receive, send)
        if scope["method"] != "POST":
            message = f"method {scope['method']} is not allowed on {scope['path']}: use POST"
            return await JSONResponse({"error": message}, 405, {"Allow": "POST"})(scope, receive, send)
        request = Request(scope, receive)
        try:
            response = await self._infer(request, *match.groups(default=""))
        except ServerError as error:
            response = error_response(error)
        except ClientDisconnect:
            return
        await response(scope, receive, send)

    async def _infer(self, request: Request, model: str, version: str) -> Response:
        header_length = request.headers.get(codec.HEADER_LENGTH)
        body = await read_body(request, self.limit, "Request JSON" if header_length is None else "Request")
        decoded = codec.decode_infer(body, header_length, model, version)
        if self.tracing.on:  # the one check an untraced server pays
            decoded.traceparent = request.headers.get("traceparent", "")
        binary_default = boolean(decoded.parameters.get("binary_data_output"), "'binary_data_output'",
                                 decoded.raw_input is not None)
        parts, json_length = codec.encode_infer(await self.inference.infer(decoded), binary_default)
        headers = {}
        if json_length is not None:
            headers[codec.HEADER_LENGTH] = str(json_length)
        media_type = "application/json" if json_length is None else "application/octet-stream"
        encoding = _accepted_encoding(request.headers.get("accept-encoding", ""))
        if encoding:
            content = b"".join(parts)
            if len(content) < PARTS_FROM:
                content = _compressed(content, encoding)
            else:  # off the event loop (zlib lets go of the GIL): other requests go on meanwhile
                content = await asyncio.to_thread(_compressed, content, encoding)
            return Response(content, headers={**headers, "Content-Encoding": encoding}, media_type=media_type)
        if len(parts) == 1:  # JSON only: most answers
            return Response(parts[0], headers=headers, media_type=media_type)
        if sum(memoryview(part).nbytes for part in parts) < PARTS_FROM:
            return Response(b"".join(parts), headers=headers, media_type=media_type)
        return PartsResponse(parts, headers, media_type)


class PartsResponse(Response):
    """A body sent as its parts (the JSON header, then views of the output arrays): the transport writes
    each as it is, where joining them would copy every tensor once more."""

    def __init__(self, parts: list, headers: dict, media_type: str):
        length = sum(memoryview(part).nbytes for part in parts)
        super().__init__(None, headers={**headers, "content-length": str(length)}, media_type=media_type)
        self.parts = parts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        last = len(self.parts) - 1
        for index, part in enumerate(self.parts):
            await send({"type": "http.response.body", "body": part, "more_body": index < last})


def _compressed(content: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(content, COMPRESSION_LEVEL)
    return zlib.compress(content, COMPRESSION_LEVEL)


def _accepted_encoding(accept: str) -> str | None:
    offered = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return next((encoding for encoding in ("gzip", "deflate") if encoding in offered), None)
