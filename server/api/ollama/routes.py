"""Ollama's routes (`/api/chat`, `/api/generate`, `/api/embed`, `/api/embeddings`, `/api/tags`, `/api/ps`,
`/api/show`, `/api/version`), for the clients and apps that speak Ollama's API: answers stream as lines of
JSON unless `stream` is false; errors are `{"error": ...}`, as Ollama's."""

import json
import time
from datetime import datetime, timezone
from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from server.api.http.context import Json, Served
from server.api.http.streams import collect
from server.api.ollama.protocol import (
    OllamaChat,
    OllamaGenerate,
    embed_request,
    model_name,
    older_embed_request,
)
from server.api.openai.routes import answer_shape, json_response, read_answer
from server.core.errors import InvalidArgument, NotFound, ServerError
from server.core.types import ToolCall
from server.service.services import Service

router = APIRouter()
NDJSON = "application/x-ndjson"


@router.post("/api/chat")
async def chat(request: Request, service: Served, payload: Json):
    """With `think`, a reasoning model's thinking comes apart as the message's `thinking`."""
    body = OllamaChat.from_json(payload)
    asked, started = body.request, time.perf_counter_ns()
    _check_thinking(service, asked.model_name, body.think)
    tokens = service.generation.generate(asked)
    reply, opened = _Reply(asked.model_name, started), tokens.reasoning if body.think else None
    if body.stream:
        return StreamingResponse(_chat_lines(tokens, answer_shape(service, asked, opened), reply),
                                 media_type=NDJSON)
    [whole] = await collect(request, [tokens])
    thinking, content, found = read_answer(service, asked, whole.text, opened)
    return json_response(reply.last(whole, message={**_message(content or "", found), **_thought(thinking)}))


@router.post("/api/generate")
async def generate(request: Request, service: Served, payload: Json):
    body = OllamaGenerate.from_json(payload, partial(_has_template, service))
    reply = _Reply(body.model, time.perf_counter_ns())
    if body.request is None:  # Ollama's way to load a model: here every model is loaded already
        service.generation.settings(body.model)
        return json_response({**reply.head(), "response": "", "done": True, "done_reason": "load"})
    _check_thinking(service, body.model, body.think)
    tokens = service.generation.generate(body.request)
    opened = tokens.reasoning if body.think else None
    if body.stream:
        thinking = None if opened is None else service.generation.reasoning_stream(opened)
        return StreamingResponse(_generate_lines(tokens, reply, thinking), media_type=NDJSON)
    [whole] = await collect(request, [tokens])
    if opened is None:
        return json_response(reply.last(whole, response=whole.text))
    thought, answer = service.generation.split_reasoning(whole.text, opened)
    return json_response(reply.last(whole, response=answer, **_thought(thought)))


def _check_thinking(service: Service, model: str, think: bool | None) -> None:
    if think and not service.generation.thinks(model):
        raise InvalidArgument(f"\"{model}\" does not support thinking")


def _thought(thinking: str | None) -> dict:
    return {} if thinking is None else {"thinking": thinking.strip()}


@router.post("/api/embed")
async def embed(service: Served, payload: Json):
    started = time.perf_counter_ns()
    result = await service.text.encode(embed_request(payload))
    return json_response({"model": result.model_name, "embeddings": [v.tolist() for v in result.vectors],
                          "total_duration": time.perf_counter_ns() - started, "load_duration": 0,
                          "prompt_eval_count": result.tokens})


@router.post("/api/embeddings")
async def embeddings(service: Served, payload: Json):
    """Ollama's older route: one `prompt`, one `embedding`."""
    result = await service.text.encode(older_embed_request(payload))
    return json_response({"embedding": result.vectors[0].tolist()})


@router.get("/api/tags")
async def tags(service: Served):
    return {"models": [_listed(service, name) for name in service.generation.model_names()]}


@router.get("/api/ps")
async def running(service: Served):
    """Every model ortserve serves is loaded and stays loaded."""
    return {"models": [{**_listed(service, name), "expires_at": "9999-12-31T23:59:59Z", "size_vram": 0}
                       for name in service.generation.model_names()]}


