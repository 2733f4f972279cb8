"""Tensor contents to and from bytes: raw little-endian data, and BYTES as 4-byte length + bytes."""

import math
import struct

import numpy as np

from server.core import datatypes
from server.core.errors import InvalidArgument

_LENGTH = struct.Struct("<I")


def from_raw(name: str, datatype: str, shape: list[int], raw: bytes | memoryview, model: str = ""
             ) -> np.ndarray:
    count = _element_count(name, shape)
    if datatype == "BYTES":
        return _bytes_from_raw(name, shape, count, raw, model)
    dtype = datatypes.numpy_dtype(datatype)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        for_model = f" for model '{model}'" if model else ""
        raise InvalidArgument(  # Triton's words, then the shape
            f"input byte size mismatch for input '{name}'{for_model}. Expected {expected}, got {len(raw)} "
            f"(shape {shape} of {datatype})"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)


def bytes_element_count(name: str, raw: bytes | memoryview) -> int:
    """How many 4-byte-length-prefixed elements `raw` holds (an error where one runs past the end)."""
    return len(_bytes_items(name, raw))


def _bytes_from_raw(name: str, shape: list[int], count: int, raw: bytes | memoryview, model: str
                    ) -> np.ndarray:
    items = _bytes_items(name, raw)
    if len(items) != count:
        for_model = f" for model '{model}'" if model else ""
        raise InvalidArgument(  # Triton's words, then the shape
            f"expected {count} string elements for inference input '{name}'{for_model}, got {len(items)} "
            f"(shape {shape})"
        )
    return _object_array(items, shape)


def _bytes_items(name: str, raw: bytes | memoryview) -> list[bytes]:
    items = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidArgument(f"input '{name}': BYTES data ends inside an element's length")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidArgument(
                f"input '{name}': BYTES element {len(items)} claims {length} bytes, "
                f"only {len(raw) - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    return items


def to_raw(array: np.ndarray) -> bytes:
    if array.dtype.kind in "OSU":
        return b"".join(_LENGTH.pack(len(item)) + item for item in map(as_bytes, array.flat))
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def raw_view(array: np.ndarray) -> memoryview:
    """The raw bytes of `array`, without a copy where its memory already holds them (contiguous,
    little-endian)."""
    if array.dtype.kind in "OSU":
        return memoryview(to_raw(array))
    ordered = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return memoryview(ordered.reshape(-1)).cast("B")


def as_bytes(item) -> bytes:
    return item.encode() if isinstance(item, str) else bytes(item)


def from_list(name: str, datatype: str, shape: list[int], values: list) -> np.ndarray:
    """Elements given as a list (JSON `data`, gRPC typed contents), flat or nested."""
    count = _element_count(name, shape)
    flat, kinds = _flatten(values)
    if len(flat) != count:
        raise InvalidArgument(f"input '{name}' with shape {shape} needs {count} elements, got {len(flat)}")
    if datatype == "BYTES":
        if not kinds <= {str, bytes}:
            raise InvalidArgument(f"input '{name}' is BYTES: its elements must be strings")
        return _object_array([as_bytes(item) for item in flat], shape)
    dtype = datatypes.numpy_dtype(datatype)
    if datatype == "BOOL" and not kinds <= {bool}:
        raise InvalidArgument(f"input '{name}' is BOOL: its elements must be true or false")
    if datatype != "BOOL" and kinds & {str, bytes, bool}:
        raise InvalidArgument(f"input '{name}' is {datatype}: its elements must be numbers")
    try:
        if dtype.kind not in "iu":
            return np.array(flat, dtype=dtype).reshape(shape)
        values = np.asarray(flat)  # as given, so that fractions and overflow can be named
        _check_integers(name, datatype, dtype, values)
        return values.astype(dtype, copy=False).reshape(shape)
    except (TypeError, ValueError, OverflowError) as error:
        raise InvalidArgument(f"input '{name}' holds values that are not {datatype}: {error}") from None


def _check_integers(name: str, datatype: str, dtype: np.dtype, values: np.ndarray) -> None:
    """Integer tensors take whole numbers within their type's range: no silent truncation or wrap."""
    if values.size == 0:
        return
    info = np.iinfo(dtype)
    if values.dtype.kind == "f":
        fractional = values[values != np.trunc(values)]
        if fractional.size:
            raise InvalidArgument(f"input '{name}' is {datatype}: {fractional[0].item()!r} is not an integer")
    elif values.dtype.kind == "O":  # whole numbers past 64 bits, or not numbers
        found = next((v for v in values.flat if isinstance(v, int) and not info.min <= v <= info.max), None)
        if found is None:
            raise InvalidArgument(f"input '{name}' is {datatype}: its elements must be integers")
        raise _outside(name, datatype, info, found)
    elif values.dtype.kind not in "iu":
        raise InvalidArgument(f"input '{name}' is {datatype}: its elements must be integers")
    low, high = values.min(), values.max()
    if low < info.min or high > info.max:
        raise _outside(name, datatype, info, (low if low < info.min else high).item())


def _outside(name: str, datatype: str, info: np.iinfo, found) -> InvalidArgument:
    return InvalidArgument(f"input '{name}' is {datatype}: {found!r} is outside {info.min}..{info.max}")


def _flatten(values) -> tuple[list, set[type]]:
    """The elements of `values` (a list, nested or flat, or one element), and their types (found at C
    speed: a tensor's JSON holds a million numbers)."""
    if not isinstance(values, list):
        return [values], {type(values)}
    kinds = set(map(type, values))
    if list not in kinds:
        return values, kinds
    flat, kinds = [], set()
    for item in values:
        items, found = _flatten(item)
        flat.extend(items)
        kinds |= found
    return flat, kinds


def _element_count(name: str, shape: list[int]) -> int:
    if any(not isinstance(dim, int) or isinstance(dim, bool) or dim < 0 for dim in shape):
        raise InvalidArgument(f"input '{name}' has shape {shape}: dimensions must be integers >= 0")
    return math.prod(shape)


def _object_array(items: list[bytes], shape: list[int]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)
