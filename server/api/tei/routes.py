"""The TEI routes, at the root and under `/tei/{model}`, answering errors in TEI's shape."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from server.api.http.context import Json, Served
from server.api.openai import tokenize as vllm
from server.api.openai.routes import json_response
from server.api.tei.errors import TeiRoute
from server.api.tei.protocol import (
    DecodeRequest,
    EmbedAllRequest,
    EmbedRequest,
    PredictRequest,
    RerankRequest,
    SimilarityRequest,
    TokenizeRequest,
)
from server.core.errors import InvalidArgument, Unavailable
from server.core.types import TextModelInfo, TextRequest
from server.service.services import Service

router = APIRouter(route_class=TeiRoute)
Embed = Annotated[EmbedRequest, Depends(EmbedRequest.from_http)]
EmbedAll = Annotated[EmbedAllRequest, Depends(EmbedAllRequest.from_http)]
Similarity = Annotated[SimilarityRequest, Depends(SimilarityRequest.from_http)]
Rerank = Annotated[RerankRequest, Depends(RerankRequest.from_http)]
Predict = Annotated[PredictRequest, Depends(PredictRequest.from_http)]
Decode = Annotated[DecodeRequest, Depends(DecodeRequest.from_http)]


@router.post("/embed")
@router.post("/tei/{model}/embed")
async def embed(service: Served, body: Embed, model: str = ""):
    name = _model(service, model or body.model, "embed")
    result = await service.text.encode(TextRequest(
        name, "embed", body.inputs, normalize=body.normalize, dimensions=body.dimensions, protocol="http",
        **body.truncation))
    return json_response([vector.tolist() for vector in result.vectors])


@router.post("/embed_all")
@router.post("/tei/{model}/embed_all")
async def embed_all(service: Served, body: EmbedAll, model: str = ""):
    """Each token's vector, not pooled nor normalized."""
    name = _model(service, model or body.model, "embed")
    result = await service.text.encode(TextRequest(name, "embed", body.inputs, pooled=False, protocol="http",
                                                   **body.truncation))
    return json_response([tokens.tolist() for tokens in result.vectors])


@router.post("/similarity")
@router.post("/tei/{model}/similarity")
async def similarity(service: Served, body: Similarity, model: str = ""):
    """The cosine of the source sentence's embedding with each sentence's."""
    name = _model(service, model or body.model, "embed")
    result = await service.text.encode(TextRequest(
        name, "embed", [body.source, *body.sentences], normalize=True, protocol="http", **body.truncation))
    source, *sentences = result.vectors
    return json_response([float(vector @ source) for vector in sentences])


@router.post("/rerank")
@router.post("/tei/{model}/rerank")
async def rerank(service: Served, body: Rerank, model: str = ""):
    name = _model(service, model or body.model, "rerank")
    info = service.text.info(name)
    if not info.reranker:
        raise InvalidArgument(
            f"model '{name}' is not a reranker: /rerank needs a cross-encoder with one score, "
            f"it has {len(info.labels)}"
        )
    result = await service.text.encode(TextRequest(
        name, "classify", [body.query] * len(body.texts), pairs=body.texts, raw_scores=body.raw_scores,
        protocol="http", **body.truncation))
    ranks = [{"index": i, "score": float(v[0])} for i, v in enumerate(result.vectors)]
    if body.return_text:
        for rank in ranks:
            rank["text"] = body.texts[rank["index"]]
    return sorted(ranks, key=lambda rank: -rank["score"])


@router.post("/predict")
@router.post("/tei/{model}/predict")
async def predict(service: Served, body: Predict, model: str = ""):
    name = _model(service, model or body.model, "predict")
    result = await service.text.encode(TextRequest(
        name, "classify", [p[0] for p in body.inputs], pairs=body.pairs, raw_scores=body.raw_scores,
        protocol="http", **body.truncation))
    labels = service.text.info(name).labels
    answers = [
        sorted(({"score": float(s), "label": labels[i]} for i, s in enumerate(scores)),
               key=lambda item: -item["score"])
        for scores in result.vectors
    ]
    return answers[0] if body.single else answers


@router.post("/tokenize")
@router.post("/tei/{model}/tokenize")
async def tokenize(service: Served, payload: Json, model: str = ""):
    """TEI's, or vLLM's where the body has a `prompt` or `messages` (a generation model's tokens)."""
    if not model and vllm.is_vllm(payload):
        body = vllm.TokenizeRequest.from_json(payload)
        tokens, context = service.generation.tokens(body.generate, body.special_tokens)
        return {"count": len(tokens), "max_model_len": context, "tokens": tokens, "token_strs": None}
    body = TokenizeRequest.from_json(payload)
    name = _model(service, model or body.model, "tokenize")
    return service.text.tokens(name, body.inputs, body.add_special_tokens)


@router.post("/decode")
@router.post("/tei/{model}/decode")
async def decode(service: Served, body: Decode, model: str = ""):
    name = _model(service, model or body.model, "decode")
    return service.text.texts(name, body.ids, body.skip_special_tokens)


@router.get("/health")
async def health(service: Served):
    """TEI's: 200 while the server is ready (Triton's readiness, `/v2/health/ready`), else 503."""
    if not service.health.ready():
        raise Unavailable("not ready: a model is still loading or failed to load (see /v2/repository/index)")
    return Response(status_code=200)


@router.get("/info")
@router.get("/tei/{model}/info")
async def info(request: Request, service: Served, model: str = ""):
    name = _model(service, model or request.query_params.get("model", ""), "info")
    return _info(service.text.info(name), service.health.version)


def _model(service: Service, named: str, route: str) -> str:
    """The named model, or else the one loaded text model that serves the route."""
    if named:
        return named
    fitting = sorted({info.name for info in service.text.models() if _fits(info, route)})
    if len(fitting) == 1:
        return fitting[0]
    if not fitting:
        raise InvalidArgument(f"no loaded model serves /{route}")
    raise InvalidArgument(
        f"{len(fitting)} loaded models serve /{route}: {', '.join(fitting)}; name one with 'model' in the "
        f"body, or call /tei/{{model}}/{route}"
    )


def _fits(info: TextModelInfo, route: str) -> bool:
    if route == "embed":
        return info.task == "embed"
    if route == "rerank":
        return info.reranker
    if route == "predict":
        return info.task == "classify"
    return True


def _info(info: TextModelInfo, version: str) -> dict:
    if info.task == "embed":
        kind = {"embedding": {"pooling": info.pooling, "normalize": info.normalize}}
    else:
        id2label = dict(enumerate(info.labels))
        kind = {("reranker" if info.reranker else "classifier"): {
            "id2label": {str(i): label for i, label in id2label.items()},
            "label2id": {label: i for i, label in id2label.items()},
        }}
    return {
        "model_id": info.name,
        "model_type": kind,
        "max_input_length": info.max_length,
        "max_batch_tokens": info.max_batch_tokens,
        "max_client_batch_size": info.max_client_batch_size,
        "version": version,
    }
