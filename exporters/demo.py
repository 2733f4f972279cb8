"""Builds the default model repository served by `make run` (skips models already built)."""

import argparse
import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

SIMPLE_CONFIG = """\
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0", data_type: TYPE_INT32, dims: [ 16 ] },
  { name: "INPUT1", data_type: TYPE_INT32, dims: [ 16 ] }
]
output [
  { name: "OUTPUT0", data_type: TYPE_INT32, dims: [ 16 ] },
  { name: "OUTPUT1", data_type: TYPE_INT32, dims: [ 16 ] }
]
dynamic_batching { max_queue_delay_microseconds: 100 }
"""


def simple_model() -> onnx.ModelProto:
    """Triton's `simple` example: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (INT32[16])."""

    def tensor(name):
        return helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 16])

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "simple",
        [tensor("INPUT0"), tensor("INPUT1")],
        [tensor("OUTPUT0"), tensor("OUTPUT1")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def publish(repository: Path, name: str, model: onnx.ModelProto, config: str | None) -> Path:
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, model_dir / "1" / "model.onnx")
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    return model_dir


def build(repository: Path) -> None:
    if not (repository / "simple" / "1" / "model.onnx").exists():
        publish(repository, "simple", simple_model(), SIMPLE_CONFIG)
        print(f"built {repository / 'simple'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("repository", type=Path, nargs="?", default=Path("model_repository"))
    build(parser.parse_args(argv).repository)
    return 0


if __name__ == "__main__":
    sys.exit(main())
