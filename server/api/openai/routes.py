"""The OpenAI routes: each parses its body into its request value, calls the service, and answers in
OpenAI's shapes (errors included, through `OpenAIRoute`)."""

import base64
import dataclasses
import json
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from server.api.http.context import Json, Served, trace_context
from server.api.http.streams import SSE_HEADERS, collect, usage
from server.api.openai.errors import OpenAIRoute
from server.api.openai.protocol import ChatRequest, CompletionRequest, EmbeddingRequest
from server.api.openai.rerank import RerankRequest, ScoreRequest, reranker
from server.api.openai.response_items import Answer, events
from server.api.openai.responses import ResponsesRequest, ResponseStore
from server.api.openai.streaming import (
    ReasoningChoices,
    ToolCallChoices,
    chat_choices,
    chat_logprobs,
    chat_message,
    chunks,
    completion_choices,
    completion_logprobs,
)
from server.api.openai.tokenize import detokenize_request
from server.core.errors import NotFound, ServerError
from server.core.types import FinishReason, GenerateRequest, TextRequest, TokenEvent, ToolCall
from server.service.services import Service

router = APIRouter(route_class=OpenAIRoute)
Completion = Annotated[CompletionRequest, Depends(CompletionRequest.from_http)]
Chat = Annotated[ChatRequest, Depends(ChatRequest.from_http)]
Embedding = Annotated[EmbeddingRequest, Depends(EmbeddingRequest.from_http)]
Responses = Annotated[ResponsesRequest, Depends(ResponsesRequest.from_http)]
Rerank = Annotated[RerankRequest, Depends(RerankRequest.from_http)]
Score = Annotated[ScoreRequest, Depends(ScoreRequest.from_http)]


@router.get("/v1/models")
async def models(service: Served):
    return {"object": "list", "data": [_model(name) for name in service.generation.model_names()]}


@router.get("/v1/models/{model}")
async def model(service: Served, model: str):
    if model not in service.generation.model_names():
        raise NotFound(f"The model '{model}' does not exist (see GET /v1/models)")
    return _model(model)


@router.post("/v1/completions")
async def completions(request: Request, service: Served, body: Completion):
    groups = []
    try:
        for prompt in body.prompts:
            groups.append(await _prompt_choices(service, body, prompt, trace_context(request)))
    except ServerError:
        for group in groups:
            await group.aclose()
        raise
    completion = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                  "created": int(time.time()), "model": body.model}
    if body.stream:
        streams = [stream for group in groups for stream in group.echoed_streams()]
        answer = chunks(streams, completion, body.include_usage, body.n, completion_choices)
        return StreamingResponse(answer, media_type="text/event-stream", headers=SSE_HEADERS)
    wholes = await collect(request, [stream for group in groups for stream in group.streams])
    choices, prompt_tokens, completion_tokens, cached_tokens = [], 0, 0, 0
    for group in groups:
        generated, wholes = wholes[:len(group.streams)], wholes[len(group.streams):]
        for whole in group.best(generated, body.n, body.shown_logprobs is not None):
            choices.append({"index": len(choices), "text": whole.text, "logprobs": completion_logprobs(whole),
                            "finish_reason": whole.finish_reason})
        first = group.echoed or generated[0]
        prompt_tokens += first.prompt_tokens
        cached_tokens += first.cached_tokens
        completion_tokens += sum(whole.generated_tokens for whole in generated)
    counts = usage(prompt_tokens, completion_tokens, cached_tokens)
    return {**completion, "choices": choices, "usage": counts}


async def _prompt_choices(service: Service, body: CompletionRequest, prompt, traceparent: str) -> "_Choices":
    """One prompt's echo (where asked) and its `best_of` generations."""
    text, ids = (prompt, None) if isinstance(prompt, str) else (None, prompt)
    echoed = None
    if body.echo:  # tokenized once: the echo's ids are the prompt generated from
        echoed = await service.generation.echo(
            GenerateRequest(body.model, text=text, input_ids=ids, protocol="http"), body.shown_logprobs)
        text, ids = None, echoed.token_ids
    streams = [service.generation.generate(GenerateRequest(
        body.model, text=text, input_ids=ids, protocol="http", parameters=body.choice_parameters(index),
        traceparent=traceparent))
        for index in range(body.best_of if body.generates else 0)]
    return _Choices(echoed, streams)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, service: Served, body: Chat):
    streams, asked = [], []
    try:
        for index in range(body.n):
            choice = GenerateRequest(body.model, parameters=body.choice_parameters(index), protocol="http",
                                     messages=body.messages, tools=body.tools, chat_options=body.chat_options,
                                     traceparent=trace_context(request))
            streams.append(service.generation.generate(choice))
            asked.append(choice)
    except ServerError:
        for tokens in streams:
            await tokens.aclose()
        raise
    completion = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                  "created": int(time.time()), "model": body.model}
    opened = streams[0].reasoning
    if body.stream:
        chunk = {**completion, "object": "chat.completion.chunk"}
        shape = answer_shape(service, asked[0], opened)
        answer = chunks(streams, chunk, body.include_usage, len(streams), shape)
        return StreamingResponse(answer, media_type="text/event-stream", headers=SSE_HEADERS)
    wholes = await collect(request, streams)
    choices = []
    for index, whole in enumerate(wholes):
        reasoning, content, calls = read_answer(service, asked[0], whole.text, opened)
        choices.append({"index": index, **chat_message(whole, content, calls, reasoning),
                        "logprobs": chat_logprobs(whole)})
    return {**completion, "choices": choices,
            "usage": usage(wholes[0].prompt_tokens, sum(whole.generated_tokens for whole in wholes),
                           wholes[0].cached_tokens)}


