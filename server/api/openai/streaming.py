"""OpenAI's streamed chunks and log-probability shapes, for completions and chat."""

import dataclasses
from collections.abc import Callable

from server.api.http.streams import sse, usage
from server.api.openai.errors import error_body
from server.core.errors import ServerError
from server.core.types import FinishReason, TokenEvent, ToolCall


async def chunks(streams, chunk: dict, include_usage: bool, n: int, choices: Callable):
    """Choices stream one after another, each event as the chunks `choices(index, event)` makes (and
    `choices(index, None)` before a choice's first), then the usage where asked and `data: [DONE]`.
    Choice i*n+j is prompt i's j-th; each prompt's tokens count once in the usage."""
    prompt_tokens = completion_tokens = cached_tokens = 0
    try:
        for index, tokens in enumerate(streams):
            for choice in choices(index, None):
                yield sse({**chunk, "choices": [choice]})
            async for event in tokens:
                for choice in choices(index, event):
                    yield sse({**chunk, "choices": [choice]})
                if event.finish_reason is not None:
                    if index % n == 0:
                        prompt_tokens += event.prompt_tokens
                        cached_tokens += event.cached_tokens
                    completion_tokens += event.generated_tokens
        if include_usage:
            counts = usage(prompt_tokens, completion_tokens, cached_tokens)
            yield sse({**chunk, "choices": [], "usage": counts})
        yield "data: [DONE]\n\n"
    except ServerError as error:
        yield sse(error_body(error))
    finally:
        for tokens in streams:
            await tokens.aclose()


def chat_choices(index: int, event: TokenEvent | None) -> list[dict]:
    """A chat choice's chunks: its role first, then content pieces, then its finish reason."""
    if event is None:
        return [{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None}]
    choices = []
    if event.text or event.logprobs:
        choices.append({"index": index, "delta": {"content": event.text}, "logprobs": chat_logprobs(event),
                        "finish_reason": None})
    if event.finish_reason is not None:
        choices.append({"index": index, "delta": {}, "logprobs": None, "finish_reason": event.finish_reason})
    return choices


def chat_message(whole: TokenEvent, content: str | None, calls: list[ToolCall],
                 reasoning: str | None = None) -> dict:
    """A whole chat choice's message and finish reason: with the tool calls it makes, "tool_calls"; a
    reasoning model's thinking as `reasoning_content`, vLLM's field."""
    message = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning.strip()
    if not calls:
        return {"message": message, "finish_reason": whole.finish_reason}
    reason = "tool_calls" if whole.finish_reason == FinishReason.STOP else whole.finish_reason
    return {"message": {**message, "tool_calls": [_call(call) for call in calls]}, "finish_reason": reason}


def _call(call: ToolCall, index: int | None = None) -> dict:
    entry = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    return entry if index is None else {"index": index, **entry}


class ToolCallChoices:
    """Chat chunks where the chat may call tools: a choice's text streams as content while it surely is
    content; from where a call may be starting it is held, and when the choice ends the rest comes as
    content or as its calls (whole, with their ids), as OpenAI streams them."""

    def __init__(self, read_calls: Callable[[str], tuple[str | None, list[ToolCall]]],
                 streamable: Callable[[str, int], int]):
        self.read_calls, self.streamable = read_calls, streamable
        self.texts: dict[int, str] = {}
        self.sent: dict[int, int] = {}  # characters of each choice's text already streamed

    def __call__(self, index: int, event: TokenEvent | None) -> list[dict]:
        if event is None:
            return chat_choices(index, None)
        text = self.texts[index] = self.texts.get(index, "") + event.text
        sent = self.sent.get(index, 0)
        if event.finish_reason is None:
            return self._content(index, text, self.streamable(text, sent))
        content, calls = self.read_calls(text)
        choices = self._content(index, text, self.streamable(text, sent) if calls else len(text))
        if calls:
            deltas = [_call(call, position) for position, call in enumerate(calls)]
            choices.append({"index": index, "delta": {"tool_calls": deltas}, "logprobs": None,
                            "finish_reason": None})
        finish = chat_message(event, content, calls)["finish_reason"]
        choices.append({"index": index, "delta": {}, "logprobs": None, "finish_reason": finish})
        return choices

    def _content(self, index: int, text: str, end: int) -> list[dict]:
        start = self.sent.get(index, 0)
        if end <= start:
            return []
        self.sent[index] = end
        delta = {"content": text[start:end]}
        return [{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}]


class ReasoningChoices:
    """A reasoning model's chat chunks: its thinking as `reasoning_content` deltas (vLLM's field), the
    rest as `choices` shapes it (content, calls, the finish)."""

    def __init__(self, choices: Callable, new_stream: Callable):
        """`new_stream()`: a choice's cut of reasoning from answer, made piece by piece."""
        self.choices, self.new_stream = choices, new_stream
        self.streams: dict = {}

    def __call__(self, index: int, event: TokenEvent | None) -> list[dict]:
        if event is None:
            return self.choices(index, None)
        if index not in self.streams:
            self.streams[index] = self.new_stream()
        stream = self.streams[index]
        reasoning, answer = stream.push(event.text, final=event.finish_reason is not None)
        thought = [{"index": index, "delta": {"reasoning_content": reasoning}, "logprobs": None,
                    "finish_reason": None}] if reasoning else []
        return thought + self.choices(index, dataclasses.replace(event, text=answer))


def completion_choices(index: int, event: TokenEvent | None) -> list[dict]:
    if event is None:
        return []
    return [{"index": index, "text": event.text, "logprobs": completion_logprobs(event),
             "finish_reason": event.finish_reason}]


def chat_logprobs(event: TokenEvent) -> dict | None:
    """OpenAI's chat logprobs: each token with its bytes and the most likely alternatives."""
    if not event.logprobs:
        return None

    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {"content": [{**entry(t.token, t.logprob), "top_logprobs": [entry(*top) for top in t.top]}
                        for t in event.logprobs]}


def completion_logprobs(event: TokenEvent) -> dict | None:
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
