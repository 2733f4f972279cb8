"""An encoder's `tokenizer.json` (the `tokenizers` library; no torch) with its length limit.

Texts are encoded whole first; one longer than the limit is refused with the numbers, or, when the
request asks for truncation, encoded again by a tokenizer that truncates on the side asked for (the
library keeps the special tokens, and for pairs shortens the longer text first)."""

from dataclasses import dataclass
from pathlib import Path

from server.core.errors import InvalidArgument

SIDES = ("right", "left")


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    type_ids: list[int]
    truncated: bool


class EncoderTokenizer:
    def __init__(self, path: Path, max_length: int, truncation_side: str = "right"):
        from tokenizers import Tokenizer

        if truncation_side not in SIDES:
            raise ValueError(f"truncation side must be one of {', '.join(SIDES)}, got '{truncation_side}'")
        self.path = path
        self.max_length = max_length
        self.truncation_side = truncation_side
        self.whole = Tokenizer.from_file(str(path))
        self.whole.no_truncation()
        self.whole.no_padding()
        self._truncating = {}
        for side in SIDES:
            tokenizer = Tokenizer.from_file(str(path))
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length, direction=side)
            self._truncating[side] = tokenizer

    def encode(self, texts: list, truncate: bool = False, side: str = "") -> list[Encoded]:
        """`texts`: strings, or (text, pair) tuples for cross-encoders."""
        side = side or self.truncation_side
        if side not in SIDES:
            raise InvalidArgument(f"truncation direction must be one of {', '.join(SIDES)}, got '{side}'")
        encoded = self.whole.encode_batch(texts)
        long = [i for i, e in enumerate(encoded) if len(e.ids) > self.max_length]
        if long and not truncate:
            i = long[0]
            raise InvalidArgument(
                f"input {i} has {len(encoded[i].ids)} tokens; this model takes at most {self.max_length} "
                "(ask for truncation to cut it)"
            )
        shortened = dict(zip(long, self._truncating[side].encode_batch([texts[i] for i in long])))
        return [
            Encoded(e.ids, e.type_ids, False) if i not in shortened
            else Encoded(shortened[i].ids, shortened[i].type_ids, True)
            for i, e in enumerate(encoded)
        ]

    def tokens(self, text: str, add_special_tokens: bool = True) -> list[dict]:
        """Each token's id, text, whether it is special, and its character offsets (TEI's /tokenize)."""
        encoding = self.whole.encode(text, add_special_tokens=add_special_tokens)
        return [
            {"id": i, "text": token, "special": bool(special), "start": start, "stop": stop}
            for i, token, special, (start, stop)
            in zip(encoding.ids, encoding.tokens, encoding.special_tokens_mask, encoding.offsets)
        ]

    def decode(self, ids: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        outside = [i for row in ids for i in row if i >= self.vocab_size]
        if outside:
            raise InvalidArgument(f"token id {outside[0]} is not in the vocabulary "
                                  f"({self.vocab_size} tokens)")
        return self.whole.decode_batch(ids, skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self.whole.get_vocab_size()
