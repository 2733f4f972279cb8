"""Generation over HTTP: Triton's generate extension (JSON and server-sent events) and the
OpenAI-compatible completions API, both on the core's token streams."""

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from server.api.http import codec
from server.api.http.openai import error_body as _openai_error_body
from server.api.http.openai import error_response as _openai_error
from server.core.errors import InvalidArgument, NotFound, ServerError, Unavailable
from server.core.service import InferenceService
from server.core.types import GenerateRequest
from server.generation.engine import TokenEvent

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_REQUEST_KEYS = ("text_input", "input_ids", "parameters", "id", "stream")
OPENAI_PARAMETERS = {"max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "repetition_penalty",
                     "stop_token_ids", "ignore_eos", "presence_penalty", "frequency_penalty", "logit_bias"}
COMPLETION_PARAMETERS = OPENAI_PARAMETERS | {"logprobs"}
OPENAI_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
OPENAI_FIELDS = {"model", "prompt", "stream", "stream_options", "n", "best_of", "echo", "user"}
# parameters ortserve does not implement, accepted only at the value that changes nothing (clients send them)
OPENAI_NEUTRAL = {"suffix": None}
CHAT_FIELDS = {"model", "messages", "stream", "stream_options", "n", "user", "max_completion_tokens",
               "logprobs", "top_logprobs"}
CHAT_NEUTRAL = {"tools": [], "tool_choice": "none", "parallel_tool_calls": False}


def add_generation_routes(app: FastAPI, service: InferenceService, body: Callable) -> None:
    @app.post("/v2/models/{model}/generate")
    @app.post("/v2/models/{model}/versions/{version}/generate")
    async def generate(request: Request, model: str, version: str = ""):
        tokens = service.generate(_triton_request(await body(request), model, version))
        (whole,) = await _collect(request, [tokens])
        return _triton_event(model, tokens.model_version, whole)

    @app.post("/v2/models/{model}/generate_stream")
    @app.post("/v2/models/{model}/versions/{version}/generate_stream")
    async def generate_stream(request: Request, model: str, version: str = ""):
        tokens = service.generate(_triton_request(await body(request), model, version))

        def event(e: TokenEvent) -> dict:
            return _triton_event(model, tokens.model_version, e)

        return StreamingResponse(_sse(tokens, event), media_type="text/event-stream", headers=SSE_HEADERS)

    def openai_model_names() -> list[str]:
        return sorted({m.name for m in service.registry.ready_models()
                       if m.engine is not None or m.text is not None})

    @app.get("/v1/models")
    async def openai_models():
        return {"object": "list", "data": [_openai_model(name) for name in openai_model_names()]}

    @app.get("/v1/models/{model}")
    async def openai_model(model: str):
        if model not in openai_model_names():
            return _openai_error(NotFound(f"The model '{model}' does not exist (see GET /v1/models)"))
        return _openai_model(model)

    @app.post("/v1/completions")
    async def completions(request: Request):
        groups = []
        try:
            payload = codec.parse_json(await body(request))
            model, prompts, parameters = _openai_request(payload)
            n, echo = _choices(payload), _switch(payload, "echo")
            best_of = _best_of(payload, n)
            shown = parameters.get("logprobs")
            if best_of > n:  # choices are ranked by their tokens' mean log-probability
                parameters["logprobs"] = shown or 0
            for prompt in prompts:
                text, ids = (prompt, None) if isinstance(prompt, str) else (None, prompt)
                echoed = await service.echo(GenerateRequest(model, text=text, input_ids=ids, protocol="http"),
                                            shown) if echo else None
                if echoed is not None:  # tokenized once: the echo's ids are the prompt generated from
                    text, ids = None, echoed.token_ids
                groups.append(_Choices(echoed, [] if echo and parameters.get("max_tokens") == 0 else [
                    service.generate(GenerateRequest(model, text=text, input_ids=ids, protocol="http",
                                                     parameters=_choice_parameters(parameters, index)))
                    for index in range(best_of)]))
        except ServerError as error:
            for group in groups:
                await group.aclose()
            return _openai_error(error)
        completion = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                      "created": int(time.time()), "model": model}
        if payload.get("stream"):
            usage = bool((payload.get("stream_options") or {}).get("include_usage"))
            streams = [stream for group in groups for stream in group.echoed_streams()]
            chunks = _openai_chunks(streams, completion, usage, n, _completion_choices)
            return StreamingResponse(chunks, media_type="text/event-stream", headers=SSE_HEADERS)
        try:
            wholes = await _collect(request, [stream for group in groups for stream in group.streams])
        except ServerError as error:
            return _openai_error(error)
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for group in groups:
            generated, wholes = wholes[:len(group.streams)], wholes[len(group.streams):]
            for whole in group.best(generated, n, shown is not None):
                logprobs = _completion_logprobs(whole)
                choices.append({"index": len(choices), "text": whole.text, "logprobs": logprobs,
                                "finish_reason": whole.finish_reason})
            prompt_tokens += (group.echoed or generated[0]).prompt_tokens
            completion_tokens += sum(whole.generated_tokens for whole in generated)
        return {**completion, "choices": choices, "usage": _usage(prompt_tokens, completion_tokens)}


