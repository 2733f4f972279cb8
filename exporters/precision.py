"""fp16 and int8 variants of an exported fp32 ONNX model."""

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.transformers import float16

# Reductions and exponentials overflow or lose too much in fp16; they stay fp32 between casts.
FP16_KEEP_FP32 = ["LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Exp", "Erf"]
# Weight-carrying ops quantized dynamically (transformers, LSTMs): activations are scaled per batch.
DYNAMIC_OPS = ["MatMul", "Gemm", "LSTM", "Attention"]

INT8_METHODS = ("dynamic", "static", "blocks")  # blocks: weight-only, for decoders


def to_fp16(source: Path, target: Path) -> Path:
    """Weights and arithmetic in fp16; inputs and outputs stay fp32 so clients are unchanged."""
    model = onnx.load(str(source))
    converted = float16.convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=float16.DEFAULT_OP_BLOCK_LIST + FP16_KEEP_FP32,
    )
    onnx.save(converted, str(target))
    return target


def to_int8_dynamic(source: Path, target: Path) -> Path:
    """Per-channel int8 weights, activations quantized at run time (no calibration data needed).

    Weights use 7 bits (`reduce_range`): on x86 CPUs without VNNI, ONNX Runtime's uint8 x int8 kernels
    add pairs of products in 16 bits, which saturate with full-range per-channel weights (the exporter
    tests' tiny GPT then misses its int8 cosine tolerance on such a CPU)."""
    quantize_dynamic(
        str(source), str(target), op_types_to_quantize=DYNAMIC_OPS, per_channel=True, reduce_range=True,
        weight_type=QuantType.QInt8,
    )
    return target


class _Feeds(CalibrationDataReader):
    """The calibration batches, with a progress bar (ETA) while ONNX Runtime reads them."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]):
        from exporters import console

        feeds = list(feeds)
        self._feeds = iter(feeds)
        self._bar = console.bar(len(feeds), "int8: calibrating", unit="batch")

    def get_next(self):
        batch = next(self._feeds, None)
        if batch is None:
            self._bar.close()
        else:
            self._bar.update()
        return batch


def to_int8_static(source: Path, target: Path, calibration: Iterable[dict[str, np.ndarray]]) -> Path:
    """Static int8 for CNNs: shape inference and fusion first, then QOperator with uint8 activations
    and per-channel int8 weights, the fastest form on x86 CPUs (QDQ without pre-processing was slower
    than fp32 there)."""
    with tempfile.TemporaryDirectory() as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(target), _Feeds(calibration),
            quant_format=QuantFormat.QOperator,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return target


def to_int4(source: Path, target: Path, block_size: int = 32, accuracy_level: int = 4) -> Path:
    """Weight-only int4 for decoders, as llama.cpp quantizes a model to Q4_1 with its embedding at 8
    bits: each MatMul weight in 4-bit blocks of `block_size`, every block's range in 15 steps from its
    minimum (the minimum kept exactly, as a per-block offset: `server.generation.gguf_weights`); the
    output projection (the MatMul that writes `logits`) and the token embedding (Gather) in symmetric
    8-bit blocks. ONNX Runtime's MatMulNBits with `accuracy_level` 4 computes with int8 activations,
    the fastest on CPUs. Decoding reads every weight each step, so fewer bytes is most of the speed
    there is."""
    from server.generation.gguf_weights import minimum_blocks

    return _weight_only(source, target, minimum_blocks, block_size, accuracy_level)


def to_int8_blocks(source: Path, target: Path, block_size: int = 32, accuracy_level: int = 4) -> Path:
    """Weight-only int8 for decoders, as llama.cpp's Q8_0: every MatMul weight and the embedding in
    symmetric 8-bit blocks of `block_size` (per-tensor dynamic int8 loses a real decoder's quality:
    `loadtest.bench_gguf` measures both on SmolLM2-135M)."""
    from server.generation.gguf_weights import nearest

    return _weight_only(source, target, nearest, block_size, accuracy_level)


def _weight_only(source: Path, target: Path, form, block_size: int, accuracy_level: int) -> Path:
    """Each MatMul with a constant weight as MatMulNBits of `form(weight)` (the one that writes `logits`
    in 8 bits), each Gather of a constant table from its 8-bit blocks."""
    from server.generation.gguf_graph import Graph
    from server.generation.gguf_weights import nearest

    with tempfile.TemporaryDirectory() as work:
        model = onnx.load(str(fold_constants(source, Path(work) / "folded.onnx")))
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    logits = {output.name for output in model.graph.output}
    graph, nodes = Graph(prefix="blocks/"), []
    for node in model.graph.node:
        matrix = _constant_matrix(node, weights, block_size)
        added = len(graph.nodes)
        label = node.output[0]
        if matrix is not None and node.op_type == "MatMul":
            blocks = (nearest if logits & set(node.output) else form)(matrix.T, block_size)
            out = graph.block_matmul(node.input[0], blocks, label, accuracy_level)
        elif matrix is not None:  # the embedding: rows gathered from their 8-bit blocks
            table = nearest(matrix, block_size)
            data = graph.weight(f"{label}.data", table.data.reshape(table.shape[0], -1))
            out = graph.one("GatherBlockQuantized", [data, node.input[1], graph.weight(f"{label}.scales",
                                                                                        table.scales)],
                            "com.microsoft", gather_axis=0, quantize_axis=1, block_size=block_size, bits=8)
        else:
            nodes.append(node)
            continue
        graph.nodes.append(onnx.helper.make_node("Identity", [out], list(node.output)))
        nodes.extend(graph.nodes[added:])
    used = {name for node in nodes for name in node.input}
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [tensor for tensor in model.graph.initializer if tensor.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + graph.weights)
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(target))
    return target


def _constant_matrix(node, weights: dict, block_size: int) -> np.ndarray | None:
    """The float [K, N] weight of a MatMul, or the [rows, K] table of a Gather along rows, where it is a
    constant whose K splits into blocks; None otherwise."""
    from onnx import numpy_helper

    if node.op_type == "MatMul":
        tensor = weights.get(node.input[1])
        axis = 0
    elif node.op_type == "Gather" and all(a.name != "axis" or a.i == 0 for a in node.attribute):
        tensor = weights.get(node.input[0])
        axis = 1
    else:
        return None
    if tensor is None or len(tensor.dims) != 2 or tensor.data_type != onnx.TensorProto.FLOAT:
        return None
    return numpy_helper.to_array(tensor) if tensor.dims[axis] % block_size == 0 else None


def fold_constants(source: Path, target: Path) -> Path:
    """ONNX Runtime's basic (standard-op) optimizations written out: a tied output projection,
    `MatMul(hidden, Transpose(embedding))`, gets a constant weight that weight-only quantization can
    reach (the embedding itself stays fp32, read one row per token)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return target
