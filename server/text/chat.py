"""Chat templates as `transformers` renders them (`apply_chat_template`): the checkpoint's Jinja template
in a sandbox, with its special tokens, `raise_exception`, `tojson` and `strftime_now`."""

import json
from datetime import datetime
from pathlib import Path

from server.core.errors import InvalidArgument
from server.core.types import PLAIN_CHAT, ChatOptions
from server.text.reasoning import reasoning_template
from server.text.tools import template_format

ROLES = ("system", "developer", "user", "assistant", "tool")
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")


class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict[str, str]):
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise InvalidArgument(f"the chat template refused the messages: {message}")

        def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                              sort_keys=sort_keys)

        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                    extensions=[jinja2.ext.loopcontrols])
        environment.filters["tojson"] = tojson
        environment.globals["raise_exception"] = raise_exception
        environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source
        self.template = environment.from_string(source)
        self.special_tokens = special_tokens
        self.tool_format = template_format(source)  # None: the template takes no tools
        self.reasoning = reasoning_template(source)  # its model thinks in <think> blocks

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> "ChatTemplate | None":
        """`chat_template.jinja`, else `tokenizer_config.json`'s `chat_template`; None when neither."""
        config_file = model_dir / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        template_file = model_dir / "chat_template.jinja"
        source = template_file.read_text() if template_file.exists() else config.get("chat_template")
        if isinstance(source, list):  # named templates: the default one
            source = next((t["template"] for t in source if t.get("name") == "default"), None)
        if not source:
            return None
        return cls(source, {key: _content(config[key]) for key in SPECIAL_TOKENS if config.get(key)})

    def render(self, messages: list[dict], options: ChatOptions = PLAIN_CHAT,
               tools: list[dict] | None = None) -> str:
        """As transformers' `apply_chat_template(messages, tools=..., **options)`: tools in OpenAI's form;
        with `continue_final_message`, the text ends where the last message's content does (its end of
        turn cut), as transformers cuts it."""
        if tools and self.tool_format is None:
            raise InvalidArgument("this model's chat template takes no tools, so the model cannot choose to "
                                  "call them: send 'tool_choice' 'required' or a named function (the answer "
                                  "is then constrained to a call), or no 'tools'")
        context = {**self.special_tokens, **options.template_kwargs, **({"tools": tools} if tools else {})}
        messages = check_messages(messages)
        text = self.template.render(messages=messages, add_generation_prompt=options.add_generation_prompt,
                                    **context)
        if not options.continue_final_message:
            return text
        final = messages[-1]["content"].strip()
        end = text.rfind(final) if final else -1
        if messages[-1]["role"] != "assistant" or end < 0:
            raise InvalidArgument("'continue_final_message' continues the last message, which must be an "
                                  "assistant message with content that the chat template writes out")
        return text[:end + len(final)]


def _content(token) -> str:
    return token["content"] if isinstance(token, dict) else str(token)


def check_messages(messages) -> list[dict]:
    """OpenAI's messages with text content (a string, or a list of text parts joined), assistant messages
    with `tool_calls` (their arguments as objects, as chat templates write them) and their thinking
    (vLLM's `reasoning_content`, or `reasoning`: Qwen 3's template shows the thinking of the turn still
    in progress), and `tool` results."""
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("'messages' must be a non-empty list of {role, content} objects")
    return [_checked(index, message) for index, message in enumerate(messages)]


_FIELDS = {"role", "content", "name", "tool_calls", "tool_call_id", "reasoning_content", "reasoning"}


def _checked(index: int, message) -> dict:
    if not isinstance(message, dict):
        raise InvalidArgument(f"messages[{index}] must be an object with 'role' and 'content'")
    unknown = sorted(set(message) - _FIELDS)
    if unknown:
        fields = ", ".join(map(repr, unknown))
        raise InvalidArgument(f"messages[{index}]: field {fields} is not supported")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise InvalidArgument(f"messages[{index}].role must be one of {', '.join(ROLES)}, got {role!r}")
    checked = dict(message)
    thought = message.get("reasoning_content", message.get("reasoning"))
    if thought is not None:
        if role != "assistant" or not isinstance(thought, str):
            raise InvalidArgument(f"messages[{index}]: only assistant messages carry their thinking, as a "
                                  "string ('reasoning_content')")
        checked["reasoning_content"] = thought
    if message.get("tool_calls") is not None:
        if role != "assistant":
            raise InvalidArgument(f"messages[{index}]: only assistant messages carry 'tool_calls'")
        checked["tool_calls"] = [_tool_call(index, call) for call in _list(index, message["tool_calls"])]
        content = content or ""
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise InvalidArgument(f"messages[{index}].content parts must be text parts "
                                  "({\"type\": \"text\", \"text\": ...}); ortserve serves text models")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise InvalidArgument(f"messages[{index}].content must be a string or a list of text parts")
    return {**checked, "content": content}


def _list(index: int, value) -> list:
    if not isinstance(value, list):
        raise InvalidArgument(f"messages[{index}].tool_calls must be a list")
    return value


def _tool_call(index: int, call) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidArgument(f"messages[{index}].tool_calls: each is {{\"id\", \"type\": \"function\", "
                              "\"function\": {\"name\", \"arguments\"}}")
    arguments = function.get("arguments") or {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as error:
            raise InvalidArgument(f"messages[{index}].tool_calls: arguments of '{function['name']}' are not "
                                  f"JSON: {error}") from None
    return {**call, "type": "function", "function": {"name": function["name"], "arguments": arguments}}