def answer_shape(service: Service, asked: GenerateRequest, opened: bool | None) -> Callable:
    """How a chat answer streams as chunks: its content while it surely is content, its calls whole where
    tools were offered, a reasoning model's thinking apart (`opened`: see `TokenStream.reasoning`)."""
    shape = chat_choices
    if asked.tools:
        shape = ToolCallChoices(partial(service.generation.tool_calls, asked),
                                partial(service.generation.streamable, asked))
    if opened is not None:
        shape = ReasoningChoices(shape, partial(service.generation.reasoning_stream, opened))
    return shape


def read_answer(service: Service, asked: GenerateRequest, text: str, opened: bool | None
                ) -> tuple[str | None, str | None, list[ToolCall]]:
    """A whole chat answer's thinking (None but for a reasoning model), content and calls."""
    reasoning, rest = (None, text) if opened is None else service.generation.split_reasoning(text, opened)
    return (reasoning, *service.generation.tool_calls(asked, rest))


@router.post("/v1/responses")
async def responses(request: Request, service: Served, body: Responses):
    chat = body.chat
    asked = GenerateRequest(chat.model, parameters=chat.sampling, protocol="http", messages=chat.messages,
                            tools=chat.tools, chat_options=chat.chat_options,
                            traceparent=trace_context(request))
    tokens = service.generation.generate(asked)
    answer = Answer(body, partial(service.generation.tool_calls, asked), _stored(request))
    opened = tokens.reasoning
    if chat.stream:
        streamable = partial(service.generation.streamable, asked)
        thinking = None if opened is None else service.generation.reasoning_stream(opened)
        return StreamingResponse(events(answer, tokens, streamable, thinking), media_type="text/event-stream",
                                 headers=SSE_HEADERS)
    [whole] = await collect(request, [tokens])
    status, output = answer.finished(whole, *read_answer(service, asked, whole.text, opened))
    return json_response(answer.document(status, output, whole))


@router.get("/v1/responses/{response_id}")
async def stored_response(request: Request, response_id: str):
    return json_response(_stored(request).get(response_id))


@router.get("/v1/responses/{response_id}/input_items")
async def response_input_items(request: Request, response_id: str):
    return json_response(_stored(request).input_items(response_id, request.query_params))


@router.delete("/v1/responses/{response_id}")
async def delete_response(request: Request, response_id: str):
    _stored(request).delete(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


def _stored(request: Request) -> ResponseStore:
    return request.app.state.responses


@router.post("/v1/embeddings")
async def embeddings(service: Served, body: Embedding):
    result = await service.text.encode(body.text)
    return json_response({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _encoded(v, body.encoding)}
                 for i, v in enumerate(result.vectors)],
        "model": result.model_name,
        "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
    })


@router.post("/v1/rerank")
@router.post("/v2/rerank")
async def rerank(service: Served, body: Rerank):
    """Cohere's (and vLLM's, Jina's): long documents are truncated to the model's length, as Cohere's."""
    name = reranker(body.model, service.text.models())
    result = await service.text.encode(TextRequest(name, "classify", [body.query] * len(body.documents),
                                                   pairs=body.documents, truncate=True, protocol="http"))
    return json_response(body.answer(result))


@router.post("/score")
@router.post("/v1/score")
async def score(service: Served, body: Score):
    """vLLM's: each pair's cross-encoder score, in the order sent."""
    name = reranker(body.model, service.text.models())
    first, second = zip(*body.pairs)
    result = await service.text.encode(TextRequest(name, "classify", list(first), pairs=list(second),
                                                   truncate=True, protocol="http"))
    return json_response(body.answer(result))


@router.post("/detokenize")
async def detokenize(service: Served, payload: Json):
    """vLLM's: a generation model's token ids as text, special tokens written out."""
    model, tokens = detokenize_request(payload)
    return {"prompt": service.generation.text(model, tokens)}


def json_response(document) -> Response:
    """Plain `json.dumps`: FastAPI's encoder walks every float of a vector in Python first."""
    return Response(json.dumps(document), media_type="application/json")


def _encoded(vector: np.ndarray, encoding: str):
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()


def _model(name: str) -> dict:
    return {"id": name, "object": "model", "created": int(time.time()), "owned_by": "ortserve"}


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
        return dataclasses.replace(self.echoed, finish_reason=FinishReason.LENGTH)

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
