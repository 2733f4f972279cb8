"""text-embeddings-inference's routes: /embed, /rerank, /predict, /tokenize, /info.

TEI serves one model per server; ortserve serves many, so each text model is also a TEI server of its
own under `/tei/{model}` (point a TEI client at that base URL). The root routes take the model from the
body's `model` (an ortserve addition), or serve the one loaded model that fits the route."""

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from server.api.http import codec
from server.api.http.errors import STATUS, responding
from server.api.http.openai import json_response, text_inputs
from server.core.errors import ErrorCode, InvalidArgument, ServerError
from server.core.service import InferenceService
from server.core.types import TextRequest
from server.encoding.encoder import TextService
from server.version import server_version

ERROR_TYPES = {ErrorCode.UNAVAILABLE: "Overloaded", ErrorCode.INTERNAL: "Backend"}
TRUNCATION = {"right": "right", "left": "left"}
COMMON = {"model", "truncate", "truncation_direction"}
FIELDS = {
    "embed": COMMON | {"inputs", "normalize", "dimensions", "prompt_name"},
    "rerank": COMMON | {"query", "texts", "raw_scores", "return_text"},
    "predict": COMMON | {"inputs", "raw_scores"},
    "tokenize": {"model", "inputs", "add_special_tokens", "prompt_name"},
}


def _tei_error(error: ServerError) -> JSONResponse:
    kind = ERROR_TYPES.get(error.code, "Validation")
    return JSONResponse({"error": error.message, "error_type": kind}, status_code=STATUS[error.code])


tei_errors = responding(_tei_error)


def add_tei_routes(app: FastAPI, service: InferenceService, body: Callable) -> None:
    async def payload_of(request: Request, route: str) -> dict:
        payload = codec.parse_json(await body(request))
        unknown = sorted(set(payload) - FIELDS[route])
        if unknown:
            raise InvalidArgument(f"field {', '.join(map(repr, unknown))} is not supported by /{route}")
        if payload.get("prompt_name") is not None:
            raise InvalidArgument("'prompt_name' is not supported: ortserve's text models have no prompts")
        return payload

    @app.post("/embed")
    @app.post("/tei/{model}/embed")
    @tei_errors
    async def embed(request: Request, model: str = ""):
        payload = await payload_of(request, "embed")
        normalize, dimensions = _flag(payload, "normalize", True), payload.get("dimensions")
        if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
            raise InvalidArgument(f"'dimensions' must be a positive integer, got {dimensions!r}")
        text_request = TextRequest(
            _model(service, model, payload, "embed"), "embed", text_inputs(payload.get("inputs"), "inputs"),
            normalize=normalize, dimensions=dimensions, protocol="http", **_truncation(payload),
        )
        result = await service.encode(text_request)
        return json_response([vector.tolist() for vector in result.vectors])

    @app.post("/rerank")
    @app.post("/tei/{model}/rerank")
    @tei_errors
    async def rerank(request: Request, model: str = ""):
        payload = await payload_of(request, "rerank")
        query, texts = payload.get("query"), payload.get("texts")
        if not isinstance(query, str) or not query:
            raise InvalidArgument("'query' must be a non-empty string")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise InvalidArgument("'texts' must be a non-empty list of non-empty strings")
        name = _model(service, model, payload, "rerank")
        labels = service.text_service(name).labels_count
        if labels != 1:
            raise InvalidArgument(
                f"model '{name}' is not a reranker: /rerank needs a cross-encoder with one score, "
                f"it has {labels}"
            )
        result = await service.encode(TextRequest(
            name, "classify", [query] * len(texts), pairs=texts,
            raw_scores=_flag(payload, "raw_scores", False), protocol="http", **_truncation(payload),
        ))
        ranks = [{"index": i, "score": float(v[0])} for i, v in enumerate(result.vectors)]
        if _flag(payload, "return_text", False):
            for rank in ranks:
                rank["text"] = texts[rank["index"]]
        return sorted(ranks, key=lambda rank: -rank["score"])

    @app.post("/predict")
    @app.post("/tei/{model}/predict")
    @tei_errors
    async def predict(request: Request, model: str = ""):
        payload = await payload_of(request, "predict")
        single, inputs = _predict_inputs(payload.get("inputs"))
        name = _model(service, model, payload, "predict")
        pairs = [p[1] for p in inputs] if all(len(p) == 2 for p in inputs) else None
        if pairs is None and any(len(p) == 2 for p in inputs):
            raise InvalidArgument("'inputs' mixes single texts and pairs; send one kind per request")
        result = await service.encode(TextRequest(
            name, "classify", [p[0] for p in inputs], pairs=pairs,
            raw_scores=_flag(payload, "raw_scores", False), protocol="http", **_truncation(payload),
        ))
        labels = service.text_service(name).labels
        answers = [
            sorted(({"score": float(s), "label": labels[i]} for i, s in enumerate(scores)),
                   key=lambda item: -item["score"])
            for scores in result.vectors
        ]
        return answers[0] if single else answers

    @app.post("/tokenize")
    @app.post("/tei/{model}/tokenize")
    @tei_errors
    async def tokenize(request: Request, model: str = ""):
        payload = await payload_of(request, "tokenize")
        inputs = payload.get("inputs")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
            raise InvalidArgument("'inputs' must be a string or a non-empty list of strings")
        special = _flag(payload, "add_special_tokens", True)
        text = service.text_service(_model(service, model, payload, "tokenize"))
        return [text.tokenizer.tokens(t, special) for t in inputs]

    @app.get("/info")
    @app.get("/tei/{model}/info")
    @tei_errors
    async def info(request: Request, model: str = ""):
        name = _model(service, model, dict(request.query_params), "info")
        return _info(name, service.text_service(name))


