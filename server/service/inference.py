"""Inference: an infer request validated against its model, its inputs gathered (raw body, shared
memory, text), run through the model's scheduler, and its outputs placed (response, shared memory,
classification). Generation models answer through the generation service."""

import math
import time
from collections.abc import AsyncIterator, Awaitable
from functools import partial

import numpy as np

from server.core import datatypes, tensors
from server.core.errors import Internal, ServerError, failure_reason
from server.core.fields import integer
from server.core.shared_memory import RegionUse, SharedMemory
from server.core.stats import Timing
from server.core.types import InferRequest, InferResponse, RequestedOutput, Tensor
from server.core.validation import check_inputs, check_outputs, raw_input
from server.repository.model import ModelVersion
from server.repository.registry import ModelRegistry
from server.sequences.scheduler import SequenceControl
from server.service.classification import classify
from server.service.ensemble import run_ensemble
from server.service.generation import GenerationService
from server.service.response_cache import ResponseCache
from server.service.text import sends_texts, tokenize_inputs
from server.tracing.spans import Tracer

IN_PLACE_FROM = 512 << 10  # bytes: a smaller output costs less to copy than binding it costs ONNX Runtime


class InferenceService:
    def __init__(self, registry: ModelRegistry, shared_memory: SharedMemory, generation: GenerationService,
                 tracer: Tracer, cache: ResponseCache | None = None):
        self.registry = registry
        self.cache = cache  # the server's response cache, for the models whose config enables it
        self.shared_memory = shared_memory
        self.generation = generation
        self.tracer = tracer

    async def infer_stream(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        """One response for a plain model; for a generation model one per step's new tokens."""
        if self.registry.get(request.model_name, request.model_version).engine is not None:
            async for response in self.generation.infer_stream(request):
                yield response
            return
        yield await self.infer(request)

    def decoupled(self, model_name: str, model_version: str = "") -> bool:
        """Whether the model answers a request with a stream of responses (a generation model); False for
        a model that is unknown or not ready, whose request then fails as a plain one."""
        try:
            return self.registry.get(model_name, model_version).engine is not None
        except ServerError:
            return False

    async def infer(self, request: InferRequest) -> InferResponse:
        start = time.perf_counter_ns()
        model = self.registry.get(request.model_name, request.model_version)
        if model.engine is not None:
            return await self.generation.infer(request)
        trace = self.tracer.start(model.name, request.protocol, request.traceparent)
        try:
            self._gather_inputs(request, model)
            if model.text is not None and sends_texts(request):
                await tokenize_inputs(request, model)
            feeds = check_inputs(request, model.inputs, model.config.max_batch_size)
            model.limits.check(feeds, model.name)
            names = check_outputs(request, model.outputs)
            if trace is not None:
                trace.mark("QUEUE_START")
            requested = {output.name: output for output in request.outputs}
            regions = _output_regions(requested)
            into = self._in_place(model, feeds, requested, regions)
            if self.cache is not None and model.config.response_cache.enable:
                run = partial(self._run, model, request, feeds, names, into)
                arrays, timing = await self.cache.through(model, feeds, names, run)
            else:
                arrays, timing = await self._run(model, request, feeds, names, into)
            outputs = [_output(model, name, arrays[name], requested.get(name)) for name in names]
            shm_outputs = self._to_shared_memory(outputs, regions, into)
        except BaseException as error:
            elapsed = time.perf_counter_ns() - start
            model.stats.record_failure(elapsed, failure_reason(error), request.protocol)
            if trace is not None:
                trace.end(str(model.version), error=error, request_id=request.id or None)
            if isinstance(error, ServerError) or not isinstance(error, Exception):
                raise
            raise Internal(f"model '{model.name}' failed to run: {error}") from error
        model.stats.record_success(time.perf_counter_ns() - start, timing, request.protocol)
        if trace is not None:
            trace.end(str(model.version), timing, request_id=request.id or None)
        return InferResponse(
            model_name=model.name,
            model_version=str(model.version),
            id=request.id,
            outputs=outputs,
            requested=requested,
            shm_outputs=shm_outputs,
        )

    def _run(self, model: ModelVersion, request: InferRequest, feeds: dict[str, np.ndarray], names: list[str],
             into: dict[str, np.ndarray]) -> Awaitable[tuple[dict[str, np.ndarray], Timing]]:
        """The ensemble's steps or the model's scheduler, as the awaitable that runs them (no coroutine of
        its own around it: this is every request's path)."""
        if model.ensemble is not None:
            return run_ensemble(model, feeds, request, self.infer)
        priority, timeout = _scheduling(request.parameters)
        sequence = SequenceControl.from_parameters(request.parameters)
        return model.infer(feeds, names, priority, timeout, sequence, into)

    def _gather_inputs(self, request: InferRequest, model: ModelVersion) -> None:
        """A raw binary body and inputs in shared memory become tensors like the others."""
        if request.raw_input is not None:
            request.inputs = [raw_input(request, model.inputs, model.batching)]
        for name, datatype, shape, use in request.shm_inputs:
            data = tensors.from_raw(name, datatype, shape, self.shared_memory.read(use), request.model_name)
            request.inputs.append(Tensor(name, datatype, data))

    def _in_place(self, model: ModelVersion, feeds: dict[str, np.ndarray],
                  requested: dict[str, RequestedOutput], regions: dict[str, RegionUse]
                  ) -> dict[str, np.ndarray]:
        """The large outputs placed in system shared memory whose shapes the inputs give: their regions'
        spans as arrays, for the execution to write into (without the copy from its own output)."""
        into = {}
        for name, use in regions.items():
            shape = model.output_shapes.of(name, feeds) if not requested[name].class_count else None
            spec = next((spec for spec in model.outputs if spec.name == name), None)
            if shape is None or spec is None or spec.datatype == "BYTES":
                continue
            dtype = datatypes.numpy_dtype(spec.datatype)
            if math.prod(shape) * dtype.itemsize < IN_PLACE_FROM:
                continue
            array = self.shared_memory.array(use, dtype, shape)
            if array is not None:
                into[name] = array
        return into

    def _to_shared_memory(self, outputs: list[Tensor], regions: dict[str, RegionUse],
                          in_place: dict[str, np.ndarray]) -> dict[str, dict]:
        """Writes the outputs a request placed in shared memory (unless the execution wrote them there);
        returns their response parameters."""
        placed = {}
        for tensor in outputs:
            use = regions.get(tensor.name)
            if use is None:
                continue
            there = in_place.get(tensor.name)
            if there is not None and np.may_share_memory(tensor.data, there):
                size = tensor.data.nbytes
            else:
                data = tensors.raw_view(tensor.data)  # copied once, into the region
                self.shared_memory.write(use, data)
                size = len(data)
            placed[tensor.name] = {"shared_memory_region": use.name, "shared_memory_byte_size": size}
            if use.offset:
                placed[tensor.name]["shared_memory_offset"] = use.offset
        return placed


def _output_regions(requested: dict[str, RequestedOutput]) -> dict[str, RegionUse]:
    """The requested outputs placed in shared memory, and where."""
    return {name: use for name, wanted in requested.items()
            if (use := RegionUse.from_parameters(name, wanted.parameters)) is not None}


def _scheduling(parameters: dict) -> tuple[int, int]:
    """The `priority` and `timeout` (microseconds) request parameters of Triton's protocol."""
    if not parameters:  # most requests
        return 0, 0
    priority = integer(parameters.get("priority"), "request parameter 'priority'", default=0)
    timeout = integer(parameters.get("timeout"), "request parameter 'timeout'", default=0)
    return priority, timeout


def _output(model: ModelVersion, name: str, array: np.ndarray, requested: RequestedOutput | None) -> Tensor:
    datatype = next(spec.datatype for spec in model.outputs if spec.name == name)
    if requested is not None and requested.class_count:
        labels = model.labels.get(name, [])
        return Tensor(name, "BYTES", classify(array, requested.class_count, labels, model.batching))
    return Tensor(name, datatype, array)
