"""ModelInferRequest / ModelInferResponse protobufs <-> InferRequest / InferResponse."""

from server.core import datatypes, tensors
from server.core.errors import InvalidArgument
from server.core.shared_memory import RegionUse
from server.core.types import InferRequest, InferResponse, RequestedOutput, Tensor
from server.protocol import message

ModelInferResponse = message("ModelInferResponse")

# datatype -> the typed `InferTensorContents` field that carries it (FP16 has none: raw only)
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters(entries) -> dict:
    return {
        key: getattr(value, value.WhichOneof("parameter_choice") or "bool_param")
        for key, value in entries.items()
    }


def decode_infer(request, raw_views: list | None = None) -> InferRequest:
    """Raw contents, where sent, come one per input that is not in shared memory, in order: `raw_views`
    (views of the received message, `wire.split_raw_inputs`) in place of the message's own."""
    shared, plain = [], []
    for item in request.inputs:
        if "shared_memory_region" in item.parameters:
            use = RegionUse.from_parameters(item.name, parameters(item.parameters))
            shared.append((item.name, item.datatype, list(item.shape), use))
        else:
            plain.append(item)
    raw = request.raw_input_contents if raw_views is None else raw_views
    if raw and len(raw) != len(plain):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries but the request has {len(plain)} inputs outside "
            "shared memory; send raw contents for every such input or for none"
        )
    inputs = []
    for index, item in enumerate(plain):
        shape = list(item.shape)
        if raw:
            if item.HasField("contents"):
                raise InvalidArgument(f"input '{item.name}' has both contents and raw_input_contents")
            data = tensors.from_raw(item.name, item.datatype, shape, raw[index], request.model_name)
        else:
            data = tensors.from_list(item.name, item.datatype, shape, _typed(item))
        inputs.append(Tensor(item.name, item.datatype, data))
    outputs = [
        RequestedOutput.from_parameters(item.name, parameters(item.parameters)) for item in request.outputs
    ]
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=inputs,
        outputs=outputs,
        parameters=parameters(request.parameters),
        protocol="grpc",
        shm_inputs=shared,
    )


def _typed(item) -> list:
    field = CONTENTS_FIELD.get(item.datatype)
    if field is None:
        datatypes.numpy_dtype(item.datatype)  # an unknown datatype is named as such
        raise InvalidArgument(
            f"input '{item.name}' is {item.datatype}, which has no typed contents: "
            "send it in raw_input_contents"
        )
    return list(getattr(item.contents, field))


def encode_infer(response: InferResponse, raw_outputs: list | None = None):
    """The response message; with `raw_outputs` (a list to fill) the outputs' raw bytes go there, as
    views, for `wire.with_raw_outputs`, instead of into the message."""
    encoded = ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for tensor in response.outputs:
        output = encoded.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        shared = response.shm_outputs.get(tensor.name)
        if shared is not None:
            for key, value in shared.items():
                kind = "string_param" if isinstance(value, str) else "int64_param"
                setattr(output.parameters[key], kind, value)
        if raw_outputs is not None:
            raw_outputs.append(b"" if shared is not None else tensors.raw_view(tensor.data))
        else:
            encoded.raw_output_contents.append(b"" if shared is not None else tensors.to_raw(tensor.data))
    for key, value in response.parameters.items():
        field = "string_param"
        if isinstance(value, bool | int):
            field = "bool_param" if isinstance(value, bool) else "int64_param"
        setattr(encoded.parameters[key], field, value)
    return encoded
