"""TEI's request bodies, each parsed and checked once."""

from dataclasses import dataclass

from fastapi import Request

from server.api.http.context import json_of
from server.api.openai.protocol import text_inputs
from server.core.errors import InvalidArgument
from server.core.fields import boolean, integer

TRUNCATION = {"right": "right", "left": "left"}
COMMON = {"model", "truncate", "truncation_direction"}
FIELDS = {
    "embed": COMMON | {"inputs", "normalize", "dimensions", "prompt_name"},
    "embed_all": COMMON | {"inputs", "prompt_name"},
    "similarity": COMMON | {"inputs", "prompt_name"},  # the truncation fields inside "parameters"
    "rerank": COMMON | {"query", "texts", "raw_scores", "return_text"},
    "predict": COMMON | {"inputs", "raw_scores"},
    "tokenize": {"model", "inputs", "add_special_tokens", "prompt_name"},
    "decode": {"model", "ids", "skip_special_tokens"},
}


@dataclass
class _TeiRequest:
    model: str  # "" where the body names none
    truncation: dict  # TextRequest's truncate and truncation_side

    route = ""

    @classmethod
    async def from_http(cls, request: Request):
        return cls.from_json(await json_of(request))

    @classmethod
    def from_json(cls, payload: dict):
        unknown = sorted(set(payload) - FIELDS[cls.route])
        if unknown:
            raise InvalidArgument(f"field {', '.join(map(repr, unknown))} is not supported by /{cls.route}")
        if payload.get("prompt_name") is not None:
            raise InvalidArgument("'prompt_name' is not supported: ortserve's text models have no prompts")
        model = payload.get("model") or ""
        if not isinstance(model, str):
            raise InvalidArgument(f"'model' must be a model's name, got {model!r}")
        return cls(model, _truncation(payload), **cls.fields(payload))

    @staticmethod
    def fields(payload: dict) -> dict:
        return {}


@dataclass
class EmbedRequest(_TeiRequest):
    inputs: list
    normalize: bool
    dimensions: int | None

    route = "embed"

    @staticmethod
    def fields(payload: dict) -> dict:
        dimensions = payload.get("dimensions")
        if dimensions is not None:
            integer(dimensions, "'dimensions'", 1, expected="a positive integer")
        return {"inputs": text_inputs(payload.get("inputs"), "inputs"),
                "normalize": boolean(payload.get("normalize"), "'normalize'", True), "dimensions": dimensions}


@dataclass
class EmbedAllRequest(_TeiRequest):
    inputs: list

    route = "embed_all"

    @staticmethod
    def fields(payload: dict) -> dict:
        return {"inputs": text_inputs(payload.get("inputs"), "inputs")}


SIMILARITY_INPUTS = '{"source_sentence": ..., "sentences": [...]}'
SIMILARITY_PARAMETERS = {"truncate", "truncation_direction", "prompt_name"}


@dataclass
class SimilarityRequest(_TeiRequest):
    source: str
    sentences: list[str]

    route = "similarity"

    @classmethod
    def from_json(cls, payload: dict):
        """TEI's {"inputs": {"source_sentence", "sentences"}, "parameters": {"truncate", ...}}: the
        parameters are the other routes' fields, one level down."""
        parameters = payload.get("parameters") or {}
        if not isinstance(parameters, dict) or set(parameters) - SIMILARITY_PARAMETERS:
            raise InvalidArgument(f"'parameters' takes {', '.join(sorted(SIMILARITY_PARAMETERS))}, "
                                  f"got {parameters!r}")
        return super().from_json({**{k: v for k, v in payload.items() if k != "parameters"}, **parameters})

    @staticmethod
    def fields(payload: dict) -> dict:
        inputs = payload.get("inputs")
        if not isinstance(inputs, dict) or set(inputs) - {"source_sentence", "sentences"}:
            raise InvalidArgument(f"'inputs' must be {SIMILARITY_INPUTS}, got {inputs!r}")
        source, sentences = inputs.get("source_sentence"), inputs.get("sentences")
        if not isinstance(source, str) or not source:
            raise InvalidArgument("'inputs.source_sentence' must be a non-empty string")
        if not isinstance(sentences, list) or not sentences or not all(isinstance(t, str) for t in sentences):
            raise InvalidArgument("'inputs.sentences' must be a non-empty list of strings")
        return {"source": source, "sentences": sentences}


