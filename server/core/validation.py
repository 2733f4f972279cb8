"""Checks an InferRequest against the model's tensors, naming what is wrong and what was expected."""

import numpy as np

from server.core.errors import InvalidArgument
from server.core.types import InferRequest, TensorSpec


def check_inputs(request: InferRequest, specs: list[TensorSpec], max_batch_size: int) -> dict:
    """The request's inputs as ONNX Runtime feeds, after checking names, datatypes and shapes."""
    model = request.model_name
    expected = {spec.name: spec for spec in specs}
    feeds: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        spec = expected.get(tensor.name)
        if spec is None:
            raise InvalidArgument(
                f"unexpected inference input '{tensor.name}' for model '{model}', "
                f"expected inputs: {', '.join(expected)}"
            )
        if tensor.name in feeds:
            raise InvalidArgument(f"input '{tensor.name}' appears more than once")
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
    missing = [name for name in expected if name not in feeds]
    if missing:
        raise InvalidArgument(
            f"model '{model}' expects inputs {', '.join(expected)}; missing: {', '.join(missing)}"
        )
    if max_batch_size > 0:
        _check_batch(request, feeds, max_batch_size)
    return feeds


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
        if output.class_count and spec.datatype == "BYTES":
            raise InvalidArgument(f"output '{output.name}' is BYTES and cannot be classified")
        if output.name in names:
            raise InvalidArgument(f"output '{output.name}' is requested more than once")
        names.append(output.name)
    return names


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
    sizes = {name: array.shape[0] for name, array in feeds.items()}
    batch = next(iter(sizes.values()), 1)
    if any(size != batch for size in sizes.values()):
        raise InvalidArgument(f"inputs disagree on the batch size (first dimension): {sizes}")
    if not 1 <= batch <= max_batch_size:
        raise InvalidArgument(
            f"inference request batch-size must be between 1 and {max_batch_size} "
            f"for '{request.model_name}', got {batch}"
        )


def _format(shape) -> str:
    return "[" + ",".join(map(str, shape)) + "]"
