"""config.pbtxt read as Triton's ModelConfig and completed from the ONNX graph."""

from pathlib import Path

import onnx
import pytest

from exporters.demo import SIMPLE_CONFIG, simple_model
from server.core.types import GraphTensor
from server.protocol.model_config import ConfigError, to_json
from server.repository.config import complete, config_from_json, parse_config, tensor_specs
from server.repository.loader import load_model

BATCHED = [GraphTensor("x", "FP32", (None, 3))], [GraphTensor("y", "FP32", (None, 2))]
FIXED = [GraphTensor("x", "FP32", (1, 3))], [GraphTensor("y", "FP32", (1, 2))]


def completed(text: str, graph=BATCHED):
    config = parse_config(text, _dir("m"))
    complete(config, *graph)
    return config


def _dir(name):
    return Path("/repository") / name


def test_empty_config_of_a_batchable_graph():
    config = completed("")
    assert config.name == "m"
    assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert config.max_batch_size == 4
    assert config.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in config.input] == [("x", [3])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("y", [2])]
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, 0)]
    assert [s.shape for s in tensor_specs(config, config.input)] == [(-1, 3)]


def test_graph_without_batch_dimension_is_not_batched():
    config = completed("", FIXED)
    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")
    assert [list(t.dims) for t in config.input] == [[1, 3]]


def test_declared_inputs_keep_max_batch_size_zero():
    config = completed('input [{ name: "x", data_type: TYPE_FP32, dims: [-1, 3] }]')
    assert config.max_batch_size == 0
    assert [list(t.dims) for t in config.input] == [[-1, 3]]


def test_partial_tensor_is_filled_in():
    config = completed('max_batch_size: 8\ninput [{ name: "x" }]\noutput [{ name: "y" }]')
    assert config.max_batch_size == 8
    assert [(t.data_type, list(t.dims)) for t in config.input] == [(11, [3])]  # TYPE_FP32


def test_declared_outputs_are_a_subset():
    text = 'max_batch_size: 2\noutput [{ name: "y", data_type: TYPE_FP32, dims: [2] }]'
    graph = (
        [GraphTensor("x", "FP32", (None, 3))],
        [
            GraphTensor("y", "FP32", (None, 2)),
            GraphTensor("z", "FP32", (None, 1)),
        ],
    )
    assert [t.name for t in completed(text, graph).output] == ["y"]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('input [{ name: "nope" }]', "'nope'"),
        ('max_batch_size: 2\ninput [{ name: "x", data_type: TYPE_INT32 }]', "TYPE_INT32"),
        ('max_batch_size: 2\ninput [{ name: "x", dims: [4] }]', "[4]"),
        ('platform: "tensorflow_savedmodel"', "tensorflow_savedmodel"),
        ("ensemble_scheduling {}", 'ensemble_scheduling needs platform: "ensemble"'),
        ('name: "other"', "other"),
        ('max_batch_size: 2\ninput [{ name: "x", optional: true }]', "optional in config.pbtxt but"),
    ],
)
def test_config_that_disagrees_with_the_graph(text, fragment):
    with pytest.raises(ConfigError) as error:
        completed(text)
    assert fragment in str(error.value)


def test_a_graphs_defaults_stay_inside_it_unless_the_config_names_them():
    inputs = [GraphTensor("x", "FP32", (None, 3)), GraphTensor("scale", "FP32", (1,), optional=True)]
    graph = inputs, BATCHED[1]
    assert [t.name for t in completed("", graph).input] == ["x"]
    text = 'max_batch_size: 0\ninput [{ name: "x", dims: [-1, 3] }, { name: "scale", optional: true }]'
    specs = tensor_specs(config := completed(text, graph), config.input)
    assert [(spec.name, spec.optional) for spec in specs] == [("x", False), ("scale", True)]


def test_batching_needs_a_variable_batch_dimension():
    with pytest.raises(ConfigError, match="max_batch_size"):
        completed("max_batch_size: 4", FIXED)


def test_reshape_checks_the_graph_shape():
    text = 'max_batch_size: 2\ninput [{ name: "x", dims: [3, 1], reshape: { shape: [3] } }]'
    config = completed(text)
    assert [s.shape for s in tensor_specs(config, config.input)] == [(-1, 3, 1)]


def test_text_format_errors_name_the_line():
    with pytest.raises(ConfigError, match="1:"):
        parse_config("max_batch_size: lots", _dir("m"))


def test_json_override_and_json_form():
    config = config_from_json('{"max_batch_size": 2, "input": [{"name": "x", "dims": ["3"]}]}', _dir("m"))
    complete(config, *BATCHED)
    as_json = to_json(config)
    assert as_json["max_batch_size"] == 2
    assert as_json["input"][0]["dims"] == [3]  # int64 as numbers, as Triton writes them
    with pytest.raises(ConfigError, match="valid model config"):
        config_from_json('{"max_batch": 2}', _dir("m"))


def test_the_clone_holds_the_simple_config_that_make_run_writes_and_it_loads(tmp_path):
    committed = Path(__file__).parent.parent / "model_repository" / "simple" / "config.pbtxt"
    assert committed.read_text() == SIMPLE_CONFIG
    (tmp_path / "simple" / "1").mkdir(parents=True)
    (tmp_path / "simple" / "config.pbtxt").write_text(committed.read_text())
    onnx.save(simple_model(), tmp_path / "simple" / "1" / "model.onnx")
    [model] = load_model(tmp_path / "simple")
    try:
        assert [spec.name for spec in model.inputs] == ["INPUT0", "INPUT1"]
        assert model.config.dynamic_batching.max_queue_delay_microseconds == 100
    finally:
        model.pool.close()
