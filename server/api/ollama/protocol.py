"""Ollama's request bodies, each turned into the request the OpenAI front end would make of it: a chat's
messages, tools, `format` and `options` become a chat body that `ChatRequest` checks, so every rule of chat
applies unchanged."""

import json
from dataclasses import dataclass

from server.api.openai.protocol import ChatRequest, text_inputs
from server.core.errors import InvalidArgument
from server.core.fields import boolean, integer
from server.core.types import GenerateRequest, TextRequest

CHAT_FIELDS = {"model", "messages", "tools", "format", "options", "stream", "keep_alive", "think"}
GENERATE_FIELDS = {"model", "prompt", "suffix", "system", "raw", "format", "options", "stream", "keep_alive",
                   "think", "images"}
EMBED_FIELDS = {"model", "input", "truncate", "dimensions", "options", "keep_alive"}
SAMPLING_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                    "seed": "seed", "stop": "stop", "repeat_penalty": "repetition_penalty",
                    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}
# options that tune llama.cpp's runtime (memory, threads, GPU layers, context allocation): no effect here
RUNTIME_OPTIONS = {"numa", "num_ctx", "num_batch", "num_gpu", "main_gpu", "low_vram", "f16_kv", "logits_all",
                   "vocab_only", "use_mmap", "use_mlock", "embedding_only", "num_thread", "num_keep",
                   "penalize_newline"}
NEUTRAL_OPTIONS = {"typical_p": 1.0, "tfs_z": 1.0, "mirostat": 0, "repeat_last_n": -1}  # samplers not here
NO_LIMIT = (-1, -2)  # num_predict: until the end (-1) or the context is full (-2)


def model_name(payload: dict) -> str:
    """The model, Ollama's `:latest` tag dropped (ortserve's models have one version each name serves)."""
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidArgument("'model' must name a model (see GET /api/tags)")
    return model.removesuffix(":latest")


@dataclass
class OllamaChat:
    request: GenerateRequest
    stream: bool
    think: bool | None  # True: the thinking apart, as `thinking`; False: the model asked not to think

    @classmethod
    def from_json(cls, payload: dict) -> "OllamaChat":
        _refuse_unknown(payload, CHAT_FIELDS, "/api/chat")
        messages = payload.get("messages")
        if not isinstance(messages, list):
            raise InvalidArgument("'messages' must be a list of {role, content} objects")
        think = boolean(payload.get("think"), "'think'")
        body = {"model": model_name(payload), "messages": [_message(i, m) for i, m in enumerate(messages)],
                **_sampling(payload), **_format(payload.get("format")), **_thinking(think)}
        if payload.get("tools"):
            body["tools"] = payload["tools"]
        chat = ChatRequest.from_json(body)
        request = GenerateRequest(chat.model, parameters=chat.sampling, messages=chat.messages,
                                  tools=chat.tools, chat_options=chat.chat_options, protocol="http")
        return cls(request, _stream(payload), think)


@dataclass
class OllamaGenerate:
    request: GenerateRequest | None  # None: an empty prompt, which only asks that the model be loaded
    model: str
    stream: bool
    think: bool | None  # as /api/chat's

    @classmethod
    def from_json(cls, payload: dict, has_template) -> "OllamaGenerate":
        """`has_template(model)`: whether the model has a chat template to wrap the prompt in (Ollama's
        template; without one, or with `raw`, the prompt is the model's text as it is)."""
        _refuse_unknown(payload, GENERATE_FIELDS, "/api/generate")
        if payload.get("images"):
            raise InvalidArgument("'images' are not supported: the models ortserve serves read text")
        if payload.get("suffix"):
            raise InvalidArgument("'suffix' is not supported: ortserve does not fill in the middle")
        model, prompt = model_name(payload), payload.get("prompt") or ""
        if not isinstance(prompt, str):
            raise InvalidArgument("'prompt' must be a string")
        system = payload.get("system") or ""
        if not isinstance(system, str):
            raise InvalidArgument("'system' must be a string")
        think = boolean(payload.get("think"), "'think'")
        if not prompt:
            return cls(None, model, _stream(payload), think)
        raw = boolean(payload.get("raw"), "'raw'", False)
        sampling = {**_sampling(payload), **_format(payload.get("format"))}
        if raw or not has_template(model):
            if system:
                raise InvalidArgument("'system' goes in the model's chat template, and with 'raw' (or a "
                                      "model without a template) the prompt is sent as it is: put it in the "
                                      "prompt")
            if think is not None:
                raise InvalidArgument("'think' asks the template to think or not, and with 'raw' (or a model "
                                      "without a template) the prompt is sent as it is")
            completion = ChatRequest.sampling_of(sampling, set(sampling) - {"response_format"})
            request = GenerateRequest(model, text=prompt, parameters=completion, protocol="http")
        else:
            messages = [{"role": "system", "content": system}] if system else []
            messages.append({"role": "user", "content": prompt})
            body = {"model": model, "messages": messages, **sampling, **_thinking(think)}
            chat = ChatRequest.from_json(body)
            request = GenerateRequest(model, parameters=chat.sampling, messages=chat.messages,
                                      chat_options=chat.chat_options, protocol="http")
        return cls(request, model, _stream(payload), think)


