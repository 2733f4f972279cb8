"""Tokenizer use for generation: prompts to ids, and ids to text pieces that respect stop strings."""

from pathlib import Path

from server.core.errors import InvalidArgument
from server.text.markers import held_back


class TextCodec:
    """A Hugging Face `tokenizer.json` (the `tokenizers` library; no torch)."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))

    def encode(self, text: str, special_tokens: bool = True) -> list[int]:
        """`special_tokens`: what the tokenizer adds around a text (Llama's BOS); a chat template writes
        them itself."""
        return self.tokenizer.encode(text, add_special_tokens=special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def stream(self, skip_special_tokens: bool = True):
        """An incremental decoder (the `tokenizers` library's own): each call takes the next token id
        and returns the text it completes, "" while a character spans tokens still to come."""
        from tokenizers.decoders import DecodeStream

        decoder = DecodeStream(skip_special_tokens=skip_special_tokens)
        return lambda token: decoder.step(self.tokenizer, token) or ""

    def has_tokens(self, *texts: str, special: bool | None = None) -> bool:
        """Whether each of `texts` is a token the tokenizer added to its vocabulary (Qwen's `<tool_call>`);
        with `special`, one marked special (True) or not (False): decoding leaves special tokens out."""
        added = {token.content for token in self.tokenizer.get_added_tokens_decoder().values()
                 if special is None or token.special == special}
        return set(texts) <= added

    def token_text(self, token: int) -> str:
        """One token as text, special tokens included (logprobs name every token)."""
        return self.tokenizer.decode([token], skip_special_tokens=False)


class TextStream:
    """One sequence's text as tokens arrive: `push` returns the new piece that is safe to send.

    Text that could still become a stop string is held back until the next token decides it (an
    unfinished UTF-8 character the decoder holds itself); a stop string ends the text before it, or after
    it with `include_stop`. With `min_tokens`, as in vLLM, a stop string counts only where it ends in the
    text of a later token."""

    def __init__(self, codec: TextCodec | None, stop: tuple[str, ...], include_stop: bool = False,
                 min_tokens: int = 0, skip_special_tokens: bool = True):
        self.stop, self.include_stop, self.min_tokens = stop, include_stop, min_tokens
        # None: no text, token ids only
        self.decode = codec.stream(skip_special_tokens) if codec is not None else None
        self.decoded = 0  # tokens given to `decode`
        self.sent = 0  # characters sent, all before `held`
        self.held = ""  # decoded but not yet sent
        self.stops_after = 0 if min_tokens == 0 else None  # a stop string must end past this character
        self.stopped = False

    def push(self, ids: list[int], final: bool) -> str:
        if self.decode is None or self.stopped:
            return ""
        for token in ids[self.decoded:]:
            self.held += self.decode(token)
            self.decoded += 1
            if self.decoded == self.min_tokens:
                self.stops_after = self.sent + len(self.held)
        hits = sorted(hit for hit in map(self._find, self.stop) if hit is not None)
        if hits:
            self.stopped = True
            start, stop = hits[0]
            piece, self.held = self.held[: start + len(stop) if self.include_stop else start], ""
            return piece
        keep = 0 if final else held_back(self.held, self.stop)
        piece = self.held[: len(self.held) - keep]
        self.held = self.held[len(piece):]
        self.sent += len(piece)
        return piece

    def _find(self, stop: str) -> tuple[int, str] | None:
        """Where `stop` first ends in the held text past `stops_after` (and `stop`), or None."""
        if self.stops_after is None:
            return None
        start = self.held.find(stop, max(0, self.stops_after - self.sent - len(stop) + 1))
        return None if start < 0 else (start, stop)


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
