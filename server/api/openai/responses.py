"""OpenAI's Responses API over the chat machinery: a request's input items become chat messages, its
function tools and `text.format` the chat's tools and structured output (checked by `ChatRequest`); the
answer comes back as output items (a reasoning model's thinking, a message, then function calls), whole
or as Responses' typed stream events. The newest `STORED` responses are kept in memory, for
`previous_response_id` and `GET`."""

import json
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from fastapi import Request

from server.api.http.context import json_of
from server.api.openai.errors import error_body
from server.api.openai.protocol import SAMPLING, TOOL_NAME, ChatRequest, refuse_unsupported
from server.api.openai.streaming import chat_logprobs
from server.core.errors import InvalidArgument, NotFound, ServerError
from server.core.fields import boolean, integer
from server.core.types import FinishReason, TokenEvent, ToolCall

FIELDS = {"model", "input", "instructions", "stream", "tools", "tool_choice", "parallel_tool_calls", "text",
          "max_output_tokens", "top_logprobs", "include", "store", "metadata", "user", "previous_response_id"}
SAMPLING_FIELDS = SAMPLING - {"max_tokens"}  # temperature, top_p, and vLLM's extras
NEUTRAL = {"truncation": "disabled", "background": False, "service_tier": "auto"}
LOGPROBS = "message.output_text.logprobs"  # the one `include` ortserve has to add
TEXT_PARTS = ("input_text", "output_text", "text")
STORED = 1024  # responses kept for `previous_response_id`, the oldest forgotten first


@dataclass
class ResponsesRequest:
    chat: ChatRequest  # the same request as a chat completion, its conversation whole
    store: bool
    shown: dict  # the request's settings that the response object repeats
    items: list[dict]  # its input items as `input_items` lists them

    @classmethod
    def from_json(cls, payload: dict, store: "ResponseStore") -> "ResponsesRequest":
        refuse_unsupported(payload, FIELDS | SAMPLING_FIELDS, NEUTRAL, "/v1/responses")
        previous = payload.get("previous_response_id")
        instructions = payload.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise InvalidArgument("'instructions' must be a string")
        messages = [{"role": "system", "content": instructions}] if instructions else []
        messages += store.conversation(previous) if previous is not None else []
        messages += input_messages(payload.get("input"))
        most = payload.get("max_output_tokens")
        chat = {key: value for key, value in payload.items() if key in SAMPLING_FIELDS}
        chat.update(model=payload.get("model"), messages=messages, stream=payload.get("stream"),
                    max_completion_tokens=None if most is None else integer(most, "'max_output_tokens'", 1),
                    response_format=_response_format(payload.get("text")),
                    **_tool_fields(payload), **_logprobs(payload))
        stored = boolean(payload.get("store"), "'store'", True)
        chat = ChatRequest.from_json({key: value for key, value in chat.items() if value is not None})
        return cls(chat, stored, _shown(payload, stored), listed_items(payload["input"]))

    @classmethod
    async def from_http(cls, request: Request) -> "ResponsesRequest":
        return cls.from_json(await json_of(request), request.app.state.responses)


def _shown(payload: dict, stored: bool) -> dict:
    return {"instructions": payload.get("instructions"),
            "max_output_tokens": payload.get("max_output_tokens"), "metadata": payload.get("metadata") or {},
            "parallel_tool_calls": payload.get("parallel_tool_calls") is not False,
            "temperature": payload.get("temperature", 1.0), "top_p": payload.get("top_p", 1.0),
            "text": payload.get("text") or {"format": {"type": "text"}},
            "tool_choice": payload.get("tool_choice") or "auto", "tools": payload.get("tools") or [],
            "user": payload.get("user"), "previous_response_id": payload.get("previous_response_id"),
            "store": stored, "truncation": "disabled", "reasoning": {"effort": None, "summary": None}}


