"""A response's answer as the Responses API's output items (a reasoning model's thinking, a message, then
function calls), whole or as its typed stream events."""

import json
import time
import uuid

from server.api.openai.errors import error_body
from server.api.openai.responses import ResponsesRequest, ResponseStore
from server.api.openai.streaming import chat_logprobs
from server.core.errors import ServerError
from server.core.types import FinishReason, TokenEvent, ToolCall


class Answer:
    """One response being made: its id, its output items (a reasoning model's thinking, the message, the
    calls read back from the answer) and its object, stored when complete where the request asked."""

    def __init__(self, request: ResponsesRequest, read_calls, store: ResponseStore):
        self.request, self.read_calls, self.store = request, read_calls, store
        self.id, self.created = f"resp_{uuid.uuid4().hex}", int(time.time())
        self.message_id, self.reasoning_id = f"msg_{uuid.uuid4().hex}", f"rs_{uuid.uuid4().hex}"
        self.reasoned = False  # a reasoning item comes first

    @property
    def text_at(self) -> dict:
        """Where the message's text is, as its events name it."""
        return {"item_id": self.message_id, "output_index": int(self.reasoned), "content_index": 0}

    @property
    def thought_at(self) -> dict:
        return {"item_id": self.reasoning_id, "output_index": 0, "content_index": 0}

    def document(self, status: str = "in_progress", output: list = (), whole: TokenEvent | None = None,
                 error: ServerError | None = None) -> dict:
        usage = None
        if whole is not None:
            usage = {"input_tokens": whole.prompt_tokens, "output_tokens": whole.generated_tokens,
                     "total_tokens": whole.prompt_tokens + whole.generated_tokens,
                     "input_tokens_details": {"cached_tokens": whole.cached_tokens},
                     "output_tokens_details": {"reasoning_tokens": 0}}
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {"id": self.id, "object": "response", "created_at": self.created, "status": status,
                "error": None if error is None else error_body(error)["error"],
                "incomplete_details": incomplete, "model": self.request.chat.model, "output": list(output),
                "usage": usage, **self.request.shown}

    def finished(self, whole: TokenEvent, reasoning: str | None, content: str | None, calls: list[ToolCall]
                 ) -> tuple[str, list[dict]]:
        """The status and output items of a whole generation (its thinking where the model reasoned, its
        message unless the answer is only calls, its calls), stored where asked."""
        status = "incomplete" if whole.finish_reason == FinishReason.LENGTH else "completed"
        self.reasoned = reasoning is not None
        cut = status == "incomplete" and not (content or calls)  # the thinking itself was cut short
        output = [self.thought(reasoning, "incomplete" if cut else "completed")] if self.reasoned else []
        if content or not (calls or self.reasoned):
            output.append(self.message(content or "", status, whole))
        output += [_call_item(call) for call in calls]
        if self.request.store:
            self.store.put(self.document(status, output, whole),
                           self._conversation(reasoning, content, calls), self.request.items)
        return status, output

    def message(self, text: str, status: str = "in_progress", whole: TokenEvent | None = None) -> dict:
        part = output_text(text, whole)
        return {"type": "message", "id": self.message_id, "status": status, "role": "assistant",
                "content": [part] if text or whole is not None else []}

    def thought(self, text: str | None, status: str) -> dict:
        """The reasoning item: the thinking as reasoning text (vLLM's), no summary; no content yet where
        `text` is None."""
        content = [] if text is None else [reasoning_text(text)]
        return {"type": "reasoning", "id": self.reasoning_id, "summary": [], "content": content,
                "status": status}

    def _conversation(self, reasoning: str | None, content: str | None, calls: list[ToolCall]) -> list:
        answer = {"role": "assistant", "content": content or ""}
        if reasoning is not None:
            answer["reasoning_content"] = reasoning
        if calls:
            answer["tool_calls"] = [{"id": call.id, "type": "function",
                                     "function": {"name": call.name, "arguments": call.arguments}}
                                    for call in calls]
        return self.request.chat.messages[1 if self.request.shown["instructions"] else 0:] + [answer]


def reasoning_text(text: str) -> dict:
    return {"type": "reasoning_text", "text": text}


def output_text(text: str, whole: TokenEvent | None = None) -> dict:
    part = {"type": "output_text", "text": text, "annotations": []}
    if whole is not None and whole.logprobs:
        part["logprobs"] = logprobs(whole)
    return part


def logprobs(event: TokenEvent) -> list[dict]:
    return chat_logprobs(event)["content"] if event.logprobs else []


def _call_item(call: ToolCall) -> dict:
    return {"type": "function_call", "id": f"fc_{uuid.uuid4().hex}", "call_id": call.id, "name": call.name,
            "arguments": call.arguments, "status": "completed"}


