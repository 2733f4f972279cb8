"""Tiny ONNX models for tests, written into a Triton-style repository."""

import re
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from exporters.demo import SIMPLE_CONFIG, publish, simple_model

OPSET = [helper.make_opsetid("", 17)]


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=OPSET, ir_version=8)


def _info(name, elem_type, shape):
    return helper.make_tensor_value_info(name, elem_type, shape)


def string_model(width: int = 4) -> onnx.ModelProto:
    """INPUT0 BYTES[-1,width] -> OUTPUT0 (the same strings)."""
    return _model(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        [_info("INPUT0", TensorProto.STRING, ["batch", width])],
        [_info("OUTPUT0", TensorProto.STRING, ["batch", width])],
    )


def relu_model(dims: tuple[str, ...] = ("batch", "n")) -> onnx.ModelProto:
    """x FP32[batch, n] -> y = relu(x); no config.pbtxt, so every setting comes from the graph."""
    return _model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [_info("x", TensorProto.FLOAT, list(dims))],
        [_info("y", TensorProto.FLOAT, list(dims))],
    )


def widen_model() -> onnx.ModelProto:
    """x UINT8[batch, n] -> y = x as FP32: an answer four times the size of its request."""
    return _model(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        [_info("x", TensorProto.UINT8, ["batch", "n"])],
        [_info("y", TensorProto.FLOAT, ["batch", "n"])],
    )


