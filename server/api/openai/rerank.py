"""The rerank API of Cohere (`/v1/rerank`, `/v2/rerank`), Jina and vLLM: a query and documents in, the
documents' indices out, most relevant first, each with its cross-encoder score in [0, 1]."""

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