async def events(answer: Answer, tokens, streamable, thinking=None):
    """Responses' stream: created; a reasoning model's thinking as a reasoning item's text as it comes
    (`thinking`: the answer's `ReasoningStream`, None for other models); the message's text as it is
    surely content (held from where a call may begin, as chat streams it); each call whole; then
    completed (or incomplete, or failed)."""
    sequence = Sequence()
    yield sequence.event("response.created", response=answer.document())
    yield sequence.event("response.in_progress", response=answer.document())
    thought = Thought(answer, sequence, thinking) if thinking is not None else None
    text, sent, whole = "", 0, None
    try:
        async for event in tokens:
            whole = event if whole is None else whole.then(event)
            final = event.finish_reason is not None
            piece = event.text
            if thought is not None:
                lines, piece = thought.push(piece, event.finish_reason)
                for line in lines:
                    yield line
            text += piece
            if not final:
                end = streamable(text, sent)
            else:
                content, calls = answer.read_calls(text)
                end = len(text)
                if calls:  # the message is the text streamed before the calls, none where that is blank
                    end = streamable(text, sent)
                    end = end if sent or text[:end].strip() else 0
                    content = text[:end] or None
                reasoning = None if thought is None else thought.text
                status, output = answer.finished(whole, reasoning, content if calls else text, calls)
            if end > sent:
                if not sent:
                    yield _opening(sequence, answer)
                in_step = end - sent == len(event.text)  # the event's tokens are this delta's alone
                yield sequence.event("response.output_text.delta", **answer.text_at, delta=text[sent:end],
                                     logprobs=logprobs(event) if in_step else [])
                sent = end
        if whole is not None and whole.finish_reason is not None:
            for line in _closing(sequence, answer, whole, status, output, opened=sent > 0):
                yield line
    except ServerError as error:
        yield sequence.event("response.failed", response=answer.document("failed", error=error))
    finally:
        await tokens.aclose()
class Thought:
    """A reasoning model's thinking streamed as the reasoning item's text, the item opened where the
    thinking begins and closed where the answer does."""

    def __init__(self, answer: Answer, sequence: "Sequence", thinking):
        self.answer, self.sequence, self.thinking = answer, sequence, thinking  # a ReasoningStream
        self.text: str | None = None  # None until the model thinks
        self.done = False

    def push(self, piece: str, finish_reason: FinishReason | None) -> tuple[list[str], str]:
        """The events the piece makes, and what of it is the answer's."""
        final = finish_reason is not None
        reasoning, piece = self.thinking.push(piece, final)
        at, lines = self.answer.thought_at, []
        if self.thinking.reasoned and self.text is None:
            self.answer.reasoned, self.text = True, ""
            lines += [self.sequence.event("response.output_item.added", output_index=0,
                                          item=self.answer.thought(None, "in_progress")),
                      self.sequence.event("response.content_part.added", **at, part=reasoning_text(""))]
        if reasoning:
            self.text += reasoning
            lines.append(self.sequence.event("response.reasoning_text.delta", **at, delta=reasoning))
        if self.text is not None and not self.done and (piece or final):
            self.done = True
            cut = not piece and finish_reason == FinishReason.LENGTH
            item = self.answer.thought(self.text, "incomplete" if cut else "completed")
            lines += [self.sequence.event("response.reasoning_text.done", **at, text=self.text),
                      self.sequence.event("response.content_part.done", **at, part=reasoning_text(self.text)),
                      self.sequence.event("response.output_item.done", output_index=0, item=item)]
        return lines, piece


def _opening(sequence: "Sequence", answer: Answer) -> str:
    """The events that open the message item and its text part."""
    return (sequence.event("response.output_item.added", output_index=answer.text_at["output_index"],
                           item=answer.message(""))
            + sequence.event("response.content_part.added", **answer.text_at, part=output_text("")))


def _closing(sequence: "Sequence", answer: Answer, whole: TokenEvent, status: str, output: list[dict],
             opened: bool):
    """The message's done events, each call whole, then the response's last event."""
    for index, item in enumerate(output):
        if item["type"] == "message":
            if not opened:
                yield _opening(sequence, answer)
            part = item["content"][0]
            yield sequence.event("response.output_text.done", **answer.text_at, text=part["text"],
                                 logprobs=part.get("logprobs", []))
            yield sequence.event("response.content_part.done", **answer.text_at, part=part)
            yield sequence.event("response.output_item.done", output_index=index, item=item)
        elif item["type"] == "function_call":
            yield sequence.event("response.output_item.added", output_index=index,
                                 item={**item, "arguments": "", "status": "in_progress"})
            call = {"item_id": item["id"], "output_index": index}
            yield sequence.event("response.function_call_arguments.delta", **call, delta=item["arguments"])
            yield sequence.event("response.function_call_arguments.done", **call, name=item["name"],
                                 arguments=item["arguments"])
            yield sequence.event("response.output_item.done", output_index=index, item=item)
    kind = "response.incomplete" if status == "incomplete" else "response.completed"
    yield sequence.event(kind, response=answer.document(status, output, whole))


class Sequence:
    """Numbered server-sent events, each named by its type."""

    def __init__(self):
        self.number = 0

    def event(self, kind: str, **fields) -> str:
        document = {"type": kind, "sequence_number": self.number, **fields}
        self.number += 1
        return f"event: {kind}\ndata: {json.dumps(document)}\n\n"
