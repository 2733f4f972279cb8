"""Checks an InferRequest against the model's tensors, naming what is wrong and what was expected."""

import math
from dataclasses import dataclass, field

import numpy as np

from server.core import datatypes, tensors
from server.core.errors import InvalidArgument
from server.core.types import InferRequest, Tensor, TensorSpec


@dataclass(frozen=True)
class InputLimits:
    """What a model declares of its inputs beyond their shapes, in config `parameters` (the BERT exporter
    writes them), so that such input is refused before ONNX Runtime sees it:
      input_max_lengths: "input_ids:512,attention_mask:512"   most positions on axis 1
      input_ranges:      "input_ids:0:30521,token_type_ids:0:1"   smallest and largest value
    An input with either limit must hold at least one element; others may hold none, as in Triton."""

    max_lengths: dict[str, int] = field(default_factory=dict)
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> "InputLimits":
        """Raises ValueError naming the parameter that does not parse."""
        lengths, ranges = {}, {}
        for item in _items(parameters, "input_max_lengths"):
            name, _, length = item.rpartition(":")
            lengths[name] = _parsed_int("input_max_lengths", length)
        for item in _items(parameters, "input_ranges"):
            name, low, high = (item.rsplit(":", 2) + ["", ""])[:3]
            ranges[name] = (_parsed_int("input_ranges", low), _parsed_int("input_ranges", high))
        return cls(lengths, ranges)

    def check(self, feeds: dict[str, np.ndarray], model: str) -> None:
        for name, array in feeds.items():
            if array.size == 0 and (name in self.max_lengths or name in self.ranges):
                raise InvalidArgument(
                    f"input '{name}' of model '{model}' is empty (shape {list(array.shape)}); "
                    "send at least one element"
                )
            limit = self.max_lengths.get(name)
            if limit is not None and array.ndim > 1 and array.shape[1] > limit:
                raise InvalidArgument(
                    f"input '{name}' has {array.shape[1]} positions; model '{model}' takes at most {limit}"
                )
            bounds = self.ranges.get(name)
            if bounds is not None:
                low, high = array.min(), array.max()
                if low < bounds[0] or high > bounds[1]:
                    found = low if low < bounds[0] else high
                    raise InvalidArgument(
                        f"input '{name}' holds {found}, outside {bounds[0]}..{bounds[1]}, the values "
                        f"model '{model}' takes"
                    )


def _items(parameters: dict[str, str], key: str) -> list[str]:
    return [item.strip() for item in parameters.get(key, "").split(",") if item.strip()]


def _parsed_int(key: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"parameter '{key}': '{text}' is not an integer") from None


def raw_input(request: InferRequest, specs: list[TensorSpec], batching: bool) -> Tensor:
    """The one input of a raw binary request (Inference-Header-Content-Length: 0), its shape deduced as
    Triton deduces it: the model's dims, a batch of one, one variable dim from the byte count; BYTES
    only for dims [1], the body being that one element. Fixed dims may also come several items to a
    batch (ortserve's addition)."""
    raw, model = request.raw_input, request.model_name
    if len(specs) != 1:
        raise InvalidArgument(
            f"Raw request must only have 1 input (found 1) to be deduced but got {len(specs)} inputs in "
            f"'{model}' model configuration"
        )
    spec = specs[0]
    item = list(spec.shape[1:] if batching else spec.shape)
    variable = [axis for axis, dim in enumerate(item) if dim < 0]
    if len(variable) > 1:
        raise InvalidArgument(
            f"The shape of the raw input '{spec.name}' can not be deduced because there are more than one "
            "variable-sized dimension"
        )
    batch = [1] if batching else []
    if spec.datatype == "BYTES":
        if variable or math.prod(item) != 1:
            raise InvalidArgument(
                f"For BYTE datatype raw input '{spec.name}', the model must have input shape [1]"
            )
        data = np.empty(1, dtype=object)
        data[0] = bytes(raw)
        return Tensor(spec.name, "BYTES", data.reshape(batch + item))
    itemsize = datatypes.numpy_dtype(spec.datatype).itemsize
    per_item = math.prod(dim for dim in item if dim >= 0) * itemsize
    count = len(raw) // per_item if per_item and len(raw) % per_item == 0 else 0
    if variable:
        item[variable[0]] = count
        rows = 1 if count else 0
    else:
        rows = count
    if rows == 0 or (not batching and rows != 1):
        raise InvalidArgument(
            f"a raw binary request of {len(raw)} bytes does not hold whole items of input '{spec.name}' "
            f"of model '{model}' ({spec.datatype} {list(spec.shape[1:] if batching else spec.shape)} each)"
        )
    shape = [rows, *item] if batching else item
    return Tensor(spec.name, spec.datatype, tensors.from_raw(spec.name, spec.datatype, shape, raw, model))