@router.post("/api/show")
async def show(service: Served, payload: Json):
    name = model_name(payload)
    if name not in service.generation.model_names():
        raise NotFound(f"model '{name}' not found")
    details, info = _listed(service, name)["details"], {"general.architecture": "onnx"}
    if _is_text(service, name):
        text = service.text.info(name)
        info["context_length"] = text.max_length
        capabilities, template = ["embedding"] if text.task == "embed" else ["completion"], ""
    else:
        settings = service.generation.settings(name)
        info["context_length"] = settings.max_sequence_length
        template = settings.chat.source if settings.chat is not None else ""
        takes_tools = settings.chat is not None and settings.chat.tool_format is not None
        capabilities = ["completion", "tools"] if takes_tools else ["completion"]
    return {"modelfile": "", "parameters": "", "template": template, "details": details, "model_info": info,
            "capabilities": capabilities}


@router.get("/api/version")
async def version(service: Served):
    return {"version": service.health.version}


class _Reply:
    """The fields every answer of one request carries, and the counts and durations of the last."""

    def __init__(self, model: str, started_ns: int):
        self.model, self.started_ns, self.first_ns = model, started_ns, None

    def head(self) -> dict:
        return {"model": self.model, "created_at": datetime.now(timezone.utc).isoformat()}

    def part(self, **fields) -> str:
        self.first_ns = self.first_ns or time.perf_counter_ns()
        return json.dumps({**self.head(), **fields, "done": False}) + "\n"

    def last(self, whole, **fields) -> dict:
        now = time.perf_counter_ns()
        first = self.first_ns or now
        return {**self.head(), **fields, "done": True, "done_reason": whole.finish_reason,
                "total_duration": now - self.started_ns, "load_duration": 0,
                "prompt_eval_count": whole.prompt_tokens, "prompt_eval_duration": first - self.started_ns,
                "eval_count": whole.generated_tokens, "eval_duration": now - first}


async def _chat_lines(tokens, shape, reply: _Reply):
    """OpenAI's chat chunks for the answer (`shape`: content as it surely is content, calls whole) as
    Ollama's lines: a message per piece, the calls in one, then the line with `done`."""
    try:
        async for event in tokens:
            for choice in shape(0, event):
                delta = choice["delta"]
                if delta.get("reasoning_content"):
                    yield reply.part(message={**_message("", []), "thinking": delta["reasoning_content"]})
                if delta.get("content"):
                    yield reply.part(message=_message(delta["content"], []))
                if delta.get("tool_calls"):
                    calls = [ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"])
                             for c in delta["tool_calls"]]
                    yield reply.part(message=_message("", calls))
            if event.finish_reason is not None:
                yield json.dumps(reply.last(event, message=_message("", []))) + "\n"
    except ServerError as error:
        yield json.dumps({"error": error.message}) + "\n"
    finally:
        await tokens.aclose()


async def _generate_lines(tokens, reply: _Reply, thinking=None):
    """A line per piece of the answer (`thinking`: a reasoning model's `ReasoningStream`, its thinking in
    the lines' `thinking`), then the line with `done`."""
    try:
        async for event in tokens:
            thought, text = ("", event.text) if thinking is None else thinking.push(
                event.text, event.finish_reason is not None)
            if thought:
                yield reply.part(response="", thinking=thought)
            if text:
                yield reply.part(response=text)
            if event.finish_reason is not None:
                yield json.dumps(reply.last(event, response="")) + "\n"
    except ServerError as error:
        yield json.dumps({"error": error.message}) + "\n"
    finally:
        await tokens.aclose()


def _message(content: str, calls: list[ToolCall]) -> dict:
    """Ollama's assistant message: its calls' arguments as objects, not OpenAI's JSON strings."""
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [{"function": {"name": call.name, "arguments": json.loads(call.arguments)}}
                                 for call in calls]
    return message


def _has_template(service: Service, name: str) -> bool:
    return service.generation.settings(name).chat is not None


def _is_text(service: Service, name: str) -> bool:
    return any(info.name == name for info in service.text.models())


def _listed(service: Service, name: str) -> dict:
    family = "encoder" if _is_text(service, name) else "decoder"
    return {"name": f"{name}:latest", "model": f"{name}:latest",
            "details": {"format": "onnx", "family": family, "families": [family]}}

