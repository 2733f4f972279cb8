"""The protocol-neutral core: every front end decodes into these calls and encodes what they return."""

import time
from collections.abc import AsyncIterator

import numpy as np

from server.core import jsontext, tensors
from server.core.errors import Internal, InvalidArgument, ServerError, failure_reason
from server.core.shared_memory import RegionUse, SharedMemory
from server.core.stats import Timing
from server.core.types import (
    GenerateRequest,
    InferRequest,
    InferResponse,
    ModelIndexEntry,
    Tensor,
    TextRequest,
    TextResult,
)
from server.core.validation import check_inputs, check_outputs, raw_input
from server.encoding.encoder import TEXT_INPUTS, TextService
from server.generation.engine import TokenEvent, TokenLogprob, TokenStream
from server.protocol import ModelConfig
from server.repository.model import ModelVersion
from server.repository.registry import ModelRegistry
from server.sequences.scheduler import SequenceControl
from server.version import server_version

EXTENSIONS = (
    "classification",
    "schedule_policy",
    "model_repository",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "sequence",
    "system_shared_memory",
    "cuda_shared_memory",
)


class InferenceService:
    def __init__(self, registry: ModelRegistry, strict_readiness: bool = True):
        self.registry = registry
        self.strict_readiness = strict_readiness
        self.live = True
        self.name = "ortserve"
        self.version = server_version()
        self.shared_memory = SharedMemory()

    def ready(self) -> bool:
        return self.live and (self.registry.all_ready() or not self.strict_readiness)

    def server_metadata(self) -> dict:
        return {"name": self.name, "version": self.version, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str = "") -> dict:
        model = self.registry.get(name, version)
        versions = sorted(m.version for m in self.registry.ready_models() if m.name == name)
        text_inputs = []
        if model.text is not None:  # accepted in place of the token inputs
            names = TEXT_INPUTS if model.text.settings.task == "classify" else TEXT_INPUTS[:1]
            shape = [-1, 1] if model.batching else [-1]
            text_inputs = [{"name": n, "datatype": "BYTES", "shape": shape} for n in names]
        return {
            "name": name,
            "versions": [str(v) for v in versions],
            "platform": model.config.platform,
            "inputs": [_tensor_metadata(spec) for spec in model.inputs] + text_inputs,
            "outputs": [_tensor_metadata(spec) for spec in model.outputs],
        }

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.registry.is_ready(name, version)

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        return self.registry.get(name, version).config

    def repository_index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        return self.registry.index(ready_only)

    async def load(self, name: str, config_json: str | None = None, files: dict[str, bytes] | None = None):
        await self.registry.load(name, config_json, files)

    async def unload(self, name: str) -> None:
        await self.registry.unload(name)

    def statistics(self, name: str = "", version: str = "") -> list[dict]:
        """Triton's statistics extension: one `ModelStatistics` (as a dict) per model version."""
        if name and version:
            models = [self.registry.get(name, version)]
        elif name:
            self.registry.get(name)
            models = [m for m in self.registry.ready_models() if m.name == name]
        else:
            models = self.registry.ready_models()
        return [_statistics(model) for model in models]

    def generate(self, request: GenerateRequest) -> TokenStream:
        """Admits the request, raising any error before the first token, and returns its tokens."""
        start = time.perf_counter_ns()
        model = self._generation_model(request)
        try:
            prompt, params = model.engine.prepare(
                request.text, request.input_ids, request.parameters, request.messages
            )
            tokens = model.engine.submit(prompt, params, _recorder(model, start, request.protocol))
            tokens.model_version = str(model.version)
            return tokens
        except BaseException as error:
            elapsed = time.perf_counter_ns() - start
            model.stats.record_failure(elapsed, failure_reason(error), request.protocol)
            raise

    async def echo(self, request: GenerateRequest, logprobs: int | None) -> TokenEvent:
        """The prompt as the model reads it: its token ids and text, and with `logprobs` each token's
        log-probability given those before it and that many most likely tokens (OpenAI's `echo`; the
        first token has none)."""
        model = self._generation_model(request)
        engine = model.engine
        try:
            prompt = engine.prompt(request.text, request.input_ids)
            scored = [] if logprobs is None else await engine.score(prompt, logprobs)
        except BaseException as error:
            model.stats.record_failure(0, failure_reason(error), request.protocol)
            raise
        text = request.text if request.text is not None else engine.token_text(prompt)
        first = [] if logprobs is None else [TokenLogprob(engine.token_name(prompt[0]), None, None)]
        return TokenEvent(prompt, text, None, len(prompt), 0, first + scored)

    def _generation_model(self, request: GenerateRequest) -> ModelVersion:
        model = self.registry.get(request.model_name, request.model_version)
        if model.engine is None:
            raise InvalidArgument(
                f"model '{model.name}' is not a generation model (its config has no "
                "model_transaction_policy {{ decoupled: true }}); use its infer endpoint"
            )
        return model

    async def encode(self, request: TextRequest) -> TextResult:
        """Embeddings or scores for a request's texts, counted as one request of the model."""
        start = time.perf_counter_ns()
        model = self.registry.get(request.model_name, request.model_version)
        try:
            text = _text_service(model)
            text.check_task(request.task)
            texts = await text.tokenize(request)
            vectors = await text.run(request, texts, model.infer)
        except BaseException as error:
            elapsed = time.perf_counter_ns() - start
            model.stats.record_failure(elapsed, failure_reason(error), request.protocol)
            raise
        elapsed = time.perf_counter_ns() - start
        model.stats.record_success(elapsed, Timing(infer_ns=elapsed), request.protocol)
        return TextResult(model.name, str(model.version), vectors, texts.tokens)

    def text_service(self, name: str, version: str = "") -> TextService:
        """The text side of an encoder model: its tokenizer and settings (for /tokenize and /info)."""
        return _text_service(self.registry.get(name, version))

    def text_models(self) -> list[tuple[str, TextService]]:
        return [(m.name, m.text) for m in self.registry.ready_models() if m.text is not None]

    async def infer_stream(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        """One response for a plain model; for a generation model one per step's new tokens."""
        model = self.registry.get(request.model_name, request.model_version)
        if model.engine is None:
            yield await self.infer(request)
            return
        tokens = self.generate(_generate_request(request, model))
        try:
            async for event in tokens:
                yield _generation_response(model, request.id, event)
        finally:
            await tokens.aclose()

    async def infer(self, request: InferRequest) -> InferResponse:
        start = time.perf_counter_ns()
        model = self.registry.get(request.model_name, request.model_version)
        if model.engine is not None:
            return await self._generate_whole(model, request)
        try:
            self._gather_inputs(request, model)
            if model.text is not None and any(t.name in TEXT_INPUTS for t in request.inputs):
                await _tokenize_inputs(request, model)
            feeds = check_inputs(request, model.inputs, model.config.max_batch_size)
            model.limits.check(feeds, model.name)
            names = check_outputs(request, model.outputs)
            priority, timeout = _scheduling(request.parameters)
            sequence = SequenceControl.from_parameters(request.parameters)
            arrays, timing = await model.infer(feeds, names, priority, timeout, sequence)
            requested = {output.name: output for output in request.outputs}
            outputs = [_output(model, name, arrays[name], requested.get(name)) for name in names]
            shm_outputs = self._to_shared_memory(outputs, requested)
        except BaseException as error:
            elapsed = time.perf_counter_ns() - start
            model.stats.record_failure(elapsed, failure_reason(error), request.protocol)
            if isinstance(error, ServerError) or not isinstance(error, Exception):
                raise
            raise Internal(f"model '{model.name}' failed to run: {error}") from error
        model.stats.record_success(time.perf_counter_ns() - start, timing, request.protocol)
        return InferResponse(
            model_name=model.name,
            model_version=str(model.version),
            id=request.id,
            outputs=outputs,
            requested=requested,
            shm_outputs=shm_outputs,
        )

    def _gather_inputs(self, request: InferRequest, model: ModelVersion) -> None:
        """A raw binary body and inputs in shared memory become tensors like the others."""
        if request.raw_input is not None:
            request.inputs = [raw_input(request, model.inputs, model.batching)]
        for name, datatype, shape, use in request.shm_inputs:
            data = tensors.from_raw(name, datatype, shape, self.shared_memory.read(use))
            request.inputs.append(Tensor(name, datatype, data))

    def _to_shared_memory(self, outputs: list[Tensor], requested: dict) -> dict[str, dict]:
        """Writes the outputs a request placed in shared memory; returns their response parameters."""
        placed = {}
        for tensor in outputs:
            wanted = requested.get(tensor.name)
            use = RegionUse.from_parameters(tensor.name, wanted.parameters) if wanted else None
            if use is None:
                continue
            data = tensors.to_raw(tensor.data)
            self.shared_memory.write(use, data)
            placed[tensor.name] = {"shared_memory_region": use.name, "shared_memory_byte_size": len(data)}
            if use.offset:
                placed[tensor.name]["shared_memory_offset"] = use.offset
        return placed

    async def _generate_whole(self, model: ModelVersion, request: InferRequest) -> InferResponse:
        whole = await self.generate(_generate_request(request, model)).collect()
        return _generation_response(model, request.id, whole)


def _text_service(model: ModelVersion) -> TextService:
    if model.text is None:
        raise InvalidArgument(
            f"model '{model.name}' takes no text: its config has no text_tokenizer parameter "
            "(export it with `ortserve export bert` to serve it as a text model)"
        )
    return model.text


async def _tokenize_inputs(request: InferRequest, model: ModelVersion) -> None:
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
    truncate = request.parameters.get("truncate", False)
    if not isinstance(truncate, bool):
        raise InvalidArgument(f"request parameter 'truncate' must be true or false, got {truncate!r}")
    text = model.text
    encoded = await text.tokenize(TextRequest(model.name, text.settings.task, texts, pairs, truncate))
    feeds = text.feeds(encoded.encoded)
    specs = {spec.name: spec.datatype for spec in model.inputs}
    if not model.batching:
        feeds = {name: array[0] for name, array in feeds.items()} if len(texts) == 1 else feeds
    request.inputs = [Tensor(name, specs[name], array) for name, array in feeds.items()]


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


def _recorder(model: ModelVersion, start: int, protocol: str):
    """Counts a generation request once, as a success or a failure, when its stream ends."""

    def record(outcome: str) -> None:
        elapsed = time.perf_counter_ns() - start
        if outcome == "success":
            model.stats.inference_count += 1
            model.stats.record_success(elapsed, Timing(infer_ns=elapsed), protocol)
        else:
            model.stats.record_failure(elapsed, outcome, protocol)

    return record


GENERATION_INPUTS = ("text_input", "input_ids", "sampling_parameters")
GENERATION_OUTPUTS = ("text_output", "output_ids")


def _generate_request(request: InferRequest, model: ModelVersion) -> GenerateRequest:
    """An infer request to a generation model: text_input or input_ids, and sampling parameters
    from the request's parameters and/or a sampling_parameters JSON input."""
    inputs = {tensor.name: tensor for tensor in request.inputs}
    unknown = [name for name in inputs if name not in GENERATION_INPUTS]
    if unknown:
        raise InvalidArgument(
            f"unexpected input {', '.join(map(repr, unknown))} for generation model '{model.name}'; "
            f"expected {', '.join(GENERATION_INPUTS)}"
        )
    unknown = [output.name for output in request.outputs if output.name not in GENERATION_OUTPUTS]
    if unknown:
        raise InvalidArgument(
            f"unexpected output {', '.join(map(repr, unknown))} for generation model '{model.name}'; "
            f"expected {', '.join(GENERATION_OUTPUTS)}"
        )
    parameters = dict(request.parameters)
    if "sampling_parameters" in inputs:
        parameters.update(_json_input(inputs["sampling_parameters"]))
    text = ids = None
    if "text_input" in inputs:
        text = _one_string(inputs["text_input"])
    if "input_ids" in inputs:
        ids = [int(i) for i in inputs["input_ids"].data.reshape(-1)]
    return GenerateRequest(model.name, str(model.version), text, ids, parameters, request.protocol)


def _one_string(tensor: Tensor) -> str:
    if tensor.datatype != "BYTES" or tensor.data.size != 1:
        raise InvalidArgument(
            f"input '{tensor.name}' must be BYTES holding one string, "
            f"got {tensor.datatype} {list(tensor.shape)}"
        )
    value = tensor.data.reshape(-1)[0]
    try:
        return value.decode() if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError:
        raise InvalidArgument(f"input '{tensor.name}' is not valid UTF-8") from None


def _json_input(tensor: Tensor) -> dict:
    value = jsontext.loads(_one_string(tensor), "input 'sampling_parameters'")
    if not isinstance(value, dict):
        raise InvalidArgument("input 'sampling_parameters' must be a JSON object")
    return value


def _generation_response(model, request_id: str, event: TokenEvent) -> InferResponse:
    outputs = [
        Tensor("text_output", "BYTES", np.array([event.text.encode()], dtype=object)),
        Tensor("output_ids", "INT64", np.array(event.token_ids, dtype=np.int64)),
    ]
    parameters = {}
    if event.finish_reason is not None:
        parameters = {"finish_reason": event.finish_reason, "triton_final_response": True}
    return InferResponse(model.name, str(model.version), request_id, outputs, {}, parameters)


def _scheduling(parameters: dict) -> tuple[int, int]:
    """The `priority` and `timeout` (microseconds) request parameters of Triton's protocol."""
    values = []
    for key in ("priority", "timeout"):
        value = parameters.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidArgument(f"request parameter '{key}' must be an integer >= 0, got {value!r}")
        values.append(value)
    return values[0], values[1]


def _tensor_metadata(spec) -> dict:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _output(model: ModelVersion, name: str, array: np.ndarray, requested) -> Tensor:
    datatype = next(spec.datatype for spec in model.outputs if spec.name == name)
    if requested is not None and requested.class_count:
        labels = model.labels.get(name, [])
        return Tensor(name, "BYTES", classify(array, requested.class_count, labels, model.batching))
    return Tensor(name, datatype, array)


MAX_CLASSIFIED = 1 << 20  # elements per row: sorting more per request would stall the server


def classify(array: np.ndarray, count: int, labels: list[str], batched: bool) -> np.ndarray:
    """Triton's classification extension: the top `count` entries as b"value:index[:label]"."""
    rows = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
    if rows.shape[1] > MAX_CLASSIFIED:
        raise InvalidArgument(
            f"classification output tensor too large: {rows.shape[1]} elements per item, "
            f"ortserve classifies at most {MAX_CLASSIFIED}"
        )
    count = min(count, rows.shape[1])
    top = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :count]
    result = np.empty(top.shape, dtype=object)
    for row, indices in enumerate(top):
        for column, index in enumerate(indices):
            label = f":{labels[index]}" if index < len(labels) else ""
            result[row, column] = f"{float(rows[row, index]):f}:{index}{label}".encode()
    return result if batched else result[0]


def _statistics(model: ModelVersion) -> dict:
    stats = model.stats

    def duration(d):
        return {"count": d.count, "ns": d.ns}

    return {
        "name": model.name,
        "version": str(model.version),
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            key: duration(getattr(stats, key))
            for key in (
                "success",
                "fail",
                "queue",
                "compute_input",
                "compute_infer",
                "compute_output",
            )
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": duration(batch.compute_input),
                "compute_infer": duration(batch.compute_infer),
                "compute_output": duration(batch.compute_output),
            }
            for size, batch in sorted(stats.batches.items())
        ],
    }