def input_messages(value) -> list[dict]:
    """Responses' `input` (a string, or a list of messages, function calls and their outputs, reasoning
    items) as chat messages; consecutive function calls join the assistant message before them."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise InvalidArgument("'input' must be a string or a non-empty list of input items (messages, "
                              "function_call, function_call_output)")
    messages = []
    for index, item in enumerate(value):
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message":
            content = _text(f"input[{index}]", item.get("content"))
            messages.append({"role": _role(index, item), "content": content})
        elif kind == "function_call":
            function = {"name": _string(index, item, "name"), "arguments": _string(index, item, "arguments")}
            call = {"id": _string(index, item, "call_id"), "type": "function", "function": function}
            last = messages[-1] if messages else None
            if last is None or last["role"] != "assistant":
                messages.append(last := {"role": "assistant", "content": ""})
            last.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": _string(index, item, "call_id"),
                             "content": _text(f"input[{index}].output", item.get("output"))})
        elif kind != "reasoning":  # past thinking, which reasoning models' templates leave out
            raise InvalidArgument(f"input[{index}] must be a message, function_call, function_call_output or "
                                  f"reasoning item, got type {kind!r}")
    return messages


ITEM_IDS = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def listed_items(value) -> list[dict]:
    """A valid `input` as the items `GET .../input_items` lists: each with an id (the client's, else a new
    one), a message's text as parts."""
    items = [{"type": "message", "role": "user", "content": value}] if isinstance(value, str) else value
    listed = []
    for item in items:
        kind = item.get("type", "message")
        shown = {**item, "id": item.get("id") or f"{ITEM_IDS[kind]}_{uuid.uuid4().hex}", "type": kind}
        if kind == "message":
            part = "output_text" if item["role"] == "assistant" else "input_text"
            content = item["content"]
            shown["content"] = [{"type": part, "text": content}] if isinstance(content, str) else content
            shown.setdefault("status", "completed")
        listed.append(shown)
    return listed


def _role(index: int, item: dict) -> str:
    role = item.get("role")
    if role not in ("user", "system", "developer", "assistant"):
        raise InvalidArgument(f"input[{index}].role must be user, system, developer or assistant, "
                              f"got {role!r}")
    return role


def _text(where: str, content) -> str:
    """A string, or text parts joined; other parts (images, files) are refused: ortserve serves text
    models."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidArgument(f"{where} must be a string or a list of input_text parts")
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
            raise InvalidArgument(f"{where}[{index}] must be an input_text part ({{\"type\": \"input_text\", "
                                  f"\"text\": ...}}), got type {kind!r}: ortserve serves text models")
    return "".join(part["text"] for part in content)


def _string(index: int, item: dict, field: str) -> str:
    value = item.get(field)
    if not isinstance(value, str):
        raise InvalidArgument(f"input[{index}] ({item['type']}) needs '{field}' as a string")
    return value


FUNCTION_TOOL = '{"type": "function", "name": ..., "parameters": ...}'


def _tool_fields(payload: dict) -> dict:
    """Responses' function tools and tool choice in chat's shapes (which `ChatRequest` checks)."""
    tools = payload.get("tools") or []
    if not isinstance(tools, list):
        raise InvalidArgument(f"'tools' must be a list of {FUNCTION_TOOL}")
    functions = []
    for index, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise InvalidArgument(f"tools[{index}] must be {FUNCTION_TOOL}, got type {kind!r}: ortserve runs "
                                  "function tools only")
        if not isinstance(tool.get("name"), str) or not TOOL_NAME.fullmatch(tool["name"]):
            raise InvalidArgument(f"tools[{index}].name must be letters, digits, _ or -, at most 64, got "
                                  f"{tool.get('name')!r}")
        function = {key: tool[key] for key in ("name", "description", "parameters") if key in tool}
        functions.append({"type": "function", "function": function})
    choice = payload.get("tool_choice")
    if isinstance(choice, dict):
        if choice.get("type") != "function":
            raise InvalidArgument(f"'tool_choice' must be none, auto, required or {{\"type\": \"function\", "
                                  f"\"name\": ...}}, got {choice!r}")
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    return {"tools": functions or None, "tool_choice": choice,
            "parallel_tool_calls": boolean(payload.get("parallel_tool_calls"), "'parallel_tool_calls'", True)}


def _response_format(text) -> dict | None:
    """`text.format` as chat's `response_format`."""
    if text is None:
        return None
    if not isinstance(text, dict):
        raise InvalidArgument(f"'text' must be an object {{\"format\": {{...}}}}, got {text!r}")
    form = text.get("format")
    if form is None:
        return None
    if not isinstance(form, dict) or form.get("type") not in ("text", "json_object", "json_schema"):
        raise InvalidArgument('\'text.format\' must be {"type": "text" | "json_object" | "json_schema"}, '
                              f"got {form!r}")
    if form["type"] != "json_schema":
        return {"type": form["type"]}
    if not isinstance(form.get("name"), str):
        raise InvalidArgument("'text.format' of type json_schema needs 'name' and 'schema'")
    return {"type": "json_schema", "json_schema": {"name": form["name"], "schema": form.get("schema")}}


