"""Triton's ragged batching through tritonclient: requests of different lengths run in one execution as
one 1-D tensor, with every batch_input kind made by the server and a batch_output scattered back in each
request's own shape."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper

from exporters.demo import publish
from tests.conftest import start_server, stop_server

BATCH_INPUTS = [  # kind, target, config type, ONNX type, graph shape
    ("BATCH_ELEMENT_COUNT", "COUNT", "TYPE_FP32", TensorProto.FLOAT, ["n"]),
    ("BATCH_ACCUMULATED_ELEMENT_COUNT", "ACC", "TYPE_INT32", TensorProto.INT32, ["n"]),
    ("BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", "ACC0", "TYPE_INT64", TensorProto.INT64, ["n1"]),
    ("BATCH_MAX_ELEMENT_COUNT_AS_SHAPE", "MAXSHAPE", "TYPE_FP32", TensorProto.FLOAT, ["m"]),
    ("BATCH_ITEM_SHAPE", "SHAPES", "TYPE_INT32", TensorProto.INT32, ["n", 1]),
    ("BATCH_ITEM_SHAPE_FLATTEN", "FLAT", "TYPE_INT32", TensorProto.INT32, ["n"]),
]
OUTPUTS = {"COUNT_OUT": TensorProto.FLOAT, "ACC_OUT": TensorProto.INT32, "ACC0_OUT": TensorProto.INT64,
           "MAX_OUT": TensorProto.INT64, "SHAPES_OUT": TensorProto.INT32, "FLAT_OUT": TensorProto.INT32}
CONFIG_TYPES = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.INT32: "TYPE_INT32",
                TensorProto.INT64: "TYPE_INT64"}


def ragged_model():
    """DOUBLED = 2 * INPUT (1-D, all requests' elements); each batch input comes back as one row per
    request: COUNT, ACC, the differences of ACC0, the length of MAXSHAPE, SHAPES and FLAT."""
    def const(name, values):
        return numpy_helper.from_array(np.asarray(values), name)

    nodes = [
        helper.make_node("Mul", ["INPUT", "two"], ["DOUBLED"]),
        helper.make_node("Unsqueeze", ["COUNT", "axis1"], ["COUNT_OUT"]),
        helper.make_node("Unsqueeze", ["ACC", "axis1"], ["ACC_OUT"]),
        helper.make_node("Slice", ["ACC0", "one", "big"], ["ACC0_after"]),
        helper.make_node("Slice", ["ACC0", "zero", "minus_one"], ["ACC0_before"]),
        helper.make_node("Sub", ["ACC0_after", "ACC0_before"], ["ACC0_counts"]),
        helper.make_node("Unsqueeze", ["ACC0_counts", "axis1"], ["ACC0_OUT"]),
        helper.make_node("Shape", ["MAXSHAPE"], ["max_count"]),
        helper.make_node("Shape", ["COUNT"], ["rows"]),
        helper.make_node("Concat", ["rows", "one"], ["rows_by_one"], axis=0),
        helper.make_node("Expand", ["max_count", "rows_by_one"], ["MAX_OUT"]),
        helper.make_node("Identity", ["SHAPES"], ["SHAPES_OUT"]),
        helper.make_node("Unsqueeze", ["FLAT", "axis1"], ["FLAT_OUT"]),
    ]
    inputs = [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["elements"])]
    inputs += [helper.make_tensor_value_info(target, onnx_type, shape)
               for _, target, _, onnx_type, shape in BATCH_INPUTS]
    outputs = [helper.make_tensor_value_info("DOUBLED", TensorProto.FLOAT, ["elements"])]
    outputs += [helper.make_tensor_value_info(name, kind, ["n", 1]) for name, kind in OUTPUTS.items()]
    constants = [const("two", np.float32(2)), const("axis1", [1]), const("one", [1]), const("zero", [0]),
                 const("minus_one", [-1]), const("big", [1 << 40])]
    graph = helper.make_graph(nodes, "ragged", inputs, outputs, constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def ragged_config(delay_us: int = 1_000_000) -> str:
    batch_inputs = ",\n".join(
        f'  {{ kind: {kind} target_name: "{target}" data_type: {dtype} source_input: "INPUT" }}'
        for kind, target, dtype, _, _ in BATCH_INPUTS)
    outputs = ",\n".join(f'  {{ name: "{name}" data_type: {CONFIG_TYPES[kind]} dims: [ 1 ] }}'
                         for name, kind in OUTPUTS.items())
    return f"""name: "ragged"
max_batch_size: 8
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true }} ]
batch_input [
{batch_inputs}
]
output [
  {{ name: "DOUBLED" data_type: TYPE_FP32 dims: [ -1 ] }},
{outputs}
]
batch_output [ {{ target_name: "DOUBLED" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "INPUT" }} ]
dynamic_batching {{ preferred_batch_size: [ 3 ] max_queue_delay_microseconds: {delay_us} }}
"""


@pytest.fixture(scope="module")
def ragged_server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("ragged")
    publish(repository, "ragged", ragged_model(), ragged_config())
    server = start_server(repository, tmp_path_factory.mktemp("logs") / "server.log", ready_model="ragged")
    yield server
    assert stop_server(server) == 0, server.output()


def infer(protocol: str, server, data: np.ndarray) -> dict[str, np.ndarray]:
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    tensor = module.InferInput("INPUT", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer("ragged", [tensor])
    return {name: result.as_numpy(name) for name in ["DOUBLED", *OUTPUTS]}


def executions(server) -> int:
    statistics = httpclient.InferenceServerClient(server.http_url).get_inference_statistics("ragged")
    return statistics["model_stats"][0]["execution_count"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_requests_of_different_lengths_run_as_one_ragged_batch(ragged_server, protocol):
    requests = [np.arange(n, dtype=np.float32)[None] + n for n in (3, 4, 5)]
    before = executions(ragged_server)
    with ThreadPoolExecutor(3) as pool:  # at once: the preferred batch of 3 forms before the delay ends
        answers = list(pool.map(lambda data: infer(protocol, ragged_server, data), requests))
    assert executions(ragged_server) == before + 1
    for data, answer in zip(requests, answers):
        count = data.size
        np.testing.assert_array_equal(answer["DOUBLED"], 2 * data)  # scattered back in its own shape
        assert answer["COUNT_OUT"].tolist() == [[count]]
        assert answer["ACC0_OUT"].tolist() == [[count]]
        assert answer["MAX_OUT"].tolist() == [[5]]  # the longest request in the batch
        assert answer["SHAPES_OUT"].tolist() == [[count]]
        assert answer["FLAT_OUT"].tolist() == [[count]]
    in_batch_order = sorted(answers, key=lambda a: int(a["ACC_OUT"][0, 0]))  # the order they arrived in
    counts = [int(a["COUNT_OUT"][0, 0]) for a in in_batch_order]
    assert [int(a["ACC_OUT"][0, 0]) for a in in_batch_order] == np.cumsum(counts).tolist()


def test_a_lone_ragged_request_runs_by_itself(ragged_server):
    data = np.full((1, 6), 1.5, np.float32)
    answer = infer("http", ragged_server, data)
    np.testing.assert_array_equal(answer["DOUBLED"], 2 * data)
    assert answer["MAX_OUT"].tolist() == [[6]] and answer["ACC_OUT"].tolist() == [[6]]


def test_metadata_hides_the_batch_inputs(ragged_server):
    metadata = httpclient.InferenceServerClient(ragged_server.http_url).get_model_metadata("ragged")
    assert [tensor["name"] for tensor in metadata["inputs"]] == ["INPUT"]
    assert metadata["inputs"][0]["shape"] == [-1, -1]


@pytest.mark.parametrize("change, fragment", [
    (lambda c: c.replace("max_batch_size: 8", "max_batch_size: 0").replace(
        "dynamic_batching", "# dynamic_batching"), "needs max_batch_size > 0"),
    (lambda c: c.replace('target_name: "COUNT"', 'target_name: "ABSENT"'),
     "batch_input target ABSENT is not an input of the model"),
    (lambda c: c.replace("TYPE_FP32 source_input", "TYPE_FP16 source_input", 1),
     "batch_input 'COUNT' has data_type TYPE_FP16"),
    (lambda c: c.replace('source_input: "INPUT" } ]', 'source_input: "OTHER" } ]'),
     "batch_output ['DOUBLED'] needs one source_input among the inputs"),
])
def test_a_ragged_configuration_that_cannot_work_fails_the_load_naming_why(tmp_path, change, fragment):
    from server.protocol.model_config import ConfigError
    from server.repository.loader import load_model

    model_dir = publish(tmp_path, "ragged", ragged_model(), change(ragged_config()))
    with pytest.raises(ConfigError) as refused:
        load_model(model_dir)
    assert fragment in str(refused.value)
