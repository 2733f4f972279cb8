"""JSON tensor data in HTTP answers: every numeric datatype written from its array reads back equal."""

import json

import numpy as np
import pytest

from server.api.http import codec
from server.core import datatypes
from server.core.types import InferResponse, Tensor

EDGES = {
    "BOOL": [True, False, True, True],
    "INT8": [-128, 127, 0, -1],
    "INT16": [-32768, 32767, 0, 1],
    "INT32": [-(2**31), 2**31 - 1, 0, 7],
    "INT64": [-(2**63), 2**63 - 1, 0, 9],
    "UINT8": [0, 255, 1, 2],
    "UINT16": [0, 65535, 1, 2],
    "UINT32": [0, 2**32 - 1, 1, 2],
    "UINT64": [0, 2**64 - 1, 1, 2],
    "FP16": [0.1, -65504.0, 6e-8, 1.0],
    "FP32": [0.1, -3.4028235e38, 1e-45, 1.0 / 3],
    "FP64": [0.1, -1.7976931348623157e308, 5e-324, 1.0 / 3],
}


def _answer(tensor: Tensor) -> dict:
    response = InferResponse("m", "1", "", [tensor], {})
    parts, json_length = codec.encode_infer(response, binary_default=False)
    assert json_length is None and len(parts) == 1
    return json.loads(parts[0])["outputs"][0]


@pytest.mark.parametrize("datatype", sorted(EDGES))
def test_json_data_of_every_numeric_datatype_reads_back_equal(datatype):
    array = np.array(EDGES[datatype], dtype=datatypes.numpy_dtype(datatype)).reshape(2, 2)
    output = _answer(Tensor("y", datatype, array))
    assert output["shape"] == [2, 2] and output["datatype"] == datatype
    read = np.array(output["data"], dtype=array.dtype).reshape(2, 2)
    np.testing.assert_array_equal(read, array)


def test_a_transposed_output_is_written_in_its_logical_order():
    array = np.arange(6, dtype=np.float32).reshape(2, 3).T  # not C-contiguous
    output = _answer(Tensor("y", "FP32", array))
    assert output["data"] == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]


def test_bytes_outputs_are_strings():
    array = np.array([b"caf\xc3\xa9", b"x"], dtype=object)
    assert _answer(Tensor("y", "BYTES", array))["data"] == ["café", "x"]
