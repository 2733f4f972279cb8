"""KServe v2 JSON and Triton's binary tensor data extension <-> InferRequest / InferResponse."""

import base64
import binascii

import numpy as np
import orjson

from server.core import jsontext, tensors
from server.core.errors import InvalidArgument
from server.core.fields import integer
from server.core.shared_memory import RegionUse
from server.core.types import InferRequest, InferResponse, RequestedOutput, Tensor

HEADER_LENGTH = "Inference-Header-Content-Length"


def parse_json(body: bytes | memoryview, what: str = "request body") -> dict:
    if not body:
        return {}
    value = jsontext.loads(body, what)
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def decode_infer(body: bytes | memoryview, header_length: str | None, model: str,
                 version: str) -> InferRequest:
    if header_length is not None and header_length.strip() == "0":  # Triton's raw binary request
        return InferRequest(model_name=model, model_version=version, protocol="http", raw_input=body)
    header, binary = _split(body, header_length)
    document = parse_json(header, "inference request")
    inputs = _field(document, "inputs", list)  # none at all is for the model's config to judge
    offset = 0
    decoded, shared = [], []
    for item in inputs:
        use = _shared_memory_input(item)
        if use is not None:
            shared.append(use)
            continue
        tensor, used = _decode_input(item, binary, offset, model)
        decoded.append(tensor)
        offset += used
    if offset != len(binary):
        raise InvalidArgument(
            f"binary data is {len(binary)} bytes but the inputs' binary_data_size add up to {offset}"
        )
    parameters = _field(document, "parameters", dict, {})
    return InferRequest(
        model_name=model,
        model_version=version,
        id=str(document.get("id", "")),
        inputs=decoded,
        outputs=[_decode_output(item) for item in _field(document, "outputs", list, [])],
        parameters=parameters,
        protocol="http",
        shm_inputs=shared,
    )


def _shared_memory_input(item) -> tuple | None:
    """(name, datatype, shape, RegionUse) of an input whose data lie in shared memory, else None."""
    parameters = item.get("parameters") if isinstance(item, dict) else None
    if not isinstance(parameters, dict) or "shared_memory_region" not in parameters:
        return None
    name = _field(item, "name", str)
    use = RegionUse.from_parameters(name, parameters)
    return name, _field(item, "datatype", str), _field(item, "shape", list), use


def _split(body: bytes | memoryview, header_length: str | None) -> tuple[bytes | memoryview, memoryview]:
    """The JSON header and a view of the binary tensor data (tensors are read from it without copies)."""
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.isdigit() or int(header_length) > len(body):
        raise InvalidArgument(f"{HEADER_LENGTH} is '{header_length}' but the body has {len(body)} bytes")
    return body[: int(header_length)], memoryview(body)[int(header_length) :]


def base64_value(what: str, value) -> bytes:
    """Bytes that Triton's HTTP API carries in base64 (a load's `file:<path>`, a CUDA IPC handle)."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as error:
        raise InvalidArgument(f"{what} is not valid base64: {error}") from None


_REQUIRED = object()


def _field(document: dict, key: str, kind: type, default=_REQUIRED):
    value = document.get(key)
    if value is None:
        if default is _REQUIRED:
            raise InvalidArgument(f"'{key}' is missing")
        return default
    if not isinstance(value, kind):
        raise InvalidArgument(f"'{key}' must be a JSON {_json_type(kind())}, got {_json_type(value)}")
    return value


def _json_type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _decode_input(item, binary: memoryview, offset: int, model: str) -> tuple[Tensor, int]:
    if not isinstance(item, dict):
        raise InvalidArgument("each entry of 'inputs' must be a JSON object")
    name = _field(item, "name", str)
    datatype = _field(item, "datatype", str)
    shape = _field(item, "shape", list)
    parameters = _field(item, "parameters", dict, {})
    size = parameters.get("binary_data_size")
    if size is not None:
        integer(size, f"input '{name}': binary_data_size")
        if offset + size > len(binary):
            raise InvalidArgument(
                f"input '{name}' claims {size} bytes of binary data at offset {offset}, "
                f"but only {len(binary) - offset} remain"
            )
        data = tensors.from_raw(name, datatype, shape, binary[offset : offset + size], model)
        return Tensor(name, datatype, data), size
    if "data" not in item:
        raise InvalidArgument(f"input '{name}' has neither 'data' nor binary_data_size")
    return Tensor(name, datatype, tensors.from_list(name, datatype, shape, item["data"])), 0


def _decode_output(item) -> RequestedOutput:
    if not isinstance(item, dict):
        raise InvalidArgument("each entry of 'outputs' must be a JSON object")
    return RequestedOutput.from_parameters(_field(item, "name", str), _field(item, "parameters", dict, {}))


def encode_infer(response: InferResponse, binary_default: bool) -> tuple[list, int | None]:
    """The response body as parts to send one after another (the JSON header, then each binary output as a
    view of its array: no copy of a tensor is made to answer it) and, when any output is binary, the JSON
    header's length."""
    outputs = []
    chunks = []
    for tensor in response.outputs:
        requested = response.requested.get(tensor.name)
        binary = binary_default if requested is None or requested.binary is None else requested.binary
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if tensor.name in response.shm_outputs:
            entry["parameters"] = response.shm_outputs[tensor.name]
        elif binary:
            raw = tensors.raw_view(tensor.data)
            entry["parameters"] = {"binary_data_size": raw.nbytes}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(tensor.data)
        outputs.append(entry)
    document = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = response.parameters
    document["outputs"] = outputs
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    return [header, *chunks], len(header) if chunks else None


def _json_data(array: np.ndarray) -> list | np.ndarray:
    """Numbers stay an array, which orjson writes at C speed, without a Python object per element."""
    if array.dtype.kind in "OSU":
        return [tensors.as_bytes(item).decode("utf-8", "replace") for item in array.flat]
    return np.ascontiguousarray(array.reshape(-1))
