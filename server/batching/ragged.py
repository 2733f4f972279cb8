"""Triton's ragged batching: requests whose `allow_ragged_batch` inputs differ in shape run in one batch
without padding. As Triton's ONNX Runtime backend does, each ragged input reaches the model as one 1-D
tensor, the requests' elements one after another; `batch_input` tensors the server makes describe the
batch (element counts, their running sums, the largest count as a shape, each item's shape), and a
`batch_output` of kind BATCH_SCATTER_WITH_INPUT_SHAPE is cut back into one piece per request shaped as
that request's source input."""

from dataclasses import dataclass

import numpy as np

from server.protocol import ModelConfig, enum

_KIND = enum("BatchInput.Kind")
_DATA_TYPE = enum("DataType")

_DTYPES = {"TYPE_FP32": np.float32, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64}


@dataclass(frozen=True)
class BatchInput:
    kind: str
    target: str
    dtype: type
    source: str

    def make(self, shapes: list[tuple[int, ...]]) -> np.ndarray:
        """The tensor for a batch whose requests sent the source input in `shapes` (batch dim first)."""
        counts = [int(np.prod(shape)) for shape in shapes]
        if self.kind == "BATCH_ELEMENT_COUNT":
            return np.asarray(counts, self.dtype)
        if self.kind == "BATCH_ACCUMULATED_ELEMENT_COUNT":
            return np.cumsum(counts).astype(self.dtype)
        if self.kind == "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO":
            return np.concatenate([[0], np.cumsum(counts)]).astype(self.dtype)
        if self.kind == "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE":  # only its shape speaks
            return np.zeros(max(counts), self.dtype)
        items = np.asarray([shape[1:] for shape in shapes for _ in range(shape[0])], self.dtype)
        items = items.reshape(sum(shape[0] for shape in shapes), -1)
        return items if self.kind == "BATCH_ITEM_SHAPE" else items.ravel()


@dataclass(frozen=True)
class Ragged:
    inputs: frozenset[str]
    batch_inputs: tuple[BatchInput, ...]
    scatter: dict[str, str]  # batch output -> the input whose request shapes it takes

    @classmethod
    def from_config(cls, config: ModelConfig) -> "Ragged | None":
        """None for a model without ragged inputs, batch inputs or batch outputs; ValueError for a
        configuration that names what is not there."""
        inputs = frozenset(i.name for i in config.input if i.allow_ragged_batch)
        if not inputs and not config.batch_input and not config.batch_output:
            return None
        if config.max_batch_size <= 0:
            raise ValueError("ragged batching (allow_ragged_batch, batch_input, batch_output) needs "
                             "max_batch_size > 0")
        declared_inputs = {i.name for i in config.input}
        declared_outputs = {o.name for o in config.output}
        batch_inputs = tuple(_batch_input(item, declared_inputs) for item in config.batch_input)
        scatter = {}
        for item in config.batch_output:
            sources = list(item.source_input)
            if len(sources) != 1 or sources[0] not in declared_inputs:
                raise ValueError(f"batch_output {list(item.target_name)} needs one source_input among the "
                                 f"inputs {sorted(declared_inputs)}, got {sources}")
            for target in item.target_name:
                if target not in declared_outputs:
                    raise ValueError(f"batch_output target '{target}' is not an output of the model")
                scatter[target] = sources[0]
        return cls(inputs, batch_inputs, scatter)

    @property
    def targets(self) -> set[str]:
        """Graph inputs the server fills: clients never send them."""
        return {item.target for item in self.batch_inputs}

    def key(self, feeds: dict[str, np.ndarray]) -> tuple:
        """Requests with equal keys can share a batch: ragged inputs' shapes do not matter."""
        return tuple((name, array.dtype.str) if name in self.inputs else (name, array.shape[1:])
                     for name, array in feeds.items())

    def merge(self, items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        merged = {}
        for name in items[0]:
            arrays = [item[name] for item in items]
            merged[name] = np.concatenate([a.ravel() for a in arrays] if name in self.inputs else arrays)
        for item in self.batch_inputs:
            merged[item.target] = item.make([feeds[item.source].shape for feeds in items])
        return merged

    def split(self, outputs: dict[str, np.ndarray], items: list[dict[str, np.ndarray]],
              sizes: list[int]) -> list[dict[str, np.ndarray]]:
        """Each request's part: scattered outputs shaped as its source input, the rest by rows."""
        parts = [{} for _ in items]
        for name, array in outputs.items():
            source = self.scatter.get(name)
            shapes = [feeds[source].shape for feeds in items] if source else [None] * len(items)
            counts = [int(np.prod(s)) for s in shapes] if source else sizes
            flat = array.reshape(-1) if source else array
            if source and flat.size != sum(counts):
                raise ValueError(f"batch output '{name}' has {flat.size} elements; its source input "
                                 f"'{source}' has {sum(counts)} in this batch")
            start = 0
            for part, count, shape in zip(parts, counts, shapes):
                piece = flat[start:start + count]
                part[name] = piece.reshape(shape) if source else piece
                start += count
        return parts


def _batch_input(item, declared_inputs: set[str]) -> BatchInput:
    kind = _KIND.values_by_number[item.kind].name
    data_type = _DATA_TYPE.values_by_number[item.data_type].name
    targets, sources = list(item.target_name), list(item.source_input)
    dtype = _DTYPES.get(data_type)
    if len(targets) != 1 or len(sources) != 1 or sources[0] not in declared_inputs:
        raise ValueError(f"batch_input {kind} needs one target_name and one source_input among the inputs "
                         f"{sorted(declared_inputs)}, got {targets} and {sources}")
    if dtype is None:
        raise ValueError(f"batch_input '{targets[0]}' has data_type {data_type}; ortserve makes batch inputs "
                         f"of {', '.join(_DTYPES)}")
    return BatchInput(kind, targets[0], dtype, sources[0])