def embed_request(payload: dict) -> TextRequest:
    """Ollama's /api/embed: unit-length vectors; texts longer than the model's are cut unless `truncate` is
    false."""
    _refuse_unknown(payload, EMBED_FIELDS, "/api/embed")
    _sampling(payload)  # options are checked; an embedding has none that change it
    dimensions = payload.get("dimensions")
    if dimensions is not None:
        integer(dimensions, "'dimensions'", 1, expected="a positive integer")
    return TextRequest(model_name(payload), "embed", text_inputs(payload.get("input"), "input"),
                       truncate=boolean(payload.get("truncate"), "'truncate'", True), normalize=True,
                       dimensions=dimensions, protocol="http")


def older_embed_request(payload: dict) -> TextRequest:
    """Ollama's /api/embeddings: one `prompt`, cut to the model's length."""
    _refuse_unknown(payload, {"model", "prompt", "options", "keep_alive"}, "/api/embeddings")
    return embed_request({"model": payload.get("model"), "input": payload.get("prompt"),
                          "options": payload.get("options")})


def _refuse_unknown(payload: dict, known: set, route: str) -> None:
    unknown = sorted(set(payload) - known)
    if unknown:
        raise InvalidArgument(f"field {', '.join(map(repr, unknown))} is not supported by ortserve's {route}")


def _thinking(think: bool | None) -> dict:
    """`think: false` as Qwen 3's template variable (a template without it ignores it)."""
    return {"chat_template_kwargs": {"enable_thinking": False}} if think is False else {}


def _stream(payload: dict) -> bool:
    return boolean(payload.get("stream"), "'stream'", True)  # Ollama streams unless told not to


def _message(index: int, message) -> dict:
    """An Ollama message as OpenAI's: tool calls with ids and JSON-string arguments, `thinking` as
    `reasoning_content`."""
    if not isinstance(message, dict):
        raise InvalidArgument(f"messages[{index}] must be a {{role, content}} object")
    if message.get("images"):
        raise InvalidArgument(f"messages[{index}].images are not supported: the models ortserve serves read "
                              "text")
    converted = {key: message[key] for key in ("role", "content") if key in message}
    if message.get("thinking") is not None:  # an answer's thinking, sent back
        converted["reasoning_content"] = message["thinking"]
    calls = message.get("tool_calls")
    if calls:
        if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("function"), dict)
                                                  for c in calls):
            raise InvalidArgument(f"messages[{index}].tool_calls must be a list of {{\"function\": {{name, "
                                  "arguments}}}} objects")
        converted["tool_calls"] = [
            {"id": f"call_{index}_{n}", "type": "function",
             "function": {"name": call["function"].get("name"),
                          "arguments": json.dumps(call["function"].get("arguments") or {})}}
            for n, call in enumerate(calls)]
    return converted


def _sampling(payload: dict) -> dict:
    """`options` as the chat's sampling parameters; runtime options are accepted (they tune llama.cpp's
    own memory and threads), samplers ortserve does not have only at their neutral values."""
    options = payload.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidArgument("'options' must be a JSON object")
    sampling = {}
    for key, value in options.items():
        if value is None:  # as absent, as Ollama reads it
            continue
        if key in SAMPLING_OPTIONS:
            sampling[SAMPLING_OPTIONS[key]] = value
        elif key == "num_predict":
            if integer(value, "options 'num_predict'", -2) not in NO_LIMIT:
                sampling["max_tokens"] = integer(value, "options 'num_predict'", 1,
                                                 expected="a positive integer, -1 or -2")
        elif key in NEUTRAL_OPTIONS:
            if value != NEUTRAL_OPTIONS[key]:
                raise InvalidArgument(f"option '{key}' is not supported (only {NEUTRAL_OPTIONS[key]!r}, "
                                      "which changes nothing)")
        elif key not in RUNTIME_OPTIONS:
            raise InvalidArgument(f"option '{key}' is not an Ollama option ortserve knows")
    return sampling


def _format(value) -> dict:
    """Ollama's `format`: "json", or a JSON schema, as OpenAI's `response_format`."""
    if value in (None, ""):
        return {}
    if value == "json":
        return {"response_format": {"type": "json_object"}}
    if isinstance(value, dict):
        schema = {"name": "format", "schema": value}
        return {"response_format": {"type": "json_schema", "json_schema": schema}}
    raise InvalidArgument(f"'format' must be \"json\" or a JSON schema, got {value!r}")