@dataclass
class RerankRequest(_TeiRequest):
    query: str
    texts: list[str]
    raw_scores: bool
    return_text: bool

    route = "rerank"

    @staticmethod
    def fields(payload: dict) -> dict:
        query, texts = payload.get("query"), payload.get("texts")
        if not isinstance(query, str) or not query:
            raise InvalidArgument("'query' must be a non-empty string")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise InvalidArgument("'texts' must be a non-empty list of non-empty strings")
        return {"query": query, "texts": texts,
                "raw_scores": boolean(payload.get("raw_scores"), "'raw_scores'", False),
                "return_text": boolean(payload.get("return_text"), "'return_text'", False)}


@dataclass
class PredictRequest(_TeiRequest):
    single: bool  # one text or pair, answered without the outer list
    inputs: list[tuple[str, ...]]
    raw_scores: bool

    route = "predict"

    @staticmethod
    def fields(payload: dict) -> dict:
        single, inputs = _predict_inputs(payload.get("inputs"))
        if any(len(p) == 2 for p in inputs) and not all(len(p) == 2 for p in inputs):
            raise InvalidArgument("'inputs' mixes single texts and pairs; send one kind per request")
        return {"single": single, "inputs": inputs,
                "raw_scores": boolean(payload.get("raw_scores"), "'raw_scores'", False)}

    @property
    def pairs(self) -> list[str] | None:
        return [p[1] for p in self.inputs] if all(len(p) == 2 for p in self.inputs) else None


@dataclass
class TokenizeRequest(_TeiRequest):
    inputs: list[str]
    add_special_tokens: bool

    route = "tokenize"

    @staticmethod
    def fields(payload: dict) -> dict:
        inputs = payload.get("inputs")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
            raise InvalidArgument("'inputs' must be a string or a non-empty list of strings")
        special = boolean(payload.get("add_special_tokens"), "'add_special_tokens'", True)
        return {"inputs": inputs, "add_special_tokens": special}


@dataclass
class DecodeRequest(_TeiRequest):
    ids: list[list[int]]
    skip_special_tokens: bool

    route = "decode"

    @staticmethod
    def fields(payload: dict) -> dict:
        ids = payload.get("ids")
        ids = [ids] if _token_ids(ids) else ids
        if not isinstance(ids, list) or not ids or not all(_token_ids(row) for row in ids):
            raise InvalidArgument("'ids' must be a non-empty list of token ids (integers from 0), or a list "
                                  "of such lists")
        skip = boolean(payload.get("skip_special_tokens"), "'skip_special_tokens'", True)
        return {"ids": ids, "skip_special_tokens": skip}


def _token_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(type(i) is int and i >= 0 for i in value)


def _truncation(payload: dict) -> dict:
    direction = payload.get("truncation_direction") or ""
    side = TRUNCATION.get(direction.lower()) if isinstance(direction, str) else None
    if direction and side is None:
        raise InvalidArgument(f"'truncation_direction' must be Right or Left, got {direction!r}")
    return {"truncate": boolean(payload.get("truncate"), "'truncate'", False), "truncation_side": side or ""}


def _predict_inputs(value) -> tuple[bool, list[tuple[str, ...]]]:
    """TEI's predict inputs: a text, a pair [a, b], or a list of texts, [text] or pairs."""
    def sequence(item) -> tuple[str, ...] | None:
        if isinstance(item, str) and item:
            return (item,)
        if isinstance(item, list) and len(item) in (1, 2) and all(isinstance(t, str) and t for t in item):
            return tuple(item)
        return None

    if isinstance(value, str) or (isinstance(value, list) and len(value) == 2
                                  and all(isinstance(t, str) for t in value)):
        one = sequence(value)
        if one is not None:
            return True, [one]
    if isinstance(value, list) and value:
        batch = [sequence(item) for item in value]
        if all(batch):
            return False, batch
    raise InvalidArgument(
        "'inputs' must be a text, a pair [text, text_pair], or a non-empty list of texts or pairs"
    )