class _Choices:
    """One prompt's choices: its generated streams (`best_of` of them, none for `max_tokens` 0) and,
    with OpenAI's `echo`, the prompt's own text and log-probabilities put before each."""

    def __init__(self, echoed: TokenEvent | None, streams: list):
        self.echoed, self.streams = echoed, streams

    def best(self, wholes: list[TokenEvent], n: int, show_logprobs: bool) -> list[TokenEvent]:
        """The `n` choices whose tokens have the highest mean log-probability (all of them when there
        are `n`), each after its echoed prompt."""
        if not wholes:
            return [self._prompt_only()]
        if len(wholes) > n:
            wholes = sorted(wholes, key=_mean_logprob, reverse=True)[:n]
            if not show_logprobs:
                wholes = [dataclasses.replace(whole, logprobs=[]) for whole in wholes]
        return [self.echoed.then(whole) if self.echoed else whole for whole in wholes]

    def echoed_streams(self) -> list:
        if self.echoed is None:
            return self.streams
        return [_Echoed(self.echoed, stream) for stream in self.streams] or [_Echoed(self._prompt_only())]

    def _prompt_only(self) -> TokenEvent:
        return dataclasses.replace(self.echoed, finish_reason="length")

    async def aclose(self) -> None:
        for stream in self.streams:
            await stream.aclose()


class _Echoed:
    """A streamed choice that starts with its echoed prompt."""

    def __init__(self, echoed: TokenEvent, tokens=None):
        self.echoed, self.tokens = echoed, tokens

    async def __aiter__(self):
        yield self.echoed
        if self.tokens is not None:
            async for event in self.tokens:
                yield event

    async def aclose(self) -> None:
        if self.tokens is not None:
            await self.tokens.aclose()


def _mean_logprob(whole: TokenEvent) -> float:
    return sum(t.logprob for t in whole.logprobs) / max(len(whole.logprobs), 1)


def add_chat_routes(app: FastAPI, service: InferenceService, body: Callable) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        streams = []
        try:
            payload = codec.parse_json(await body(request))
            model, messages, parameters = _chat_request(payload)
            for index in range(_choices(payload)):
                choice = _choice_parameters(parameters, index)
                streams.append(service.generate(GenerateRequest(model, parameters=choice, protocol="http",
                                                                messages=messages)))
        except ServerError as error:
            for tokens in streams:
                await tokens.aclose()
            return _openai_error(error)
        completion = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                      "created": int(time.time()), "model": model}
        if payload.get("stream"):
            usage = bool((payload.get("stream_options") or {}).get("include_usage"))
            chunk = {**completion, "object": "chat.completion.chunk"}
            chunks = _openai_chunks(streams, chunk, usage, len(streams), _chat_choices)
            return StreamingResponse(chunks, media_type="text/event-stream", headers=SSE_HEADERS)
        try:
            wholes = await _collect(request, streams)
        except ServerError as error:
            return _openai_error(error)
        choices = [{"index": index, "message": {"role": "assistant", "content": whole.text},
                    "logprobs": _chat_logprobs(whole), "finish_reason": whole.finish_reason}
                   for index, whole in enumerate(wholes)]
        usage = _usage(wholes[0].prompt_tokens, sum(whole.generated_tokens for whole in wholes))
        return {**completion, "choices": choices, "usage": usage}


MAX_CHOICES = 16


def _choices(payload: dict) -> int:
    """OpenAI's `n`: choices per prompt, each generated as a sequence of its own."""
    n = payload.get("n")
    if n is None:
        return 1
    if type(n) is not int or not 1 <= n <= MAX_CHOICES:
        raise InvalidArgument(f"'n' must be an integer from 1 to {MAX_CHOICES}, got {n!r}")
    return n


