"""The cross-encoder APIs: Cohere's rerank (`/v1/rerank`, `/v2/rerank`, also Jina's and vLLM's), a query
and documents in, the documents' indices out, most relevant first, each with its score in [0, 1]; and
vLLM's score (`/score`, `/v1/score`), pairs of texts in, a score per pair out, in order."""

import time
import uuid
from dataclasses import dataclass

from fastapi import Request

from server.api.http.context import json_of
from server.core.errors import InvalidArgument
from server.core.fields import boolean, integer
from server.core.types import TextModelInfo, TextResult

FIELDS = {"model", "query", "documents", "top_n", "return_documents"}


@dataclass
class RerankRequest:
    model: str  # "" where the body names none
    query: str
    documents: list[str]
    top_n: int
    return_documents: bool

    @classmethod
    def from_json(cls, payload: dict) -> "RerankRequest":
        unknown = sorted(set(payload) - FIELDS)
        if unknown:
            raise InvalidArgument(f"parameter {', '.join(map(repr, unknown))} is not supported by ortserve's "
                                  f"rerank; it takes {', '.join(sorted(FIELDS))}")
        model, query = payload.get("model") or "", payload.get("query")
        if not isinstance(model, str):
            raise InvalidArgument(f"'model' must be a model's name, got {model!r}")
        if not isinstance(query, str) or not query:
            raise InvalidArgument("'query' must be a non-empty string")
        documents = _documents(payload.get("documents"))
        top_n = integer(payload.get("top_n"), "'top_n'", 1, default=len(documents),
                        expected="a positive integer")
        return cls(model, query, documents, top_n,
                   boolean(payload.get("return_documents"), "'return_documents'", True))

    @classmethod
    async def from_http(cls, request: Request) -> "RerankRequest":
        return cls.from_json(await json_of(request))

    def answer(self, result: TextResult) -> dict:
        """The `top_n` most relevant documents, each with its index in the request (and its text)."""
        ranked = sorted(range(len(self.documents)), key=lambda i: -float(result.vectors[i][0]))
        results = []
        for index in ranked[:self.top_n]:
            item = {"index": index, "relevance_score": float(result.vectors[index][0])}
            if self.return_documents:
                item["document"] = {"text": self.documents[index]}
            results.append(item)
        return {"id": f"rerank-{uuid.uuid4().hex}", "model": result.model_name, "results": results,
                "usage": {"total_tokens": result.tokens}}


@dataclass
class ScoreRequest:
    model: str
    pairs: list[tuple[str, str]]

    @classmethod
    def from_json(cls, payload: dict) -> "ScoreRequest":
        """vLLM's `text_1` and `text_2`: one text and several (each scored against the one), or two lists
        of one length (scored pairwise)."""
        unknown = sorted(set(payload) - {"model", "text_1", "text_2"})
        if unknown:
            raise InvalidArgument(f"parameter {', '.join(map(repr, unknown))} is not supported by ortserve's "
                                  "score; it takes model, text_1, text_2")
        model = payload.get("model") or ""
        if not isinstance(model, str):
            raise InvalidArgument(f"'model' must be a model's name, got {model!r}")
        first, second = _texts(payload.get("text_1"), "text_1"), _texts(payload.get("text_2"), "text_2")
        if len(first) == 1:
            first = first * len(second)
        if len(first) != len(second):
            raise InvalidArgument(f"'text_1' has {len(first)} texts and 'text_2' {len(second)}: send one "
                                  "text_1, or as many as text_2")
        return cls(model, list(zip(first, second)))

    @classmethod
    async def from_http(cls, request: Request) -> "ScoreRequest":
        return cls.from_json(await json_of(request))

    def answer(self, result: TextResult) -> dict:
        return {"id": f"score-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                "model": result.model_name,
                "data": [{"index": i, "object": "score", "score": float(v[0])}
                         for i, v in enumerate(result.vectors)],
                "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens,
                          "completion_tokens": 0}}


def reranker(named: str, models: list[TextModelInfo]) -> str:
    """The named model, or else the one loaded reranker; InvalidArgument says which are there."""
    rerankers = sorted(info.name for info in models if info.reranker)
    loaded = ", ".join(rerankers) or "none"
    if named:
        info = next((info for info in models if info.name == named), None)
        if info is not None and not info.reranker:
            raise InvalidArgument(f"model '{named}' is not a reranker: rerank needs a cross-encoder with one "
                                  f"score, it has {len(info.labels)}; rerankers loaded: {loaded}")
        return named
    if len(rerankers) != 1:
        raise InvalidArgument(f"'model' must name a reranker; rerankers loaded: {loaded}")
    return rerankers[0]


def _documents(value) -> list[str]:
    """Strings, or Cohere's {"text": ...} objects."""
    if not isinstance(value, list) or not value:
        raise InvalidArgument("'documents' must be a non-empty list of strings or {\"text\": ...} objects")
    texts = [item.get("text") if isinstance(item, dict) else item for item in value]
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            raise InvalidArgument(f"'documents' item {index} must be a non-empty string or "
                                  f"{{\"text\": ...}}, got {value[index]!r}")
    return texts


def _texts(value, field: str) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise InvalidArgument(f"'{field}' must be a non-empty string or a non-empty list of them")
    return texts
