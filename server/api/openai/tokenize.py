"""vLLM's tokenization routes for generation models: `POST /tokenize` (a prompt, or a chat rendered with
the model's template, as the model would read it) and `POST /detokenize` (token ids back to text). TEI's
`/tokenize` shares the path: a body with `prompt` or `messages` is vLLM's."""

from dataclasses import dataclass

from server.api.openai.protocol import ChatRequest
from server.core.errors import InvalidArgument
from server.core.fields import boolean
from server.core.types import GenerateRequest

PROMPT_FIELDS = {"model", "prompt", "add_special_tokens"}
CHAT_FIELDS = {"model", "messages", "add_special_tokens", "add_generation_prompt", "continue_final_message",
               "chat_template_kwargs", "tools"}


def is_vllm(payload: dict) -> bool:
    return "prompt" in payload or "messages" in payload


@dataclass
class TokenizeRequest:
    generate: GenerateRequest  # what would be generated from: the prompt, or the chat and its tools
    special_tokens: bool | None  # None: as the model reads it (a prompt's, none added to a chat)

    @classmethod
    def from_json(cls, payload: dict) -> "TokenizeRequest":
        chat = "messages" in payload
        known = CHAT_FIELDS if chat else PROMPT_FIELDS
        unknown = sorted(set(payload) - known)
        if unknown:
            given = "messages" if chat else "a prompt"
            raise InvalidArgument(f"field {', '.join(map(repr, unknown))} is not supported by /tokenize; "
                                  f"with {given} it takes {', '.join(sorted(known))}")
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidArgument("'model' must name a generation model (see GET /v1/models)")
        special = boolean(payload.get("add_special_tokens"), "'add_special_tokens'")
        if chat:
            parsed = ChatRequest.from_json(payload)
            request = GenerateRequest(model, messages=parsed.messages, tools=parsed.tools,
                                      chat_options=parsed.chat_options, protocol="http")
        else:
            prompt = payload.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                raise InvalidArgument("'prompt' must be a non-empty string")
            request = GenerateRequest(model, text=prompt, protocol="http")
        return cls(request, special)


def detokenize_request(payload: dict) -> tuple[str, list[int]]:
    unknown = sorted(set(payload) - {"model", "tokens"})
    if unknown:
        raise InvalidArgument(f"field {', '.join(map(repr, unknown))} is not supported by /detokenize; it "
                              "takes model, tokens")
    model, tokens = payload.get("model"), payload.get("tokens")
    if not isinstance(model, str) or not model:
        raise InvalidArgument("'model' must name a generation model (see GET /v1/models)")
    if not isinstance(tokens, list) or not all(type(t) is int and t >= 0 for t in tokens):
        raise InvalidArgument("'tokens' must be a list of token ids (integers from 0)")
    return model, tokens
