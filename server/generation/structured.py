"""Structured outputs: a grammar that every sampled token must keep valid, enforced while decoding with
llguidance. Before a constrained row samples, the grammar's token bitmask sets every token it forbids to
-inf in that row's logits, so constrained and free rows share a decode step; the row ends when the
grammar is complete. Grammars compile once per spec (cached) and each request takes a copy.

A spec is vLLM's `structured_outputs` ({"json": schema} | {"json_object": true} | {"regex": r} |
{"choice": [...]} | {"grammar": lark or GBNF}) or its older `guided_json` / `guided_regex` /
`guided_choice` / `guided_grammar` parameters; the OpenAI front end turns `response_format` into one."""

import json
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from server.core.errors import InvalidArgument
from server.core.types import STRUCTURED_OUTPUT_KEYS

KINDS = ("json", "json_object", "regex", "choice", "grammar")
LEGACY = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
          "guided_grammar": "grammar"}
STRUCTURED_KEYS = STRUCTURED_OUTPUT_KEYS
_CACHED = 256
_JSON_OPTIONS = {"whitespace_flexible": False}  # compact JSON, as OpenAI's answers


def structured_spec(parameters: dict) -> tuple[str, str] | None:
    """The request's constraint as (kind, canonical text), or None; InvalidArgument names what is wrong."""
    given = {key: parameters[key] for key in STRUCTURED_KEYS if parameters.get(key) is not None}
    if not given:
        return None
    if len(given) > 1:
        names = ", ".join(map(repr, given))
        raise InvalidArgument(f"parameters {names} each constrain the output: send one")
    key, value = next(iter(given.items()))
    if key != "structured_outputs":
        value = {LEGACY[key]: value}
    if not isinstance(value, dict):
        raise InvalidArgument(f"parameter 'structured_outputs' must be a JSON object, got {value!r}")
    chosen = {kind: v for kind, v in value.items() if v is not None and v is not False}
    if set(value) - set(KINDS) or len(chosen) != 1:
        raise InvalidArgument(
            f"parameter 'structured_outputs' takes one of {', '.join(KINDS)}, got {value!r}"
        )
    kind, text = next(iter(chosen.items()))
    return kind, _canonical(kind, text)


def _canonical(kind: str, value) -> str:
    if kind == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                raise InvalidArgument(f"the JSON schema does not parse: {error}") from None
        if not isinstance(value, dict | bool):
            raise InvalidArgument(f"a JSON schema must be a JSON object, got {type(value).__name__}")
        return json.dumps(value, sort_keys=True)
    if kind == "json_object":
        return "{}"
    if kind == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise InvalidArgument(f"'choice' must be a list of non-empty strings, got {value!r}")
        return json.dumps(value)
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"'{kind}' must be a non-empty string, got {value!r}")
    return value


class Grammars:
    """One generation model's compiled grammars, over its tokenizer."""

    def __init__(self, tokenizer_file: Path | None, eos_token_ids: frozenset[int],
                 eos_token: str | None = None):
        """`eos_token`: the tokenizer's own end token (its config's), the grammar's end where the model
        names none."""
        self.tokenizer_file, self.eos_token_ids, self.eos_token = tokenizer_file, eos_token_ids, eos_token
        self._tokenizer = None
        self._end: int | None = None  # the token that ends a grammar
        self._templates: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._lock = threading.Lock()

    def constraint(self, spec: tuple[str, str], ignore_eos: bool = False,
                   thinking: str | None = None) -> "RowConstraint":
        """A fresh constraint for one request (InvalidArgument where the grammar does not compile). With
        `ignore_eos` the model's end tokens stay forbidden while the grammar may go on. `thinking`: the
        rules of a reasoning model's thinking block, free ahead of the grammar's answer
        (`reasoning.thinking_grammar`)."""
        key = (*spec, thinking)
        with self._lock:
            template = self._templates.get(key)
            if template is None:
                template = self._compile(spec, thinking)
                self._templates[key] = template
                if len(self._templates) > _CACHED:
                    self._templates.popitem(last=False)
            self._templates.move_to_end(key)
            ends = (*self.eos_token_ids, self._end) if ignore_eos else ()
            return RowConstraint(template.deep_copy(), self._tokenizer.vocab_size, ends)

    def _compile(self, spec: tuple[str, str], thinking: str | None):
        import llguidance

        if self.tokenizer_file is None:
            raise InvalidArgument("structured outputs need the model's tokenizer (tokenizer_file), and this "
                                  "model has none")
        if self._tokenizer is None:
            self._end = self._grammar_end()
            tokenizer = Path(self.tokenizer_file).read_text()
            self._tokenizer = llguidance.LLTokenizer(tokenizer, eos_token=self._end)
        kind, text = spec
        grammars = _grammar(llguidance, kind, text)["grammars"]
        if thinking is not None:  # the answer's grammar becomes `@answer` after the thinking block
            grammars = [{"lark_grammar": thinking}, {**grammars[0], "name": "answer"}, *grammars[1:]]
        matcher = llguidance.LLMatcher(self._tokenizer, json.dumps({"grammars": grammars}), log_level=0)
        if matcher.is_error():
            raise InvalidArgument(f"the {_NAMES[kind]} cannot be compiled: {matcher.get_error()}")
        return matcher


    def _grammar_end(self) -> int:
        """The model's end token; else the tokenizer's, as vLLM takes it; else the last token (a model
        without either may then write it where the grammar may end)."""
        if self.eos_token_ids:
            return min(self.eos_token_ids)
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
        named = tokenizer.token_to_id(self.eos_token) if self.eos_token else None
        return named if named is not None else tokenizer.get_vocab_size() - 1