def defaulted_model() -> onnx.ModelProto:
    """a FP32[1] -> y = a + b, where b FP32[1] defaults to 10: an initializer a request may override."""
    return _model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [_info("a", TensorProto.FLOAT, [1]), _info("b", TensorProto.FLOAT, [1])],
        [_info("y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.array([10], np.float32), "b")],
    )


def classifier_model() -> onnx.ModelProto:
    """scores FP32[-1,5] -> probabilities = softmax(scores)."""
    return _model(
        [helper.make_node("Softmax", ["scores"], ["probabilities"], axis=-1)],
        [_info("scores", TensorProto.FLOAT, ["batch", 5])],
        [_info("probabilities", TensorProto.FLOAT, ["batch", 5])],
    )


def types_model() -> onnx.ModelProto:
    """half FP16[3] -> doubled = 2 * half; flags BOOL[3] -> negated = not flags (no batching)."""
    two = numpy_helper.from_array(np.array(2, dtype=np.float16), "two")
    return _model(
        [
            helper.make_node("Mul", ["half", "two"], ["doubled"]),
            helper.make_node("Not", ["flags"], ["negated"]),
        ],
        [_info("half", TensorProto.FLOAT16, [3]), _info("flags", TensorProto.BOOL, [3])],
        [_info("doubled", TensorProto.FLOAT16, [3]), _info("negated", TensorProto.BOOL, [3])],
        [two],
    )


def scalar_model() -> onnx.ModelProto:
    """s FP32[] -> doubled = 2 * s, a scalar in and out (rank 0)."""
    two = numpy_helper.from_array(np.array(2, dtype=np.float32), "two")
    return _model([helper.make_node("Mul", ["s", "two"], ["doubled"])],
                  [_info("s", TensorProto.FLOAT, [])], [_info("doubled", TensorProto.FLOAT, [])], [two])


def offset_model(offset: int) -> onnx.ModelProto:
    """x INT64[-1,1] -> y = x + offset: versions tell themselves apart by their offset."""
    constant = numpy_helper.from_array(np.array([offset], dtype=np.int64), "offset")
    return _model(
        [helper.make_node("Add", ["x", "offset"], ["y"])],
        [_info("x", TensorProto.INT64, ["batch", 1])],
        [_info("y", TensorProto.INT64, ["batch", 1])],
        [constant],
    )


def padded_model() -> onnx.ModelProto:
    """x FP32[batch, seq] -> y = relu(x) [batch, seq], total = sum(x) [batch, 1], and `heavy` [batch, 1]:
    a product with 64 MB of weights, so that an execution takes long enough for requests to queue."""
    weights = np.full((2048, 8192), 1 / 2048, dtype=np.float32)
    return _model(
        [
            helper.make_node("Relu", ["x"], ["y"]),
            helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1),
            helper.make_node("Expand", ["total", "wide"], ["spread"]),
            helper.make_node("MatMul", ["spread", "weights"], ["product"]),
            helper.make_node("ReduceMean", ["product"], ["heavy"], axes=[1], keepdims=1),
        ],
        [_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [
            _info("y", TensorProto.FLOAT, ["batch", "seq"]),
            _info("total", TensorProto.FLOAT, ["batch", 1]),
            _info("heavy", TensorProto.FLOAT, ["batch", 1]),
        ],
        [
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
            numpy_helper.from_array(np.array([1, 2048], dtype=np.int64), "wide"),
            numpy_helper.from_array(weights, "weights"),
        ],
    )


PADDED_CONFIG = """
max_batch_size: 16
dynamic_batching { max_queue_delay_microseconds: 200000 }
parameters { key: "pad_inputs" value { string_value: "x:0" } }
parameters { key: "pad_outputs" value { string_value: "y" } }
parameters { key: "pad_buckets" value { string_value: "8,64" } }
"""


def lookup_model() -> onnx.ModelProto:
    """index INT64[-1,1] -> value = table[index]; an index past the table fails inside ONNX Runtime."""
    table = numpy_helper.from_array(np.array([10.0, 20.0, 30.0, 40.0], dtype=np.float32), "table")
    return _model(
        [helper.make_node("Gather", ["table", "index"], ["value"], axis=0)],
        [_info("index", TensorProto.INT64, ["batch", 1])],
        [_info("value", TensorProto.FLOAT, ["batch", 1])],
        [table],
    )


LABELS = ["cat", "dog", "bird", "fish", "frog"]


def int32_pair(module, names=("INPUT0", "INPUT1"), rows: int = 1, seed: int = 0):
    """Two random INT32 [rows, 16] inputs of a `simple`-shaped model as `module` (tritonclient.http or
    .grpc) sends them, and their arrays."""
    a, b = np.random.default_rng(seed).integers(-1000, 1000, size=(2, rows, 16), dtype=np.int32)
    inputs = [module.InferInput(name, [rows, 16], "INT32") for name in names]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs, a, b


def copy_model(source: Path, repository: Path, name: str) -> Path:
    """The model directory `source` copied into `repository` as `name`, its config renamed to match."""
    target = repository / name
    shutil.copytree(source, target)
    config = target / "config.pbtxt"
    config.write_text(re.sub(r'^name: ".*"$', f'name: "{name}"', config.read_text(), count=1, flags=re.M))
    return target


def build_repository(root: Path) -> Path:
    publish(root, "simple", simple_model(), SIMPLE_CONFIG)
    publish(
        root,
        "simple_string",
        string_model(),
        """
name: "simple_string"
max_batch_size: 8
input [ { name: "INPUT0", data_type: TYPE_STRING, dims: [ 4 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_STRING, dims: [ 4 ] } ]
""",
    )
    publish(root, "string_one", string_model(1), None)
    publish(root, "relu", relu_model(), None)
    publish(root, "relu_grid", relu_model(("batch", "h", "w")), None)
    model_dir = publish(
        root,
        "classifier",
        classifier_model(),
        """
max_batch_size: 4
output [ { name: "probabilities", data_type: TYPE_FP32, dims: [ 5 ], label_filename: "labels.txt" } ]
instance_group [ { kind: KIND_CPU, count: 2 } ]
model_warmup [ {
  name: "zeros", batch_size: 2,
  inputs { key: "scores" value: { data_type: TYPE_FP32, dims: [ 5 ], zero_data: true } }
} ]
""",
    )
    (model_dir / "labels.txt").write_text("\n".join(LABELS) + "\n")
    publish(root, "types", types_model(), None)
    publish(root, "padded", padded_model(), PADDED_CONFIG)
    publish(root, "lookup", lookup_model(), None)
    publish(root, "scalar", scalar_model(), """
input [ { name: "s", data_type: TYPE_FP32, dims: [ 1 ] } ]
output [ { name: "doubled", data_type: TYPE_FP32, dims: [ 1 ] } ]
""")
    publish(root, "scalar_bare", scalar_model(), None)
    publish(root, "optional", defaulted_model(), """
input [ { name: "a", data_type: TYPE_FP32, dims: [ 1 ] },
        { name: "b", data_type: TYPE_FP32, dims: [ 1 ], optional: true } ]
""")
    publish(root, "scalar_square", scalar_model(), """
input [ { name: "s", data_type: TYPE_FP32, dims: [ 1, 1 ] } ]
output [ { name: "doubled", data_type: TYPE_FP32, dims: [ 1, 1 ] } ]
""")
    publish(
        root,
        "limited",
        padded_model(),
        """
max_batch_size: 1
dynamic_batching { default_queue_policy { max_queue_size: 1 } }
""",
    )
    for version in (1, 2, 3):
        model_dir = root / "versioned" / str(version)
        model_dir.mkdir(parents=True)
        onnx.save(offset_model(100 * version), model_dir / "model.onnx")
    (root / "versioned" / "config.pbtxt").write_text(
        "max_batch_size: 2\nversion_policy: { latest: { num_versions: 2 } }\n"
    )
    for ignored in ("004", "abc", "-1"):  # not versions to Triton: no leading zeros, digits only
        (root / "versioned" / ignored).mkdir()
        onnx.save(offset_model(900), root / "versioned" / ignored / "model.onnx")
    for version in (1, 2):
        (root / "pinned" / str(version)).mkdir(parents=True)
        onnx.save(offset_model(100 * version), root / "pinned" / str(version) / "model.onnx")
    (root / "pinned" / "config.pbtxt").write_text(
        "max_batch_size: 2\nversion_policy: { specific: { versions: [1, 3] } }\n"
    )
    broken = root / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"this is not an ONNX model")
    return root


