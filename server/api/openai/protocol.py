"""OpenAI's request bodies, each parsed and checked once: the fields ortserve serves, their defaults, and
the sampling parameters the generation engine takes."""

import re
from dataclasses import dataclass

from fastapi import Request

from server.api.http.context import json_of
from server.core.errors import InvalidArgument
from server.core.fields import boolean, integer
from server.core.types import STRUCTURED_OUTPUT_KEYS, ChatOptions, TextRequest, ToolUse

SAMPLING = {"max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "repetition_penalty",
            "stop_token_ids", "ignore_eos", "presence_penalty", "frequency_penalty", "logit_bias",
            "min_p", "min_tokens", "include_stop_str_in_output", "skip_special_tokens",
            *STRUCTURED_OUTPUT_KEYS}
COMPLETION_SAMPLING = SAMPLING | {"logprobs"}
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
COMPLETION_FIELDS = {"model", "prompt", "stream", "stream_options", "n", "best_of", "echo", "user",
                     "response_format", "metadata"}
CHAT_FIELDS = {"model", "messages", "stream", "stream_options", "n", "user", "max_completion_tokens",
               "logprobs", "top_logprobs", "response_format", "metadata", "store", "tools", "tool_choice",
               "parallel_tool_calls", "chat_template_kwargs", "add_generation_prompt",
               "continue_final_message", "reasoning_effort"}
RESERVED_TEMPLATE_KEYS = {"messages", "tools", "add_generation_prompt"}  # what the server itself passes
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")  # OpenAI's
EMBEDDING_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}
ENCODING_FORMATS = ("float", "base64")
# parameters ortserve does not implement, accepted only at the value that changes nothing (clients send them)
COMPLETION_NEUTRAL = {"suffix": None}
CHAT_NEUTRAL: dict = {}
MAX_CHOICES = 16
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit per /v1/embeddings request


@dataclass
class _Generation:
    """What completions and chat share: the model, `n` choices, streaming and its usage chunk, and the
    sampling parameters."""

    model: str
    n: int
    stream: bool
    include_usage: bool
    sampling: dict

    def choice_parameters(self, index: int) -> dict:
        """A seeded request's later choices take the next seeds, so that they differ and repeat."""
        if index and self.sampling.get("seed") is not None:
            return {**self.sampling, "seed": self.sampling["seed"] + index}
        return self.sampling

    @staticmethod
    def common(payload: dict) -> dict:
        stream = boolean(payload.get("stream"), "'stream'", False)
        options = payload.get("stream_options") or {}
        if not isinstance(options, dict):
            raise InvalidArgument("'stream_options' must be a JSON object")
        n = integer(payload.get("n"), "'n'", 1, MAX_CHOICES, default=1)
        return {"model": _model(payload), "n": n, "stream": stream,
                "include_usage": bool(options.get("include_usage"))}

    @staticmethod
    def sampling_of(payload: dict, keys: set, text_answer: bool = True) -> dict:
        """The sampling parameters sent, with OpenAI's `response_format` as the grammar it asks for where
        the answer may be text (a call that `tool_choice` forces leaves it nothing to shape, as OpenAI and
        vLLM take it)."""
        sampling = {k: v for k, v in payload.items() if k in keys and v is not None}
        structured = _response_format(payload.get("response_format"))
        if structured is not None and text_answer:
            if any(key in sampling for key in STRUCTURED_OUTPUT_KEYS):
                raise InvalidArgument("'response_format' and vLLM's structured outputs both constrain the "
                                      "output: send one")
            sampling["structured_outputs"] = structured
        return sampling


