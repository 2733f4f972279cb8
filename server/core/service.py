"""The protocol-neutral core: every front end decodes into these calls and encodes what they return."""

import asyncio
import time
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from server.core.errors import Internal, InvalidArgument, ServerError, Unavailable
from server.core.types import InferRequest, InferResponse, ModelIndexEntry, Tensor
from server.core.validation import check_inputs, check_outputs
from server.protocol import ModelConfig
from server.repository.model import ModelVersion
from server.repository.registry import ModelRegistry

EXTENSIONS = (
    "classification",
    "schedule_policy",
    "model_repository",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
)


def _version() -> str:
    try:
        return version("ortserve")
    except PackageNotFoundError:
        return "0.0.0"


class InferenceService:
    def __init__(self, registry: ModelRegistry, strict_readiness: bool = True):
        self.registry = registry
        self.strict_readiness = strict_readiness
        self.live = True
        self.name = "ortserve"
        self.version = _version()

    def ready(self) -> bool:
        return self.live and (self.registry.all_ready() or not self.strict_readiness)

    def server_metadata(self) -> dict:
        return {"name": self.name, "version": self.version, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str = "") -> dict:
        model = self.registry.get(name, version)
        versions = sorted(m.version for m in self.registry.ready_models() if m.name == name)
        return {
            "name": name,
            "versions": [str(v) for v in versions],
            "platform": model.config.platform,
            "inputs": [_tensor_metadata(spec) for spec in model.inputs],
            "outputs": [_tensor_metadata(spec) for spec in model.outputs],
        }

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.registry.is_ready(name, version)

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        return self.registry.get(name, version).config

    def repository_index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        return self.registry.index(ready_only)

    async def load(self, name: str, config_json: str | None = None) -> None:
        await self.registry.load(name, config_json)

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

    async def infer(self, request: InferRequest) -> InferResponse:
        start = time.perf_counter_ns()
        model = self.registry.get(request.model_name, request.model_version)
        try:
            feeds = check_inputs(request, model.inputs, model.config.max_batch_size)
            names = check_outputs(request, model.outputs)
            priority, timeout = _scheduling(request.parameters)
            arrays, timing = await model.infer(feeds, names, priority, timeout)
        except BaseException as error:
            elapsed = time.perf_counter_ns() - start
            model.stats.record_failure(elapsed, failure_reason(error), request.protocol)
            if isinstance(error, ServerError) or not isinstance(error, Exception):
                raise
            raise Internal(f"model '{model.name}' failed to run: {error}") from error
        requested = {output.name: output for output in request.outputs}
        outputs = [_output(model, name, arrays[name], requested.get(name)) for name in names]
        model.stats.record_success(time.perf_counter_ns() - start, timing, request.protocol)
        return InferResponse(
            model_name=model.name,
            model_version=str(model.version),
            id=request.id,
            outputs=outputs,
            requested=requested,
        )


def failure_reason(error: BaseException) -> str:
    """Triton's `reason` label of nv_inference_request_failure."""
    if isinstance(error, Unavailable):
        return "REJECTED"  # queue full, timed out in the queue, unloaded while waiting
    if isinstance(error, asyncio.CancelledError):
        return "CANCELED"
    if isinstance(error, ServerError):
        return "OTHER"
    return "BACKEND"


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


def classify(array: np.ndarray, count: int, labels: list[str], batched: bool) -> np.ndarray:
    """Triton's classification extension: the top `count` entries as b"value:index[:label]"."""
    rows = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
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