def sequence_accumulator_model(control_type: int) -> onnx.ModelProto:
    """A stateful model for the sequence batcher: STATE_OUT = STATE_IN + INPUT (FP32[batch, 2]), OUTPUT the
    same; CONTROLS FP32[batch, 4] echoes the START, END, READY (`control_type`) and CORRID (UINT64) inputs."""
    controls = ("START", "END", "READY", "CORRID")
    return _model(
        [
            helper.make_node("Add", ["STATE_IN", "INPUT"], ["STATE_OUT"]),
            helper.make_node("Identity", ["STATE_OUT"], ["OUTPUT"]),
            *[helper.make_node("Cast", [name], [f"{name}_fp32"], to=TensorProto.FLOAT) for name in controls],
            helper.make_node("Concat", [f"{name}_fp32" for name in controls], ["CONTROLS"], axis=1),
        ],
        [
            _info("INPUT", TensorProto.FLOAT, ["batch", 2]),
            _info("STATE_IN", TensorProto.FLOAT, ["batch", 2]),
            *[_info(name, control_type, ["batch", 1]) for name in controls[:3]],
            _info("CORRID", TensorProto.UINT64, ["batch", 1]),
        ],
        [
            _info("OUTPUT", TensorProto.FLOAT, ["batch", 2]),
            _info("STATE_OUT", TensorProto.FLOAT, ["batch", 2]),
            _info("CONTROLS", TensorProto.FLOAT, ["batch", 4]),
        ],
    )


def sequence_accumulator_config(strategy: str, false_true: str, extra: str = "") -> str:
    """`false_true`: e.g. 'fp32_false_true: [ -1, 5 ]'; no input/output lists (completed from the graph)."""
    controls = "".join(
        f'{{ name: "{name}" control [ {{ kind: CONTROL_SEQUENCE_{name} {false_true} }} ] }},'
        for name in ("START", "END", "READY")
    )
    return f"""
max_batch_size: 4
sequence_batching {{
  max_sequence_idle_microseconds: 30000000
  {strategy}
  control_input [ {controls}
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }} ] }} ]
  state [ {{ input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32 dims: [ 2 ] }} ]
}}
{extra}
"""


def growing_state_model() -> onnx.ModelProto:
    """No batching: STATE_OUT = concat(STATE_IN FP32[-1], INPUT FP32[1]) and OUTPUT the same, so the
    state grows a step at a time; CORRID_OUT echoes the string correlation id."""
    return _model(
        [
            helper.make_node("Concat", ["STATE_IN", "INPUT"], ["STATE_OUT"], axis=0),
            helper.make_node("Identity", ["STATE_OUT"], ["OUTPUT"]),
            helper.make_node("Identity", ["CORRID"], ["CORRID_OUT"]),
        ],
        [
            _info("INPUT", TensorProto.FLOAT, [1]),
            _info("STATE_IN", TensorProto.FLOAT, ["n"]),
            _info("CORRID", TensorProto.STRING, [1]),
        ],
        [
            _info("OUTPUT", TensorProto.FLOAT, ["m"]),
            _info("STATE_OUT", TensorProto.FLOAT, ["m"]),
            _info("CORRID_OUT", TensorProto.STRING, [1]),
        ],
    )


GROWING_STATE_CONFIG = """
max_batch_size: 0
sequence_batching {
  control_input [ { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING } ] } ]
  state [ { input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
}
"""