def check_inputs(request: InferRequest, specs: list[TensorSpec], max_batch_size: int) -> dict:
    """The request's inputs as ONNX Runtime feeds, after checking names, datatypes and shapes."""
    model = request.model_name
    expected = {spec.name: spec for spec in specs}
    required = [spec.name for spec in specs if not spec.optional]
    given = [tensor.name for tensor in request.inputs]
    if len(set(given)) < len(given):  # Triton refuses a repeated input as it is added, before counting
        twice = next(name for index, name in enumerate(given) if name in given[:index])
        raise InvalidArgument(f"input '{twice}' already exists in request")
    if not len(required) <= len(given) <= len(specs):
        raise _count_error(model, given, specs, required)
    feeds: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        spec = expected.get(tensor.name)
        if spec is None:
            raise InvalidArgument(
                f"unexpected inference input '{tensor.name}' for model '{model}', "
                f"expected inputs: {', '.join(expected)}"
            )
        if tensor.datatype != spec.datatype:
            raise InvalidArgument(
                f"inference input '{tensor.name}' data-type is '{tensor.datatype}', "
                f"but model '{model}' expects '{spec.datatype}'"
            )
        if not _shape_fits(tensor.shape, spec.shape):
            raise InvalidArgument(
                f"unexpected shape for input '{tensor.name}' for model '{model}'. "
                f"Expected {_format(spec.shape)}, got {_format(tensor.shape)}"
            )
        feeds[tensor.name] = _as_text(tensor) if tensor.datatype == "BYTES" else tensor.data
    if len(feeds) < len(specs) and any(name not in feeds for name in required):  # optional ones left out
        raise _count_error(model, given, specs, required)
    if max_batch_size > 0:
        _check_batch(request, feeds, max_batch_size)
    return feeds


def _count_error(model: str, given: list[str], specs: list[TensorSpec], required: list[str]
                 ) -> InvalidArgument:
    """Triton's words for inputs too many or missing."""
    expected = (f"{len(specs)} inputs" if len(required) == len(specs)
                else f"number of inputs between {len(required)} and {len(specs)}")
    missing = [name for name in required if name not in given]
    return InvalidArgument(
        f"expected {expected} but got {len(given)} inputs for model '{model}'. Got input(s) "
        f"{_quoted(given)}, but missing required input(s) {_quoted(missing)}. Please provide all required "
        "input(s)."
    )


def _quoted(names: list[str]) -> str:
    return "[" + ",".join(f"'{name}'" for name in names) + "]"


def check_outputs(request: InferRequest, specs: list[TensorSpec]) -> list[str]:
    """Names of the outputs to compute: the requested ones, or all."""
    if not request.outputs:
        return [spec.name for spec in specs]
    known = {spec.name: spec for spec in specs}
    names = []
    for output in request.outputs:
        spec = known.get(output.name)
        if spec is None:
            raise InvalidArgument(
                f"unexpected inference output '{output.name}' for model '{request.model_name}', "
                f"expected outputs: {', '.join(known)}"
            )
        if output.class_count and not _classifiable(spec.datatype):
            raise InvalidArgument(  # Triton's words; ortserve names the output after them
                f"class result not available for output due to unsupported type '{spec.datatype}' "
                f"(output '{output.name}')"
            )
        if output.name in names:
            raise InvalidArgument(f"output '{output.name}' already exists in request")
        names.append(output.name)
    return names


def _classifiable(datatype: str) -> bool:
    """Triton classifies integer, FP32 and FP64 outputs."""
    return datatype in ("FP32", "FP64") or datatype.startswith(("INT", "UINT"))


def _as_text(tensor) -> np.ndarray:
    """ONNX Runtime string tensors take str: BYTES elements must be UTF-8."""
    try:
        text = [item.decode() if isinstance(item, bytes) else item for item in tensor.data.flat]
    except UnicodeDecodeError as error:
        raise InvalidArgument(
            f"input '{tensor.name}' feeds a string tensor: its elements must be UTF-8 ({error})"
        ) from None
    return np.array(text, dtype=object).reshape(tensor.data.shape)


def _shape_fits(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    return len(shape) == len(expected) and all(e == -1 or s == e for s, e in zip(shape, expected))


def _check_batch(request: InferRequest, feeds: dict[str, np.ndarray], max_batch_size: int) -> None:
    """Triton's words, then what the request held."""
    model, sizes = request.model_name, {name: array.shape[0] for name, array in feeds.items()}
    batch = next(iter(sizes.values()), 1)
    other = next((name for name, size in sizes.items() if size != batch), None)
    if other is not None:
        raise InvalidArgument(f"input '{other}' batch size does not match other inputs for '{model}' (batch "
                              f"sizes, the first dimension: {sizes})")
    if batch > max_batch_size:
        raise InvalidArgument(f"inference request batch-size must be <= {max_batch_size} for '{model}' "
                              f"(got {batch})")
    if batch < 1:
        raise InvalidArgument(f"inference request batch-size must be >= 1 for '{model}' (got {batch})")


def _format(shape) -> str:
    return "[" + ",".join(map(str, shape)) + "]"
