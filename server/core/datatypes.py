"""A tensor element type by its names: protocol (`FP32`), config (`TYPE_FP32`), numpy and ONNX."""

import numpy as np

from server.core.errors import InvalidArgument

# protocol datatype -> (numpy dtype, ONNX Runtime type string)
_TYPES = {
    "BOOL": (np.dtype(np.bool_), "tensor(bool)"),
    "UINT8": (np.dtype(np.uint8), "tensor(uint8)"),
    "UINT16": (np.dtype(np.uint16), "tensor(uint16)"),
    "UINT32": (np.dtype(np.uint32), "tensor(uint32)"),
    "UINT64": (np.dtype(np.uint64), "tensor(uint64)"),
    "INT8": (np.dtype(np.int8), "tensor(int8)"),
    "INT16": (np.dtype(np.int16), "tensor(int16)"),
    "INT32": (np.dtype(np.int32), "tensor(int32)"),
    "INT64": (np.dtype(np.int64), "tensor(int64)"),
    "FP16": (np.dtype(np.float16), "tensor(float16)"),
    "FP32": (np.dtype(np.float32), "tensor(float)"),
    "FP64": (np.dtype(np.float64), "tensor(double)"),
    "BYTES": (np.dtype(np.object_), "tensor(string)"),
}
_FROM_ONNX = {onnx_type: name for name, (_, onnx_type) in _TYPES.items()}

DATATYPES = tuple(_TYPES)


def numpy_dtype(datatype: str) -> np.dtype:
    try:
        return _TYPES[datatype][0]
    except KeyError:
        raise InvalidArgument(
            f"unknown datatype '{datatype}', expected one of {', '.join(DATATYPES)}"
        ) from None


def from_onnx(onnx_type: str) -> str | None:
    return _FROM_ONNX.get(onnx_type)


def from_config(data_type: str) -> str:
    """`TYPE_FP32` -> `FP32`; Triton spells BYTES as TYPE_STRING in configs."""
    name = data_type.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def to_config(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"
