"""Tokenizer use for generation: prompts to ids, and ids to text pieces that respect stop strings."""

from pathlib import Path

from server.core.errors import InvalidArgument


class TextCodec:
    """A Hugging Face `tokenizer.json` (the `tokenizers` library; no torch)."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))

    def encode(self, text: str, special_tokens: bool = True) -> list[int]:
        """`special_tokens`: what the tokenizer adds around a text (Llama's BOS); a chat template writes
        them itself."""
        return self.tokenizer.encode(text, add_special_tokens=special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def token_text(self, token: int) -> str:
        """One token as text, special tokens included (logprobs name every token)."""
        return self.tokenizer.decode([token], skip_special_tokens=False)


class TextStream:
    """One sequence's text as tokens arrive: `push` returns the new piece that is safe to send.

    Only the last few tokens are decoded each step (a window that starts before the newest text, so a
    character split across tokens decodes whole). Text that could still become a stop string, or an
    unfinished UTF-8 character, is held back until the next token decides it; a stop string ends the
    text before it."""

    def __init__(self, codec: TextCodec | None, stop: tuple[str, ...]):
        self.codec = codec
        self.stop = stop
        self.prefix_offset = 0  # the window's first token
        self.read_offset = 0  # tokens up to here are in `held` or already sent
        self.held = ""  # decoded but not yet sent
        self.stopped = False

    def push(self, ids: list[int], final: bool) -> str:
        if self.codec is None or self.stopped:
            return ""
        self.held += self._new_text(ids)
        hits = [i for i in (self.held.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            piece, self.held = self.held[: min(hits)], ""
            return piece
        keep = 0 if final else _held_for_stop(self.held, self.stop)
        piece = self.held[: len(self.held) - keep]
        self.held = self.held[len(piece):]
        return piece

    def _new_text(self, ids: list[int]) -> str:
        before = self.codec.decode(ids[self.prefix_offset:self.read_offset])
        after = self.codec.decode(ids[self.prefix_offset:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # an unfinished character: wait for its next bytes
        self.prefix_offset, self.read_offset = self.read_offset, len(ids)
        return after[len(before):]


def _held_for_stop(text: str, stop: tuple[str, ...]) -> int:
    """The length of the longest end of `text` that begins some stop string."""
    return max((n for s in stop for n in range(min(len(s) - 1, len(text)), 0, -1)
                if text.endswith(s[:n])), default=0)


def prompt_ids(
    codec: TextCodec | None, text: str | None, ids: list[int] | None, vocab: int | None,
    special_tokens: bool = True,
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
    encoded = codec.encode(text, special_tokens)
    if not encoded:
        raise InvalidArgument("text_input is empty; the prompt needs at least one token")
    return encoded
