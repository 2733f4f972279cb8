"""Generation: a prompt (text, token ids or a chat) in, the model's tokens out as a stream; prompts
scored (OpenAI's `echo`); and an infer request to a decoupled model read as a generation request."""

import time

import numpy as np

from server.core import jsontext
from server.core.errors import InvalidArgument, failure_reason
from server.core.stats import Timing
from server.core.types import (
    GenerateRequest,
    InferRequest,
    InferResponse,
    Tensor,
    TokenEvent,
    TokenLogprob,
    ToolCall,
)
from server.generation.engine import TokenStream
from server.generation.settings import GenerationSettings
from server.repository.model import ModelVersion
from server.repository.registry import ModelRegistry
from server.text import reasoning
from server.tracing.spans import RequestTrace, Tracer

GENERATION_INPUTS = ("text_input", "input_ids", "sampling_parameters")
GENERATION_OUTPUTS = ("text_output", "output_ids")


class GenerationService:
    def __init__(self, registry: ModelRegistry, tracer: Tracer):
        self.registry = registry
        self.tracer = tracer

    def model_names(self) -> list[str]:
        """The ready models the OpenAI routes serve: generation models and encoders."""
        models = self.registry.ready_models()
        return sorted({m.name for m in models if m.engine is not None or m.text is not None})

    def generate(self, request: GenerateRequest) -> TokenStream:
        """Admits the request, raising any error before the first token, and returns its tokens."""
        start = time.perf_counter_ns()
        model = self._model(request)
        trace = self.tracer.start(model.name, request.protocol, request.traceparent, "GenerateRequest")
        try:
            prompt, params, opened = model.engine.prompting.prepare(
                request.text, request.input_ids, request.parameters, request.messages, request.tools,
                request.chat_options,
            )
            tokens = model.engine.submit(prompt, params, _recorder(model, start, request.protocol, trace))
            tokens.model_version = str(model.version)
            tokens.reasoning = opened
            return tokens
        except BaseException as error:
            elapsed = time.perf_counter_ns() - start
            model.stats.record_failure(elapsed, failure_reason(error), request.protocol)
            if trace is not None:
                trace.end(str(model.version), error=error)
            raise

    def tool_calls(self, request: GenerateRequest, text: str) -> tuple[str | None, list[ToolCall]]:
        """A chat answer's content and the tool calls it makes (none where the request gave no tools)."""
        if request.tools is None:
            return text, []
        return self._model(request).engine.prompting.tool_calls(text, request.tools)

    def streamable(self, request: GenerateRequest, text: str, sent: int = 0) -> int:
        """How much of a chat answer so far is surely content (all of it where the request gave no tools);
        `sent` of it already went out."""
        if request.tools is None:
            return len(text)
        return self._model(request).engine.prompting.streamable(text, sent)

    async def echo(self, request: GenerateRequest, logprobs: int | None) -> TokenEvent:
        """The prompt as the model reads it: its token ids and text, and with `logprobs` each token's
        log-probability given those before it and that many most likely tokens (OpenAI's `echo`; the
        first token has none)."""
        model = self._model(request)
        engine = model.engine
        try:
            prompt = engine.prompting.prompt(request.text, request.input_ids)
            scored = [] if logprobs is None else await engine.score(prompt, logprobs)
        except BaseException as error:
            model.stats.record_failure(0, failure_reason(error), request.protocol)
            raise
        text = request.text if request.text is not None else engine.token_text(prompt)
        first = [] if logprobs is None else [TokenLogprob(engine.token_name(prompt[0]), None, None)]
        return TokenEvent(prompt, text, None, len(prompt), 0, first + scored)

    @staticmethod
    def split_reasoning(text: str, opened: bool) -> tuple[str | None, str]:
        """A reasoning model's answer as (its thinking, the rest); see `TokenStream.reasoning`."""
        return reasoning.split(text, opened)

    @staticmethod
    def reasoning_stream(opened: bool) -> reasoning.ReasoningStream:
        """The same cut made piece by piece, as an answer streams."""
        return reasoning.ReasoningStream(opened)

    def thinks(self, model_name: str) -> bool:
        """Whether the model is a reasoning model (its chat template cuts `</think>` from past answers)."""
        chat = self.settings(model_name).chat
        return chat is not None and chat.reasoning

    def settings(self, model_name: str) -> GenerationSettings:
        """A generation model's settings: its context, its chat template (None where it has none)."""
        return self._model(GenerateRequest(model_name)).engine.settings

    def tokens(self, request: GenerateRequest, special_tokens: bool | None = None) -> tuple[list[int], int]:
        """The prompt's token ids as the model would read them, and the model's context (vLLM's
        /tokenize)."""
        engine = self._model(request).engine
        ids = engine.prompting.prompt(request.text, None, request.messages, request.tools,
                                      request.chat_options, special_tokens)
        return ids, engine.settings.max_sequence_length

    def text(self, model_name: str, ids: list[int]) -> str:
        """Token ids as text, special tokens written out (vLLM's /detokenize)."""
        engine = self._model(GenerateRequest(model_name)).engine
        vocab = engine.decoder.vocab_size
        outside = [token for token in ids if vocab is not None and token >= vocab]
        if outside:
            raise InvalidArgument(f"token {outside[0]} is outside the vocabulary of {vocab} tokens")
        if engine.codec is None:
            raise InvalidArgument(f"model '{model_name}' has no tokenizer: it reads and writes token ids")
        return engine.codec.decode(ids, skip_special_tokens=False)

    async def infer_stream(self, request: InferRequest):
        """An infer request to a generation model: one response per step's new tokens."""
        model = self.registry.get(request.model_name, request.model_version)
        tokens = self.generate(_generate_request(request, model))
        try:
            async for event in tokens:
                yield _generation_response(model, request.id, event)
        finally:
            await tokens.aclose()

    async def infer(self, request: InferRequest) -> InferResponse:
        """An infer request to a generation model: the whole generation as one response."""
        model = self.registry.get(request.model_name, request.model_version)
        whole = await self.generate(_generate_request(request, model)).collect()
        return _generation_response(model, request.id, whole)

    def _model(self, request: GenerateRequest) -> ModelVersion:
        model = self.registry.get(request.model_name, request.model_version)
        if model.engine is None:
            raise InvalidArgument(
                f"model '{model.name}' is not a generation model (its config has no "
                "model_transaction_policy {{ decoupled: true }}); use its infer endpoint"
            )
        return model