@dataclass
class CompletionRequest(_Generation):
    prompts: list  # strings or lists of token ids
    echo: bool
    best_of: int
    shown_logprobs: int | None  # `logprobs`: how many alternatives the answer shows, None: no logprobs

    @classmethod
    def from_json(cls, payload: dict) -> "CompletionRequest":
        common = cls.common(payload)
        prompt = payload.get("prompt")
        if isinstance(prompt, str) or _token_ids(prompt):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or _token_ids(p) for p in prompt):
            prompts = prompt
        else:
            raise InvalidArgument("'prompt' must be a string, a list of strings, a list of token ids "
                                  "or a list of such lists")
        refuse_unsupported(payload, COMPLETION_SAMPLING | COMPLETION_FIELDS, COMPLETION_NEUTRAL,
                            "/v1/completions")
        sampling = cls.sampling_of(payload, COMPLETION_SAMPLING)
        sampling.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
        n, best_of = common["n"], payload.get("best_of")
        if best_of is not None:
            expected = f"an integer from n ({n}) to {MAX_CHOICES}"
            integer(best_of, "'best_of'", n, MAX_CHOICES, expected=expected)
            if best_of > n and common["stream"]:
                raise InvalidArgument("'best_of' greater than 'n' cannot be streamed: the best choices are "
                                      "known only when all are finished")
        best_of = n if best_of is None else best_of
        shown = sampling.get("logprobs")
        if best_of > n:  # choices are ranked by their tokens' mean log-probability
            sampling["logprobs"] = shown or 0
        echo = boolean(payload.get("echo"), "'echo'", False)
        return cls(**common, sampling=sampling, prompts=prompts, echo=echo, best_of=best_of,
                   shown_logprobs=shown)

    @classmethod
    async def from_http(cls, request: Request) -> "CompletionRequest":
        return cls.from_json(await json_of(request))

    @property
    def generates(self) -> bool:
        """False where only the prompt is wanted back (`echo` with `max_tokens` 0)."""
        return not (self.echo and self.sampling.get("max_tokens") == 0)


@dataclass
class ChatRequest(_Generation):
    messages: list
    tools: ToolUse | None  # None: no tools, or tool_choice "none"
    chat_options: ChatOptions

    @classmethod
    def from_json(cls, payload: dict) -> "ChatRequest":
        common = cls.common(payload)
        refuse_unsupported(payload, SAMPLING | CHAT_FIELDS, CHAT_NEUTRAL, "/v1/chat/completions")
        tools = _tool_use(payload)
        sampling = cls.sampling_of(payload, SAMPLING, text_answer=tools is None or tools.choice == "auto")
        wanted, top = boolean(payload.get("logprobs"), "'logprobs'", False), payload.get("top_logprobs")
        if top is not None and not wanted:
            raise InvalidArgument("'top_logprobs' needs 'logprobs': true")
        if wanted:
            sampling["logprobs"] = 0 if top is None else top
        if payload.get("max_completion_tokens") is not None:
            sampling["max_tokens"] = payload["max_completion_tokens"]
        if sampling.get("max_tokens", 0) is None:
            del sampling["max_tokens"]
        return cls(**common, sampling=sampling, messages=payload.get("messages"), tools=tools,
                   chat_options=_chat_options(payload))

    @classmethod
    async def from_http(cls, request: Request) -> "ChatRequest":
        return cls.from_json(await json_of(request))


@dataclass
class EmbeddingRequest:
    text: TextRequest
    encoding: str  # "float" or "base64"

    @classmethod
    def from_json(cls, payload: dict) -> "EmbeddingRequest":
        unknown = sorted(set(payload) - EMBEDDING_FIELDS)
        if unknown:
            raise InvalidArgument(
                f"parameter {', '.join(map(repr, unknown))} is not supported by ortserve's /v1/embeddings"
            )
        model = _model(payload)
        encoding = payload.get("encoding_format") or "float"
        if encoding not in ENCODING_FORMATS:
            raise InvalidArgument(f"'encoding_format' must be float or base64, got {encoding!r}")
        dimensions = payload.get("dimensions")
        if dimensions is not None:
            integer(dimensions, "'dimensions'", 1, expected="a positive integer")
        inputs = text_inputs(payload.get("input"), "input")
        return cls(TextRequest(model, "embed", inputs, dimensions=dimensions, protocol="http",
                               max_inputs=MAX_EMBEDDING_INPUTS), encoding)

    @classmethod
    async def from_http(cls, request: Request) -> "EmbeddingRequest":
        return cls.from_json(await json_of(request))


TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _chat_options(payload: dict) -> ChatOptions:
    """vLLM's `chat_template_kwargs`, `add_generation_prompt` and `continue_final_message`, checked."""
    continued = boolean(payload.get("continue_final_message"), "'continue_final_message'", False)
    prompted = boolean(payload.get("add_generation_prompt"), "'add_generation_prompt'", not continued)
    if prompted and continued:
        raise InvalidArgument("'add_generation_prompt' and 'continue_final_message' cannot both be true: the "
                              "answer either starts a new assistant message or continues the last one")
    kwargs = payload.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise InvalidArgument("'chat_template_kwargs' must be a JSON object of the template's variables")
    reserved = sorted(RESERVED_TEMPLATE_KEYS & kwargs.keys())
    if reserved:
        raise InvalidArgument(f"'chat_template_kwargs' cannot set {', '.join(reserved)}: the request's own "
                              "fields do")
    effort = payload.get("reasoning_effort")
    if effort is not None:  # a template variable, as vLLM passes it (gpt-oss's templates read it)
        if effort not in REASONING_EFFORTS:
            raise InvalidArgument(f"'reasoning_effort' must be one of {', '.join(REASONING_EFFORTS)}, "
                                  f"got {effort!r}")
        kwargs = {"reasoning_effort": effort, **kwargs}
    return ChatOptions(prompted, continued, kwargs)


