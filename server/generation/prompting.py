"""What a generation request asks, in its model's terms: the prompt's token ids (a chat rendered with the
model's template), the sampling parameters checked against the context, the grammar of a chat's tool
calls and of a reasoning model's thinking; and the calls read back out of the answer."""

import dataclasses
import functools

from server.core.errors import InvalidArgument
from server.core.types import PLAIN_CHAT, STRUCTURED_OUTPUT_KEYS, ChatOptions, ToolCall, ToolUse
from server.generation.sampling import SamplingParams, sampling_params
from server.generation.settings import GenerationSettings
from server.generation.text import TextCodec, prompt_ids
from server.text.reasoning import CLOSE as THINKING_CLOSE
from server.text.reasoning import OPEN as THINKING_OPEN
from server.text.reasoning import opens_reasoning, thinking_grammar
from server.text.tools import CALL_MARKERS
from server.text.tools import grammar as tool_grammar
from server.text.tools import parse as parse_tool_calls
from server.text.tools import streamable as tool_text_streamable


class Prompting:
    """One generation model's reading of requests and answers (its template, tokenizer, context)."""

    def __init__(self, settings: GenerationSettings, codec: TextCodec | None, vocab_size: int | None):
        self.settings, self.codec, self.vocab_size = settings, codec, vocab_size

    def prompt(self, text: str | None, ids: list[int] | None, messages: list | None = None,
               tools: ToolUse | None = None, options: ChatOptions = PLAIN_CHAT,
               special_tokens: bool | None = None) -> list[int]:
        """The prompt's token ids (of a chat rendered with the model's template, when `messages`).
        `special_tokens`: whether the tokenizer adds its own around the text (None: to a prompt, not to a
        chat, whose template writes them)."""
        if messages is not None:
            if self.settings.chat is None:
                raise InvalidArgument("this model has no chat template (its tokenizer files define none); "
                                      "use /v1/completions with a prompt")
            text, ids = self.settings.chat.render(messages, options, self._shown(tools)), None
        special = messages is None if special_tokens is None else special_tokens
        return prompt_ids(self.codec, text, ids, self.vocab_size, special_tokens=special)

    def prepare(
        self, text: str | None, ids: list[int] | None, parameters: dict, messages: list | None = None,
        tools: ToolUse | None = None, options: ChatOptions = PLAIN_CHAT,
    ) -> tuple[list[int], SamplingParams, bool | None]:
        """The prompt's token ids, the sampling parameters, and for a reasoning model's chat whether the
        prompt leaves its answer inside a `<think>` block (None for others); or a clear error. A chat
        that must call a tool gets the grammar of its calls, after the thinking where the model thinks."""
        prompt = self.prompt(text, ids, messages, tools, options)
        if tools is not None:
            parameters = self._calling(parameters, tools)
        limit = self.settings.max_sequence_length
        if len(prompt) >= limit:
            raise InvalidArgument(
                f"the prompt has {len(prompt)} tokens; this model allows at most {limit - 1} "
                f"(context {limit}, one token left to generate)"
            )
        room = limit - len(prompt)
        params = sampling_params(parameters, min(self.settings.default_max_tokens, room), 1 << 30)
        vocab = self.vocab_size
        outside = [token for token, _ in params.logit_bias if vocab is not None and token >= vocab]
        if outside:
            raise InvalidArgument(f"logit_bias names token {outside[0]}; the vocabulary has {vocab} tokens")
        if params.max_tokens > room:
            raise InvalidArgument(
                f"max_tokens {params.max_tokens} is beyond the context: the prompt has {len(prompt)} "
                f"tokens and the model's context is {limit}, so at most {room} can be generated"
            )
        opened = self._opens_reasoning(prompt) if messages is not None else None
        if params.structured is not None and opened is not None:
            # the model thinks before the grammar shapes its answer, as in vLLM
            params = dataclasses.replace(params, thinking=thinking_grammar(opened, self._thinking_tokens))
        return prompt, params, opened

    def _shown(self, tools: ToolUse | None) -> list[dict] | None:
        """The tools the chat template renders. A template that takes none cannot show them; a call its
        grammar forces (`required` or a named function) still works there, as in vLLM: the model writes
        the call's JSON without having read the tools."""
        if tools is None or (self.settings.chat.tool_format is None and tools.choice != "auto"):
            return None
        return tools.tools

    @property
    def _tool_format(self) -> str:
        """The template's format of calls; a bare JSON object where it takes no tools."""
        return self.settings.chat.tool_format or "llama"

    def _calling(self, parameters: dict, tools: ToolUse) -> dict:
        """The parameters with the grammar of the chat's calls: a call that `tool_choice` forces, or with
        `auto` text or calls, the calls held to their schemas (as llama.cpp's lazy grammars hold them). Where
        the client's own grammar shapes the text (structured outputs), `auto` keeps that one alone, and a
        forced call is refused."""
        structured = any(parameters.get(key) is not None for key in STRUCTURED_OUTPUT_KEYS)
        if tools.choice == "auto":
            if structured or self.settings.chat.tool_format is None:
                return parameters
            functions = tools.functions
        elif structured:
            raise InvalidArgument("a required tool call and structured outputs both constrain the output: "
                                  "send one")
        else:
            functions = [f for f in tools.functions if tools.choice in ("required", f["name"])]
        calls = tool_grammar(functions, self._tool_format, tools.parallel, optional=tools.choice == "auto",
                             marker_tokens=self._marker_tokens)
        kept = {"skip_special_tokens": False} if self._special_markers else {}  # else the calls are lost
        return {**parameters, **kept, "structured_outputs": {"grammar": calls}}

    def _opens_reasoning(self, prompt: list[int]) -> bool | None:
        """For a reasoning model's chat, whether the prompt leaves its answer inside a `<think>` block;
        None for other models."""
        chat = self.settings.chat
        if chat is None or not chat.reasoning or self.codec is None:
            return None
        return opens_reasoning(self.codec.decode(prompt[-8:], skip_special_tokens=False))

    @functools.cached_property
    def _marker_tokens(self) -> bool:
        return self.codec is not None and self.codec.has_tokens(*CALL_MARKERS)

    @functools.cached_property
    def _special_markers(self) -> bool:
        """Whether the call markers are special tokens (Hermes 2 Pro's), which decoding would leave out."""
        return self.codec is not None and self.codec.has_tokens(*CALL_MARKERS, special=True)

    @functools.cached_property
    def _thinking_tokens(self) -> bool:
        """Whether the tokenizer has the thinking markers as tokens of their own (Qwen 3's)."""
        return self.codec is not None and self.codec.has_tokens(THINKING_OPEN, THINKING_CLOSE)

    def tool_calls(self, text: str, tools: ToolUse) -> tuple[str | None, list[ToolCall]]:
        """The answer's content and the calls it makes, read in the format the chat template asks for."""
        return parse_tool_calls(text, self._tool_format, {f["name"] for f in tools.functions})

    def streamable(self, text: str, sent: int) -> int:
        """How much of an answer so far may be streamed as content: none of a call that may be starting."""
        return tool_text_streamable(text, self._tool_format, sent)