_NAMES = {"json": "JSON schema", "json_object": "JSON object grammar", "regex": "regular expression",
          "choice": "choice", "grammar": "grammar"}


def _grammar(llguidance, kind: str, text: str) -> dict:
    """The spec as llguidance's top-level grammar: {"grammars": [the start grammar, ...]}."""
    matcher = llguidance.LLMatcher
    try:
        if kind in ("json", "json_object"):
            schema = json.loads(text) if kind == "json" else {"type": "object"}
            return json.loads(matcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS))
        if kind == "regex":
            return json.loads(matcher.grammar_from_regex(text))
        if kind == "choice":
            lark = "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in json.loads(text))
        else:
            lark = llguidance.gbnf_to_lark(text) if "::=" in text else text  # GBNF (llama.cpp's) or Lark
        return {"grammars": [{"lark_grammar": lark}]}
    except (ValueError, TypeError) as error:
        raise InvalidArgument(f"the {_NAMES[kind]} cannot be compiled: {error}") from None


class RowConstraint:
    """One request's grammar state: masks its logits before it samples, follows its tokens after."""

    def __init__(self, matcher, vocab_size: int, forbidden: tuple[int, ...] = ()):
        self.matcher, self.vocab_size, self.forbidden = matcher, vocab_size, list(forbidden)
        self.accepted = 0
        self.complete_at: int | None = None  # the count of tokens with which the grammar completed

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """`logits` (one row) with the tokens the grammar forbids at -inf (in place where it may be)."""
        if not logits.flags.writeable:
            logits = logits.copy()
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[: min(self.vocab_size, logits.shape[-1])]
        logits[: allowed.size][allowed == 0] = -np.inf
        logits[allowed.size:] = -np.inf
        if self.forbidden:
            logits[self.forbidden] = -np.inf
        return logits

    def accept(self, token: int) -> None:
        self.matcher.consume_token(token)
        self.accepted += 1
        if self.complete_at is None and self.matcher.is_stopped():
            self.complete_at = self.accepted

    def completes_at(self, generated: int) -> bool:
        """Whether the row's `generated`-th token completed the grammar (nothing more may follow). Asked
        by count, not of the matcher's state: a decode run samples ahead of the tokens it delivers."""
        return self.complete_at == generated


class StepMasks:
    """The masks of a decode run's constrained rows for each step, computed into one array on the decoding
    thread and applied to every constrained row together: masking each row's logits on its own would cost
    more than the row's sampling. (llguidance's parallel executor measured slower here: handing the work
    to its threads costs more than a mask of these rows.)"""

    def __init__(self, rows: list):
        self.rows = [(index, row.constraint) for index, row in enumerate(rows)
                     if getattr(row, "constraint", None) is not None]
        self.vocab = self.rows[0][1].vocab_size if self.rows else 0
        self.bits = np.zeros((len(self.rows), (self.vocab + 31) // 32), np.int32)
        self.every_row = [index for index, _ in self.rows] == list(range(len(rows)))

    def compute(self) -> None:
        """The rows' masks for their next tokens. Called before the step's graph runs: the executor lets go
        of the GIL, and the event loop has nothing to take it for until the previous step is handed over."""
        size = self.bits.shape[1] * 4
        for k, (_, constraint) in enumerate(self.rows):
            constraint.matcher.unsafe_compute_mask_ptr(self.bits[k].ctypes.data, size)

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """`logits` ([rows, vocab]) with each constrained row's forbidden tokens at -inf."""
        if not self.rows:
            return logits
        if not logits.flags.writeable:
            logits = logits.copy()
        width = min(self.vocab, logits.shape[1])
        forbidden = np.unpackbits(self.bits.view(np.uint8), axis=1, count=width, bitorder="little") == 0
        if self.every_row:
            np.copyto(logits[:, :width], -np.inf, where=forbidden)
            logits[:, width:] = -np.inf
        else:
            for k, (row, _) in enumerate(self.rows):
                np.copyto(logits[row, :width], -np.inf, where=forbidden[k])
                logits[row, width:] = -np.inf
        for row, constraint in self.rows:
            if constraint.forbidden:
                logits[row, constraint.forbidden] = -np.inf
        return logits