def _logprobs(payload: dict) -> dict:
    include = payload.get("include") or []
    if not isinstance(include, list) or any(item != LOGPROBS for item in include):
        raise InvalidArgument(f"'include' may hold only {LOGPROBS!r} here, got {include!r}")
    top = payload.get("top_logprobs")
    if LOGPROBS not in include and top is None:
        return {}
    return {"logprobs": True, "top_logprobs": top}


class ResponseNotFound(NotFound):
    openai_code = None  # not "model_not_found"


class ResponseStore:
    """The newest `capacity` responses, each with its conversation as chat messages (its history, its
    input and its output) and its request's input items; in this process only."""

    def __init__(self, capacity: int = STORED):
        self.capacity = capacity
        self.responses: OrderedDict[str, tuple[dict, list, list]] = OrderedDict()

    def put(self, response: dict, conversation: list, items: list = ()) -> None:
        self.responses[response["id"]] = (response, conversation, list(items))
        while len(self.responses) > self.capacity:
            self.responses.popitem(last=False)

    def get(self, response_id: str) -> dict:
        return self._entry(response_id)[0]

    def conversation(self, response_id) -> list:
        return self._entry(response_id)[1]

    def input_items(self, response_id: str, query) -> dict:
        """A page of the response's input items, as OpenAI's list: `query` holds `limit` (1 to 100, 20 by
        default), `order` (`desc` by default, the newest first) and `after` (an item id)."""
        items = self._entry(response_id)[2]
        limit = integer(_query_number(query.get("limit", "20")), "'limit'", 1, 100)
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidArgument(f"'order' must be asc or desc, got {order!r}")
        items = items if order == "asc" else items[::-1]
        after = query.get("after")
        if after is not None:
            ids = [item["id"] for item in items]
            if after not in ids:
                raise InvalidArgument(f"'after' must be an item id of response {response_id!r}, "
                                      f"got {after!r}")
            items = items[ids.index(after) + 1:]
        page = items[:limit]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}

    def delete(self, response_id: str) -> None:
        self._entry(response_id)
        del self.responses[response_id]

    def _entry(self, response_id) -> tuple[dict, list, list]:
        entry = self.responses.get(response_id) if isinstance(response_id, str) else None
        if entry is None:
            raise ResponseNotFound(f"No response found with id {response_id!r} (this server keeps the "
                                   f"newest {self.capacity} responses sent with store true, in memory)")
        return entry


def _query_number(text: str):
    try:
        return int(text)
    except ValueError:
        return text


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
            self.store.put(self.document(status, output, whole), self._conversation(content, calls),
                           self.request.items)
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

    def _conversation(self, content: str | None, calls: list[ToolCall]) -> list:
        answer = {"role": "assistant", "content": content or ""}
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
