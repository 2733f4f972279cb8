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

INT8_METHODS = ("dynamic", "static")


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
    """Weight-only int4 for decoders: the MatMul weights in blocks of `block_size` with a scale and a
    zero point each (ONNX Runtime's MatMulNBits); `accuracy_level` 4 computes with int8 activations,
    the fastest on CPUs. Decoding reads every weight each step, so a quarter of the bytes is most of
    the speed there is."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    with tempfile.TemporaryDirectory() as work:
        folded = fold_constants(source, Path(work) / "folded.onnx")
        quantizer = MatMulNBitsQuantizer(onnx.load(str(folded)), block_size=block_size, is_symmetric=False,
                                         accuracy_level=accuracy_level, op_types_to_quantize=("MatMul",))
        quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
    return target


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
