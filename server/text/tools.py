"""Tool calls in the formats of the model families ortserve serves: how a chat template asks for them, the
grammar that makes a required call always parse, and the calls read back out of the generated text.

- hermes: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one block per call (Qwen2.5,
  Hermes, SmolLM3 and most ChatML templates with tools);
- llama: a bare JSON object `{"name": ..., "parameters": {...}}` (Llama 3.1 / 3.2 templates)."""

import json
import re
import uuid

from server.core.types import ToolCall
from server.text.markers import held_back

FORMATS = ("hermes", "llama")
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
CALL_MARKERS = _CALL, _END = "<tool_call>", "</tool_call>"
_PYTHON_TAG = "<|python_tag|>"
_TEXT = r"TEXT: /(.|\n)+/ & ~/(.|\n)*<tool_call>(.|\n)*/"  # text without a call's marker
_COMPACT = {"whitespace_flexible": False}


def template_format(source: str) -> str | None:
    """The format a chat template asks for, or None when it takes no tools."""
    if "tools" not in source:
        return None
    return "hermes" if "<tool_call>" in source else "llama"


def grammar(tools: list[dict], format_: str, parallel: bool, optional: bool = False,
            marker_tokens: bool = False) -> str:
    """A Lark grammar (llguidance's, with %json) whose every sentence is one call (or several, where
    `parallel`) of one of `tools`, its arguments valid against the tool's parameters. `optional` (OpenAI's
    `tool_choice: auto`) also lets the answer be text, as llama.cpp's lazy grammars do: free until a call
    begins (hermes: text, then calls from the first `<tool_call>` on; llama: text that does not open with
    `{`), the call itself held to the grammar. `marker_tokens`: the tokenizer has `<tool_call>` and
    `</tool_call>` as tokens of their own (Qwen's), which the model writes rather than their letters. A
    reasoning model's thinking comes before, apart (`reasoning.thinking_grammar`)."""
    key = "arguments" if format_ == "hermes" else "parameters"
    calls = {"anyOf": [{
        "type": "object",
        "properties": {"name": {"const": tool["name"]}, key: tool.get("parameters") or {"type": "object"}},
        "required": ["name", key], "additionalProperties": False,
    } for tool in tools], "x-guidance": _COMPACT}
    rules = [f"body: %json {json.dumps(calls)}"]
    if format_ == "llama":
        start = ["start: TEXT | body", r"TEXT: /\s*([^{\s](.|\n)*)?/"] if optional else ["start: body"]
        return "\n".join(start + rules)
    opening, closing = (_CALL, _END) if marker_tokens else (json.dumps(_CALL), json.dumps(_END))
    if not optional:
        start = [f"start: {opening} calls"]
    elif marker_tokens:  # text cannot hold the token; nor, then, the marker's letters
        start = [f"start: TEXT? | TEXT? {opening} calls", _TEXT]
    else:  # `lead`: the shortest text that ends in the marker
        start = ["start: TEXT? | lead calls", _TEXT, r"lead[lazy]: /(.|\n)*<tool_call>/"]
    more = f' ("\\n"? {opening} call)*' if parallel else ""
    return "\n".join(start + [f'calls: call{more} "\\n"?', f'call: "\\n" body "\\n" {closing}'] + rules)


def streamable(text: str, format_: str, sent: int = 0) -> int:
    """How much of an answer so far is surely content, not the start of a call: what may be streamed.
    `sent`: how much already was (a call cannot start before it), so each look reads only what is new."""
    if format_ == "hermes":
        start = text.find(_CALL, sent)
        if start >= 0:
            return start
        return len(text) - held_back(text[sent:], (_CALL,))  # it may end in the first half of a marker
    if sent:
        return len(text)  # content went out: a llama-format call is the whole answer, so this is not one
    stripped = text.lstrip()
    if not stripped or stripped.startswith(("{", _PYTHON_TAG)) or _PYTHON_TAG.startswith(stripped):
        return 0  # a llama-format call is the whole answer, and this one may be it
    return len(text)


def parse(text: str, format_: str, tool_names: set[str]) -> tuple[str | None, list[ToolCall]]:
    """The text's content (before any call; None when empty) and its calls of known tools. Text that does
    not hold a whole, well-formed call stays content."""
    if format_ == "hermes":
        blocks = _HERMES.findall(text)
        content = text.split(_CALL, 1)[0].strip() if blocks else text
    else:
        stripped = text.strip().removeprefix(_PYTHON_TAG).strip()
        blocks, content = ([stripped], "") if stripped.startswith("{") else ([], text)
    calls = []
    for block in blocks:
        call = _call(block, "arguments" if format_ == "hermes" else "parameters", tool_names)
        if call is None:
            return text, []
        calls.append(call)
    return (content or None) if calls else text, calls


def _call(block: str, key: str, tool_names: set[str]) -> ToolCall | None:
    try:
        value = json.loads(block)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or value.get("name") not in tool_names:
        return None
    arguments = value.get(key, value.get("arguments", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(f"call_{uuid.uuid4().hex[:24]}", value["name"], json.dumps(arguments))
