"""Tokenizer use for generation: prompts to ids, and ids to text pieces that respect stop strings."""

from pathlib import Path

from server.core.errors import InvalidArgument


class TextCodec:
    """A Hugging Face `tokenizer.json` (the `tokenizers` library; no torch)."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class TextStream:
    """One sequence's text as tokens arrive: `push` returns the new piece that is safe to send.

    Text that could still become a stop string, or an unfinished UTF-8 character, is held back until
    the next token decides it; a stop string ends the text before it."""

    def __init__(self, codec: TextCodec | None, stop: tuple[str, ...]):
        self.codec = codec
        self.stop = stop
        self.sent = 0
        self.stopped = False

    def push(self, ids: list[int], final: bool) -> str:
        if self.codec is None:
            return ""
        text = self.codec.decode(ids)
        end = len(text)
        hits = [i for i in (text.find(s, max(0, self.sent - len(s))) for s in self.stop) if i >= 0]
        if hits:
            end, self.stopped = min(hits), True
        elif not final:
            if text.endswith("\ufffd"):
                end -= 1
            end -= _held_for_stop(text[:end], self.stop)
        piece = text[self.sent:max(end, self.sent)]
        self.sent = max(end, self.sent)
        return piece


def _held_for_stop(text: str, stop: tuple[str, ...]) -> int:
    """The length of the longest end of `text` that begins some stop string."""
    return max((n for s in stop for n in range(min(len(s) - 1, len(text)), 0, -1)
                if text.endswith(s[:n])), default=0)


def prompt_ids(
    codec: TextCodec | None, text: str | None, ids: list[int] | None, vocab: int | None
) -> list[int]:
    if ids is not None:
        if not ids or not all(isinstance(i, int) and 0 <= i and (vocab is None or i < vocab) for i in ids):
            raise InvalidArgument(
                f"input_ids must be a non-empty list of token ids in [0, {vocab}), got {ids!r}"
            )
        return list(ids)
    if text is None:
        raise InvalidArgument("a generation request needs text_input (or input_ids)")
    if codec is None:
        raise InvalidArgument("this model has no tokenizer; send input_ids instead of text_input")
    encoded = codec.encode(text)
    if not encoded:
        raise InvalidArgument("text_input is empty; the prompt needs at least one token")
    return encoded
