"""OpenAI's Responses API over the chat machinery: a request's input items become chat messages, its
function tools and `text.format` the chat's tools and structured output (checked by `ChatRequest`); the
answer comes back as output items (`response_items.py`). The newest `STORED` responses are kept in
memory, for `previous_response_id`, `GET` and the listing of their input items."""

import uuid
from collections import OrderedDict
from dataclasses import dataclass

from fastapi import Request

from server.api.http.context import json_of
from server.api.openai.protocol import (
    REASONING_EFFORTS,
    SAMPLING,
    TOOL_NAME,
    ChatRequest,
    refuse_unsupported,
)
from server.core.errors import InvalidArgument, NotFound
from server.core.fields import boolean, integer

FIELDS = {"model", "input", "instructions", "stream", "tools", "tool_choice", "parallel_tool_calls", "text",
          "max_output_tokens", "top_logprobs", "include", "store", "metadata", "user", "previous_response_id",
          "reasoning"}
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
    items: list[dict]  # its input items as `input_items` lists them, where it is stored

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
                    reasoning_effort=_reasoning_setting(payload.get("reasoning"))["effort"],
                    **_tool_fields(payload), **_logprobs(payload))
        stored = boolean(payload.get("store"), "'store'", True)
        chat = ChatRequest.from_json({key: value for key, value in chat.items() if value is not None})
        items = listed_items(payload["input"]) if stored else []  # kept only for the store
        return cls(chat, stored, _shown(payload, stored), items)

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
            "store": stored, "truncation": "disabled",
            "reasoning": _reasoning_setting(payload.get("reasoning"))}


def input_messages(value) -> list[dict]:
    """Responses' `input` (a string, or a list of messages, function calls and their outputs, reasoning
    items) as chat messages; consecutive function calls join the assistant message before them, and a
    reasoning item's text becomes the next assistant message's `reasoning_content` (which a reasoning
    model's template shows or leaves out)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise InvalidArgument("'input' must be a string or a non-empty list of input items (messages, "
                              "function_call, function_call_output, reasoning)")
    messages, thought = [], None
    for index, item in enumerate(value):
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message":
            content = _text(f"input[{index}]", item.get("content"))
            messages.append({"role": _role(index, item), "content": content})
        elif kind == "function_call":
            function = {"name": _string(index, item, "name"), "arguments": _string(index, item, "arguments")}
            call = {"id": _string(index, item, "call_id"), "type": "function", "function": function}
            if messages[-1:] and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": _string(index, item, "call_id"),
                             "content": _text(f"input[{index}].output", item.get("output"))})
        elif kind == "reasoning":
            thought = _reasoning(index, item)
            continue
        else:
            raise InvalidArgument(f"input[{index}] must be a message, function_call, function_call_output or "
                                  f"reasoning item, got type {kind!r}")
        if thought is not None and messages[-1]["role"] == "assistant":
            messages[-1]["reasoning_content"], thought = thought, None
    return messages


def _reasoning(index: int, item: dict) -> str:
    """A reasoning item's text: its reasoning text parts, else its summary's."""
    for field, part_type in (("content", "reasoning_text"), ("summary", "summary_text")):
        parts = item.get(field) or []
        if not isinstance(parts, list) or not all(
                isinstance(p, dict) and p.get("type") == part_type and isinstance(p.get("text"), str)
                for p in parts):
            raise InvalidArgument(f"input[{index}].{field} must be a list of {part_type} parts")
        if parts:
            return "".join(p["text"] for p in parts)
    return ""


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


def _reasoning_setting(value) -> dict:
    """`reasoning`: its `effort` goes to the chat template (as chat's `reasoning_effort`); a summary is
    not written, so only `auto` (which may give none) is taken."""
    value = value or {}
    if not isinstance(value, dict) or set(value) - {"effort", "summary"}:
        raise InvalidArgument(f"'reasoning' must be {{\"effort\": ..., \"summary\": ...}}, got {value!r}")
    if value.get("effort") not in (None, *REASONING_EFFORTS):
        raise InvalidArgument(f"'reasoning.effort' must be one of {', '.join(REASONING_EFFORTS)}, "
                              f"got {value['effort']!r}")
    if value.get("summary") not in (None, "auto"):
        raise InvalidArgument(f"'reasoning.summary' {value['summary']!r} is not supported: ortserve writes "
                              "no summaries (the thinking comes whole, as reasoning text); send auto or none")
    return {"effort": value.get("effort"), "summary": value.get("summary")}


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
