"""proto/ stays wire compatible with tritonclient and the committed descriptor set stays current."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.model_config_pb2 as triton_config
import tritonclient.grpc.service_pb2 as triton_service

from server import protocol

ROOT = Path(__file__).resolve().parent.parent


def _shape(descriptor, prefix=""):
    """Every field of a message and its nested messages: number, type, repetition, oneof."""
    fields = {}
    for field in descriptor.fields:
        fields[f"{prefix}{descriptor.name}.{field.name}"] = (
            field.number,
            field.type,
            field.is_repeated,
            field.message_type.full_name if field.message_type else None,
            field.enum_type.full_name if field.enum_type else None,
            field.containing_oneof.name if field.containing_oneof else None,
        )
    for nested in descriptor.nested_types:
        fields.update(_shape(nested, f"{prefix}{descriptor.name}."))
    for enum in descriptor.enum_types:
        fields[f"{prefix}{descriptor.name}.{enum.name}"] = {v.name: v.number for v in enum.values}
    return fields


OURS = sorted(
    name for name in protocol.message("ModelInferRequest").DESCRIPTOR.file.message_types_by_name
) + sorted(protocol.ModelConfig.DESCRIPTOR.file.message_types_by_name)


@pytest.mark.parametrize("name", OURS)
def test_messages_match_tritonclient(name):
    triton = (
        triton_service.DESCRIPTOR.message_types_by_name.get(name)
        or triton_config.DESCRIPTOR.message_types_by_name[name]
    )
    assert _shape(protocol.message(name).DESCRIPTOR) == _shape(triton)


def test_data_types_match_tritonclient():
    ours = {v.name: v.number for v in protocol.enum("DataType").values}
    assert ours == {v.name: v.number for v in triton_config.DESCRIPTOR.enum_types_by_name["DataType"].values}


def test_service_methods_match_tritonclient():
    ours = protocol.message("ModelInferRequest").DESCRIPTOR.file.services_by_name["GRPCInferenceService"]
    theirs = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.name, method.output_type.name) == (
            other.input_type.name,
            other.output_type.name,
        )
        assert method.client_streaming == other.client_streaming
        assert method.server_streaming == other.server_streaming


def test_descriptor_set_is_generated_from_proto(tmp_path):
    out = tmp_path / "inference.binpb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iproto",
            "--include_imports",
            f"--descriptor_set_out={out}",
            "proto/grpc_service.proto",
            "proto/model_config.proto",
        ],
        cwd=ROOT,
        check=True,
    )
    assert out.read_bytes() == protocol.DESCRIPTOR_SET.read_bytes(), "run `make proto`"


def test_classification_of_an_output_too_large_to_sort_is_refused():
    from server.core.errors import InvalidArgument
    from server.service.classification import MAX_CLASSIFIED, classify

    assert classify(np.arange(6.0).reshape(2, 3), 1, ["a", "b", "c"], True).tolist() == [[b"2.000000:2:c"],
                                                                                      [b"5.000000:2:c"]]
    with pytest.raises(InvalidArgument, match="classification output tensor too large"):
        classify(np.zeros((1, MAX_CLASSIFIED + 1), np.float32), 1, [], True)