def _best_of(payload: dict, n: int) -> int:
    """OpenAI's `best_of`: choices generated per prompt, of which the `n` best are returned."""
    best_of = payload.get("best_of")
    if best_of is None:
        return n
    if type(best_of) is not int or not n <= best_of <= MAX_CHOICES:
        raise InvalidArgument(f"'best_of' must be an integer from n ({n}) to {MAX_CHOICES}, got {best_of!r}")
    if best_of > n and payload.get("stream"):
        raise InvalidArgument("'best_of' greater than 'n' cannot be streamed: the best choices are known "
                              "only when all are finished")
    return best_of


def _switch(payload: dict, key: str) -> bool:
    value = payload.get(key)
    if value not in (None, True, False):
        raise InvalidArgument(f"'{key}' must be true or false, got {value!r}")
    return bool(value)


def _choice_parameters(parameters: dict, index: int) -> dict:
    """A seeded request's later choices take the next seeds, so that they differ and repeat."""
    if index and parameters.get("seed") is not None:
        return {**parameters, "seed": parameters["seed"] + index}
    return parameters


def _token_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(type(i) is int for i in value)


def _chat_request(payload: dict) -> tuple[str, list, dict]:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidArgument("'model' must name a model (see GET /v1/models)")
    _refuse_unsupported(payload, OPENAI_PARAMETERS | CHAT_FIELDS, CHAT_NEUTRAL, "/v1/chat/completions")
    parameters = {k: v for k, v in payload.items() if k in OPENAI_PARAMETERS}
    wanted, top = payload.get("logprobs"), payload.get("top_logprobs")
    if wanted not in (None, True, False):
        raise InvalidArgument(f"'logprobs' must be true or false, got {wanted!r}")
    if top is not None and not wanted:
        raise InvalidArgument("'top_logprobs' needs 'logprobs': true")
    if wanted:
        parameters["logprobs"] = 0 if top is None else top
    if payload.get("max_completion_tokens") is not None:
        parameters["max_tokens"] = payload["max_completion_tokens"]
    if parameters.get("max_tokens", 0) is None:
        del parameters["max_tokens"]
    return model, payload.get("messages"), parameters


def _refuse_unsupported(payload: dict, known: set, neutral: dict, route: str) -> None:
    """A parameter ortserve does not implement is refused, unless sent at the value that changes nothing."""
    unsupported = sorted(key for key, value in payload.items()
                         if key not in known and not (key in neutral and value in (None, neutral[key])))
    if unsupported:
        names = ", ".join(map(repr, unsupported))
        raise InvalidArgument(f"parameter {names} is not supported by ortserve's {route}")


def _chat_choices(index: int, event: TokenEvent | None) -> list[dict]:
    """A chat choice's chunks: its role first, then content pieces, then its finish reason."""
    if event is None:
        return [{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None}]
    choices = []
    if event.text or event.logprobs:
        choices.append({"index": index, "delta": {"content": event.text}, "logprobs": _chat_logprobs(event),
                        "finish_reason": None})
    if event.finish_reason is not None:
        choices.append({"index": index, "delta": {}, "logprobs": None, "finish_reason": event.finish_reason})
    return choices


def _completion_choices(index: int, event: TokenEvent | None) -> list[dict]:
    if event is None:
        return []
    return [{"index": index, "text": event.text, "logprobs": _completion_logprobs(event),
             "finish_reason": event.finish_reason}]


def _chat_logprobs(event: TokenEvent) -> dict | None:
    """OpenAI's chat logprobs: each token with its bytes and the most likely alternatives."""
    if not event.logprobs:
        return None

    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {"content": [{**entry(t.token, t.logprob), "top_logprobs": [entry(*top) for top in t.top]}
                        for t in event.logprobs]}