def _model(service: InferenceService, path_model: str, payload: dict, route: str) -> str:
    named = path_model or payload.get("model")
    if named:
        if not isinstance(named, str):
            raise InvalidArgument(f"'model' must be a model's name, got {named!r}")
        return named
    fitting = sorted({name for name, text in service.text_models() if _fits(text, route)})
    if len(fitting) == 1:
        return fitting[0]
    if not fitting:
        raise InvalidArgument(f"no loaded model serves /{route}")
    raise InvalidArgument(
        f"{len(fitting)} loaded models serve /{route}: {', '.join(fitting)}; name one with 'model' in the "
        f"body, or call /tei/{{model}}/{route}"
    )


def _fits(text: TextService, route: str) -> bool:
    if route == "embed":
        return text.settings.task == "embed"
    if route == "rerank":
        return text.labels_count == 1
    if route == "predict":
        return text.settings.task == "classify"
    return True


def _flag(payload: dict, key: str, default: bool) -> bool:
    value = payload.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidArgument(f"'{key}' must be true or false, got {value!r}")
    return value


def _truncation(payload: dict) -> dict:
    direction = payload.get("truncation_direction") or ""
    side = TRUNCATION.get(direction.lower()) if isinstance(direction, str) else None
    if direction and side is None:
        raise InvalidArgument(f"'truncation_direction' must be Right or Left, got {direction!r}")
    return {"truncate": _flag(payload, "truncate", False), "truncation_side": side or ""}


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


def _info(name: str, text: TextService) -> dict:
    settings = text.settings
    if settings.task == "embed":
        kind = {"embedding": {"pooling": settings.pooling, "normalize": settings.normalize}}
    else:
        id2label = dict(enumerate(text.labels))
        kind = {("reranker" if text.labels_count == 1 else "classifier"): {
            "id2label": {str(i): label for i, label in id2label.items()},
            "label2id": {label: i for i, label in id2label.items()},
        }}
    return {
        "model_id": name,
        "model_type": kind,
        "max_input_length": settings.max_length,
        "max_batch_tokens": settings.max_batch_tokens,
        "max_client_batch_size": settings.max_client_batch_size,
        "version": server_version(),
    }