def _recorder(model: ModelVersion, start: int, protocol: str, trace: RequestTrace | None):
    """Counts a generation request once, as a success or a failure, when its stream ends, and ends its
    trace: QUEUE_START, COMPUTE_START (its prompt's first run) and FIRST_TOKEN among its events, its token
    counts and time to first token as attributes."""

    def record(outcome: str, stream: TokenStream) -> None:
        elapsed = time.perf_counter_ns() - start
        if outcome == "success":
            model.stats.inference_count += 1
            queued = _queue_ns(stream)
            model.stats.record_success(elapsed, Timing(queue_ns=queued, infer_ns=elapsed - queued), protocol)
        else:
            model.stats.record_failure(elapsed, outcome, protocol)
        if trace is not None:
            _end_trace(trace, model, outcome, stream)

    return record


def _queue_ns(stream: TokenStream) -> int:
    return 0 if stream.queued is None else stream.queued[1] - stream.queued[0]


def _end_trace(trace: RequestTrace, model: ModelVersion, outcome: str, stream: TokenStream) -> None:
    first, last = stream.first_token_ns, stream.last
    if stream.queued is not None:
        trace.events += zip(("QUEUE_START", "COMPUTE_START"), stream.queued)
    if first is not None:
        trace.events.append(("FIRST_TOKEN", first))
    trace.end(
        str(model.version), outcome=outcome,
        time_to_first_token_ms=None if first is None else (first - trace.start_ns) / 1e6,
        prompt_tokens=last.prompt_tokens if last else None,
        generated_tokens=last.generated_tokens if last else None,
        finish_reason=last.finish_reason.value if last and last.finish_reason else None,
    )


def _generate_request(request: InferRequest, model: ModelVersion) -> GenerateRequest:
    """An infer request to a generation model: text_input or input_ids, and sampling parameters
    from the request's parameters and/or a sampling_parameters JSON input."""
    inputs = {tensor.name: tensor for tensor in request.inputs}
    unknown = [name for name in inputs if name not in GENERATION_INPUTS]
    if unknown:
        raise InvalidArgument(
            f"unexpected input {', '.join(map(repr, unknown))} for generation model '{model.name}'; "
            f"expected {', '.join(GENERATION_INPUTS)}"
        )
    unknown = [output.name for output in request.outputs if output.name not in GENERATION_OUTPUTS]
    if unknown:
        raise InvalidArgument(
            f"unexpected output {', '.join(map(repr, unknown))} for generation model '{model.name}'; "
            f"expected {', '.join(GENERATION_OUTPUTS)}"
        )
    parameters = dict(request.parameters)
    if "sampling_parameters" in inputs:
        parameters.update(_json_input(inputs["sampling_parameters"]))
    text = ids = None
    if "text_input" in inputs:
        text = _one_string(inputs["text_input"])
    if "input_ids" in inputs:
        ids = [int(i) for i in inputs["input_ids"].data.reshape(-1)]
    return GenerateRequest(model.name, str(model.version), text, ids, parameters, request.protocol)


def _one_string(tensor: Tensor) -> str:
    if tensor.datatype != "BYTES" or tensor.data.size != 1:
        raise InvalidArgument(
            f"input '{tensor.name}' must be BYTES holding one string, "
            f"got {tensor.datatype} {list(tensor.shape)}"
        )
    value = tensor.data.reshape(-1)[0]
    try:
        return value.decode() if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError:
        raise InvalidArgument(f"input '{tensor.name}' is not valid UTF-8") from None


def _json_input(tensor: Tensor) -> dict:
    value = jsontext.loads(_one_string(tensor), "input 'sampling_parameters'")
    if not isinstance(value, dict):
        raise InvalidArgument("input 'sampling_parameters' must be a JSON object")
    return value


def _generation_response(model: ModelVersion, request_id: str, event: TokenEvent) -> InferResponse:
    outputs = [
        Tensor("text_output", "BYTES", np.array([event.text.encode()], dtype=object)),
        Tensor("output_ids", "INT64", np.array(event.token_ids, dtype=np.int64)),
    ]
    parameters = {}
    if event.finish_reason is not None:
        parameters = {"finish_reason": event.finish_reason.value, "triton_final_response": True}
    return InferResponse(model.name, str(model.version), request_id, outputs, {}, parameters)