def _completion_logprobs(event: TokenEvent) -> dict | None:
    """OpenAI's legacy completion logprobs: parallel lists, with each token's offset in the text."""
    if not event.logprobs:
        return None
    offsets, position = [], 0
    for token in event.logprobs:
        offsets.append(position)
        position += len(token.token)
    tokens = event.logprobs
    return {"tokens": [t.token for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [None if t.top is None else dict(t.top) for t in tokens], "text_offset": offsets}


async def _collect(request: Request, streams: list) -> list[TokenEvent]:
    """Every stream's whole generation; a client that leaves first aborts them (their sequences leave the
    batch at the next step), as a closed stream does."""
    collecting = asyncio.ensure_future(asyncio.gather(*(tokens.collect() for tokens in streams)))
    leaving = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({collecting, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        leaving.cancel()
        failed = collecting.done() and not collecting.cancelled() and collecting.exception() is not None
        if not collecting.done() or failed:  # the client left, or one choice failed: end the others
            collecting.cancel()
            for tokens in streams:
                await tokens.aclose()
    if collecting.cancelled():
        raise Unavailable("the client closed the connection; its generation was aborted")
    return collecting.result()


async def _disconnected(request: Request) -> None:
    """Returns when the client closes its connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _openai_model(name: str) -> dict:
    return {"id": name, "object": "model", "created": int(time.time()), "owned_by": "ortserve"}


def _triton_request(data: bytes, model: str, version: str) -> GenerateRequest:
    """Triton's generate body: text_input (or input_ids), parameters in `parameters` or at the top."""
    payload = codec.parse_json(data)
    parameters = payload.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidArgument("'parameters' must be a JSON object")
    parameters = {**{k: v for k, v in payload.items() if k not in _REQUEST_KEYS}, **parameters}
    text, ids = payload.get("text_input"), payload.get("input_ids")
    if text is not None and not isinstance(text, str):
        raise InvalidArgument(f"'text_input' must be a string, got {type(text).__name__}")
    if ids is not None and not isinstance(ids, list):
        raise InvalidArgument(f"'input_ids' must be a list of token ids, got {type(ids).__name__}")
    return GenerateRequest(model, version, text, ids, parameters, protocol="http")


def _triton_event(model: str, version: str, event: TokenEvent) -> dict:
    answer = {"model_name": model, "model_version": version, "text_output": event.text,
              "output_ids": event.token_ids}
    if event.finish_reason is not None:
        answer["finish_reason"] = event.finish_reason
        answer["usage"] = _usage(event.prompt_tokens, event.generated_tokens)
    return answer


async def _sse(tokens: AsyncIterator[TokenEvent], encode: Callable[[TokenEvent], dict]):
    try:
        async for event in tokens:
            yield f"data: {json.dumps(encode(event))}\n\n"
    except ServerError as error:
        yield f"data: {json.dumps({'error': error.message})}\n\n"
    finally:
        await tokens.aclose()  # a client gone: the sequence leaves the batch


def _openai_request(payload: dict) -> tuple[str, list, dict]:
    model, prompt = payload.get("model"), payload.get("prompt")
    if not isinstance(model, str) or not model:
        raise InvalidArgument("'model' must name a model (see GET /v1/models)")
    if isinstance(prompt, str) or _token_ids(prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or _token_ids(p) for p in prompt):
        prompts = prompt
    else:
        raise InvalidArgument("'prompt' must be a string, a list of strings, a list of token ids "
                              "or a list of such lists")
    _refuse_unsupported(payload, COMPLETION_PARAMETERS | OPENAI_FIELDS, OPENAI_NEUTRAL, "/v1/completions")
    parameters = {k: v for k, v in payload.items() if k in COMPLETION_PARAMETERS and v is not None}
    parameters.setdefault("max_tokens", OPENAI_DEFAULT_MAX_TOKENS)
    if parameters["max_tokens"] is None:
        del parameters["max_tokens"]
    return model, prompts, parameters


async def _openai_chunks(streams, chunk: dict, include_usage: bool, n: int, choices: Callable):
    """Choices stream one after another, each event as the chunks `choices(index, event)` makes (and
    `choices(index, None)` before a choice's first), then the usage where asked and `data: [DONE]`.
    Choice i*n+j is prompt i's j-th; each prompt's tokens count once in the usage."""
    prompt_tokens = completion_tokens = 0
    try:
        for index, tokens in enumerate(streams):
            for choice in choices(index, None):
                yield f"data: {json.dumps({**chunk, 'choices': [choice]})}\n\n"
            async for event in tokens:
                for choice in choices(index, event):
                    yield f"data: {json.dumps({**chunk, 'choices': [choice]})}\n\n"
                if event.finish_reason is not None:
                    prompt_tokens += event.prompt_tokens if index % n == 0 else 0
                    completion_tokens += event.generated_tokens
        if include_usage:
            usage = _usage(prompt_tokens, completion_tokens)
            yield f"data: {json.dumps({**chunk, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"
    except ServerError as error:
        yield f"data: {json.dumps(_openai_error_body(error))}\n\n"
    finally:
        for tokens in streams:
            await tokens.aclose()


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

