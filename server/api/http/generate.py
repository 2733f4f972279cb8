"""Triton's generate extension: `POST /v2/models/{m}/generate` (one JSON answer) and `/generate_stream`
(server-sent events)."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from server.api.http.context import Served, json_of, trace_context
from server.api.http.streams import SSE_HEADERS, collect, events, usage
from server.core.errors import InvalidArgument
from server.core.types import GenerateRequest, TokenEvent

router = APIRouter()
_REQUEST_KEYS = ("text_input", "input_ids", "parameters", "id", "stream")


@dataclass
class TritonGenerateRequest:
    """Triton's generate body: text_input (or input_ids), parameters in `parameters` or at the top."""

    text: str | None
    input_ids: list | None
    parameters: dict

    @classmethod
    async def from_http(cls, request: Request) -> "TritonGenerateRequest":
        payload = await json_of(request)
        parameters = payload.get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidArgument("'parameters' must be a JSON object")
        parameters = {**{k: v for k, v in payload.items() if k not in _REQUEST_KEYS}, **parameters}
        text, ids = payload.get("text_input"), payload.get("input_ids")
        if text is not None and not isinstance(text, str):
            raise InvalidArgument(f"'text_input' must be a string, got {type(text).__name__}")
        if ids is not None and not isinstance(ids, list):
            raise InvalidArgument(f"'input_ids' must be a list of token ids, got {type(ids).__name__}")
        return cls(text, ids, parameters)

    def to_core(self, model: str, version: str, request: Request) -> GenerateRequest:
        return GenerateRequest(model, version, self.text, self.input_ids, self.parameters, protocol="http",
                               traceparent=trace_context(request))


Body = Annotated[TritonGenerateRequest, Depends(TritonGenerateRequest.from_http)]


@router.post("/v2/models/{model}/generate")
@router.post("/v2/models/{model}/versions/{version}/generate")
async def generate(request: Request, service: Served, body: Body, model: str, version: str = ""):
    tokens = service.generation.generate(body.to_core(model, version, request))
    (whole,) = await collect(request, [tokens])
    return _answer(model, tokens.model_version, whole)


@router.post("/v2/models/{model}/generate_stream")
@router.post("/v2/models/{model}/versions/{version}/generate_stream")
async def generate_stream(request: Request, service: Served, body: Body, model: str, version: str = ""):
    tokens = service.generation.generate(body.to_core(model, version, request))
    stream = events(tokens, lambda event: _answer(model, tokens.model_version, event))
    return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)


def _answer(model: str, version: str, event: TokenEvent) -> dict:
    answer = {"model_name": model, "model_version": version, "text_output": event.text,
              "output_ids": event.token_ids}
    if event.finish_reason is not None:
        answer["finish_reason"] = event.finish_reason.value
        answer["usage"] = usage(event.prompt_tokens, event.generated_tokens)
    return answer