def _tool_use(payload: dict) -> ToolUse | None:
    """OpenAI's `tools`, `tool_choice` and `parallel_tool_calls`, checked."""
    tools, choice = payload.get("tools") or [], payload.get("tool_choice")
    if not isinstance(tools, list):
        raise InvalidArgument("'tools' must be a list of {\"type\": \"function\", \"function\": {...}}")
    names = [_function_name(index, tool) for index, tool in enumerate(tools)]
    parallel = boolean(payload.get("parallel_tool_calls"), "'parallel_tool_calls'", True)
    if isinstance(choice, dict):
        function = choice.get("function") if choice.get("type") == "function" else None
        choice = function.get("name") if isinstance(function, dict) else None
        if choice not in names:
            known = ", ".join(names) or "none sent"
            raise InvalidArgument(f"'tool_choice' must name one of the tools ({known}) as "
                                  "{\"type\": \"function\", \"function\": {\"name\": ...}}")
    elif choice not in (None, "none", "auto", "required"):
        raise InvalidArgument(
            f"'tool_choice' must be none, auto, required or a named function, got {choice!r}"
        )
    if choice not in (None, "none") and not tools:
        raise InvalidArgument("'tool_choice' needs 'tools'")
    if not tools or choice == "none":
        return None
    return ToolUse(tools, choice or "auto", parallel)


def _function_name(index: int, tool) -> str:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise InvalidArgument(f"tools[{index}] must be {{\"type\": \"function\", \"function\": {{\"name\": "
                              "letters, digits, _ or -, at most 64}}")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidArgument(f"tools[{index}].function.parameters must be a JSON schema (an object)")
    return name


def _response_format(value) -> dict | None:
    """OpenAI's `response_format` as vLLM's `structured_outputs` (None: free text)."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidArgument("'response_format' of type json_schema needs 'json_schema': "
                                  "{\"name\": ..., \"schema\": {...}}")
        schema = spec.get("schema", {"type": "object"})
        if not isinstance(schema, dict):
            raise InvalidArgument("'response_format.json_schema.schema' must be a JSON object (a schema)")
        return {"json": schema}
    raise InvalidArgument(f"'response_format' must be {{\"type\": \"text\" | \"json_object\" | "
                          f"\"json_schema\"}}, got {value!r}")


def text_inputs(value, field: str) -> list:
    """A string, a list of strings, a list of token ids, or a list of such lists: a list of inputs."""
    if isinstance(value, str):
        value = [value]
    elif isinstance(value, list) and value and all(type(i) is int for i in value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InvalidArgument(
            f"'{field}' must be a string, a list of strings, a list of token ids or a list of such lists"
        )
    for index, item in enumerate(value):
        if isinstance(item, str) and not item:
            raise InvalidArgument(f"'{field}' item {index} is an empty string")
        if not isinstance(item, str | list):
            raise InvalidArgument(
                f"'{field}' item {index} must be a string or a list of token ids, got {type(item).__name__}"
            )
    if len({isinstance(item, str) for item in value}) > 1:
        raise InvalidArgument(f"'{field}' mixes strings and token id lists; send one kind per request")
    return value


def _model(payload: dict) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidArgument("'model' must name a model (see GET /v1/models)")
    return model


def _token_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(type(i) is int for i in value)


def refuse_unsupported(payload: dict, known: set, neutral: dict, route: str) -> None:
    """A parameter ortserve does not implement is refused, unless sent at the value that changes nothing."""
    unsupported = sorted(key for key, value in payload.items()
                         if key not in known and not (key in neutral and value in (None, neutral[key])))
    if unsupported:
        names = ", ".join(map(repr, unsupported))
        raise InvalidArgument(f"parameter {names} is not supported by ortserve's {route}")
