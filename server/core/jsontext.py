"""JSON bodies as the server reads them: UTF-8, nested at most MAX_DEPTH levels (Triton's limit)."""

import json
import re

import orjson

from server.core.errors import InvalidArgument

MAX_DEPTH = 100
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_AS_PARENTHESES = bytes.maketrans(b"[]{}", b"()()")
# digits as "9", "." as itself, all else as " ": 19 digits after a separator (not after a decimal point)
# start an integer that may not fit 64 bits, which orjson would round to a float (Python's parser keeps it
# whole, and the range checks name it)
_DIGIT_RUNS = bytes(57 if 48 <= byte <= 57 else 46 if byte == 46 else 32 for byte in range(256))
_LONG_INTEGER = b" " + b"9" * 19


def loads(data: bytes | memoryview | str, what: str = "request body"):
    """The JSON value in `data`, or InvalidArgument saying what is wrong with it."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidArgument(
            f"{what} is not UTF-8 (byte 0x{raw[error.start]:02x} at position {error.start}); "
            "JSON must be UTF-8"
        ) from None
    if too_deep(raw):
        raise InvalidArgument(f"JSON nesting depth exceeds maximum allowed limit ({MAX_DEPTH}) in {what}")
    if _LONG_INTEGER not in raw.translate(_DIGIT_RUNS) and not raw[:19].isdigit():
        try:
            return orjson.loads(raw)  # several times quicker on tensors' numbers
        except orjson.JSONDecodeError:
            pass  # what Python's parser takes too (NaN, Infinity, lone surrogates), or refuses in its words
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidArgument(f"malformed JSON in {what}: {error}") from None


def too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects nest deeper than `limit`: with strings cut out, the brackets are
    peeled a level per pass (each pass a C-speed replace, so a flat body costs two passes). A body with
    no more opening brackets than `limit` cannot nest deeper, and most bodies are such: counted first."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _STRINGS.sub(b"", raw).translate(_AS_PARENTHESES, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return False
        peeled = brackets.replace(b"()", b"")
        if peeled == brackets:  # unbalanced: json.loads will say so
            return False
        brackets = peeled
    return bool(brackets) and b"()" in brackets
