"""Encoder text services: embeddings and scores for texts, the models' text settings (TEI's /info), their
tokens (/tokenize), and BYTES text inputs of an infer request tokenized into the model's token inputs
(`sends_texts`, `tokenize_inputs`: a step of inference, not a request of its own)."""

import time

from server.core.errors import InvalidArgument, failure_reason
from server.core.fields import boolean
from server.core.stats import Timing
from server.core.types import InferRequest, Tensor, TextModelInfo, TextRequest, TextResult
from server.encoding.encoder import TEXT_INPUTS, TextService
from server.repository.model import ModelVersion
from server.repository.registry import ModelRegistry


class EncodingService:
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    async def encode(self, request: TextRequest) -> TextResult:
        """Embeddings or scores for a request's texts, counted as one request of the model."""
        start = time.perf_counter_ns()
        model = self.registry.get(request.model_name, request.model_version)
        try:
            text = _text_service(model)
            text.check_task(request.task)
            texts = await text.tokenize(request)
            vectors, queued = await text.run(request, texts, model.infer)
        except BaseException as error:
            elapsed = time.perf_counter_ns() - start
            model.stats.record_failure(elapsed, failure_reason(error), request.protocol)
            raise
        elapsed = time.perf_counter_ns() - start
        timing = Timing(queue_ns=queued, infer_ns=elapsed - queued)
        model.stats.record_success(elapsed, timing, request.protocol)
        return TextResult(model.name, str(model.version), vectors, texts.tokens)

    def info(self, name: str, version: str = "") -> TextModelInfo:
        model = self.registry.get(name, version)
        return _info(model.name, _text_service(model))

    def models(self) -> list[TextModelInfo]:
        return [_info(m.name, m.text) for m in self.registry.ready_models() if m.text is not None]

    def tokens(self, name: str, texts: list[str], special_tokens: bool) -> list[list[dict]]:
        """Each text's tokens: id, text, whether special, character offsets (TEI's /tokenize)."""
        tokenizer = _text_service(self.registry.get(name)).tokenizer
        return [tokenizer.tokens(text, special_tokens) for text in texts]

    def texts(self, name: str, ids: list[list[int]], skip_special_tokens: bool) -> list[str]:
        """Each list of token ids as text (TEI's /decode)."""
        return _text_service(self.registry.get(name)).tokenizer.decode(ids, skip_special_tokens)


def sends_texts(request: InferRequest) -> bool:
    """Whether an infer request to a text model sends texts for the server to tokenize."""
    return any(t.name in TEXT_INPUTS for t in request.inputs)


async def tokenize_inputs(request: InferRequest, model: ModelVersion) -> None:
    """BYTES text_input (and text_pair) rows become the token inputs, padded to the longest row."""
    inputs = {tensor.name: tensor for tensor in request.inputs}
    unexpected = [name for name in inputs if name not in TEXT_INPUTS]
    if unexpected:
        raise InvalidArgument(
            f"input {', '.join(map(repr, unexpected))} cannot be sent with text_input: the server "
            "tokenizes text_input into the token inputs"
        )
    if "text_input" not in inputs:
        raise InvalidArgument("input 'text_pair' needs 'text_input', the first text of each pair")
    texts = _strings(inputs["text_input"])
    pairs = _strings(inputs["text_pair"]) if "text_pair" in inputs else None
    if pairs is not None and len(pairs) != len(texts):
        raise InvalidArgument(f"text_pair holds {len(pairs)} texts, text_input {len(texts)}: one pair each")
    truncate = boolean(request.parameters.get("truncate"), "request parameter 'truncate'", False)
    text = model.text
    encoded = await text.tokenize(TextRequest(model.name, text.settings.task, texts, pairs, truncate))
    feeds = text.feeds(encoded.encoded)
    specs = {spec.name: spec.datatype for spec in model.inputs}
    if not model.batching:
        feeds = {name: array[0] for name, array in feeds.items()} if len(texts) == 1 else feeds
    request.inputs = [Tensor(name, specs[name], array) for name, array in feeds.items()]


def _text_service(model: ModelVersion) -> TextService:
    if model.text is None:
        raise InvalidArgument(
            f"model '{model.name}' takes no text: its config has no text_tokenizer parameter "
            "(export it with `ortserve export bert` to serve it as a text model)"
        )
    return model.text


def _info(name: str, text: TextService) -> TextModelInfo:
    settings = text.settings
    return TextModelInfo(name, settings.task, list(text.labels), settings.pooling, settings.normalize,
                         settings.max_length, settings.max_batch_tokens, settings.max_client_batch_size)


def _strings(tensor: Tensor) -> list[str]:
    if tensor.datatype != "BYTES" or tensor.data.ndim > 2 or tensor.data.shape[1:] not in ((), (1,)):
        raise InvalidArgument(
            f"input '{tensor.name}' must be BYTES with one text per row (shape [n] or [n, 1]), "
            f"got {tensor.datatype} {list(tensor.shape)}"
        )
    try:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in tensor.data.reshape(-1)]
    except UnicodeDecodeError:
        raise InvalidArgument(f"input '{tensor.name}' is not valid UTF-8") from None
