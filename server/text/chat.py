"""Chat templates as `transformers` renders them (`apply_chat_template`): the checkpoint's Jinja template
in a sandbox, with its special tokens, `raise_exception`, `tojson` and `strftime_now`."""

import json
from datetime import datetime
from pathlib import Path

from server.core.errors import InvalidArgument

ROLES = ("system", "developer", "user", "assistant")
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
        self.template = environment.from_string(source)
        self.special_tokens = special_tokens

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

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return self.template.render(messages=check_messages(messages),
                                    add_generation_prompt=add_generation_prompt, **self.special_tokens)


def _content(token) -> str:
    return token["content"] if isinstance(token, dict) else str(token)


def check_messages(messages) -> list[dict]:
    """OpenAI's messages with text content (a string, or a list of text parts joined)."""
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("'messages' must be a non-empty list of {role, content} objects")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidArgument(f"messages[{index}] must be an object with 'role' and 'content'")
        unknown = sorted(set(message) - {"role", "content", "name"})
        if unknown:
            fields = ", ".join(map(repr, unknown))
            raise InvalidArgument(f"messages[{index}]: field {fields} is not supported")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise InvalidArgument(f"messages[{index}].role must be one of {', '.join(ROLES)}, got {role!r}")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise InvalidArgument(f"messages[{index}].content parts must be text parts "
                                      "({\"type\": \"text\", \"text\": ...}); ortserve serves text models")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise InvalidArgument(f"messages[{index}].content must be a string or a list of text parts")
        checked.append({**message, "content": content})
    return checked
