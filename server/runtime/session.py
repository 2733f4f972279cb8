"""ONNX Runtime sessions: execution providers from the instance group, thread and graph settings."""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as OrtInvalidArgument

from server.core import datatypes
from server.core.errors import InvalidArgument
from server.core.types import GraphTensor
from server.runtime.shapes import OutputShapes

log = logging.getLogger(__name__)

_EXECUTION_MODES = {"0": ort.ExecutionMode.ORT_SEQUENTIAL, "1": ort.ExecutionMode.ORT_PARALLEL}
_GRAPH_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    0: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}


@dataclass(frozen=True)
class SessionSettings:
    device: str = "cpu"  # "cpu" or "gpu"
    device_id: int = 0
    tensorrt: bool = False
    intra_op_threads: int = 0  # 0: ONNX Runtime's default
    inter_op_threads: int = 0
    execution_mode: str = "0"
    graph_level: int = 0
    # ONNX Runtime's worker threads spin while idle; on a few cores that starves the server's own threads
    allow_spinning: bool = False
    # cuDNN's convolution algorithm choice on CUDA (Triton's parameter cudnn_conv_algo_search): exhaustive
    # benchmarking of each new input shape (ONNX Runtime's default), heuristic, or the default algorithm
    cudnn_conv_algo_search: str = "EXHAUSTIVE"


def gpu_available() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


def providers(settings: SessionSettings) -> list:
    if settings.device != "gpu":
        return ["CPUExecutionProvider"]
    if not gpu_available():
        log.warning(
            "a GPU instance was asked for but ONNX Runtime has no CUDAExecutionProvider "
            "(providers: %s); serving on CPU",
            ", ".join(ort.get_available_providers()),
        )
        return ["CPUExecutionProvider"]
    cuda = {"device_id": settings.device_id, "cudnn_conv_algo_search": settings.cudnn_conv_algo_search}
    chosen = [("CUDAExecutionProvider", cuda)]
    if settings.tensorrt and "TensorrtExecutionProvider" in ort.get_available_providers():
        chosen.insert(0, ("TensorrtExecutionProvider", {"device_id": settings.device_id}))
    return chosen + ["CPUExecutionProvider"]


class OrtSession:
    """One ONNX Runtime session of one model version; `run` is called from a worker thread."""

    def __init__(self, path: Path, settings: SessionSettings):
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = settings.inter_op_threads
        options.execution_mode = _EXECUTION_MODES.get(settings.execution_mode, _EXECUTION_MODES["0"])
        options.graph_optimization_level = _GRAPH_LEVELS.get(
            settings.graph_level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        )
        options.add_session_config_entry("session.intra_op.allow_spinning", str(int(settings.allow_spinning)))
        options.add_session_config_entry("session.inter_op.allow_spinning", str(int(settings.allow_spinning)))
        self.session = ort.InferenceSession(
            os.fspath(path), sess_options=options, providers=providers(settings)
        )
        self.device = "gpu" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        self.runs_into = True  # false once a graph's output shapes proved other than its names say

    def graph_inputs(self) -> list[GraphTensor]:
        """The inputs a run needs, then those with a default value in the graph (optional)."""
        return [_graph_tensor(node) for node in self.session.get_inputs()] + [
            _graph_tensor(node, optional=True) for node in self.session.get_overridable_initializers()]

    def graph_outputs(self) -> list[GraphTensor]:
        return [_graph_tensor(node) for node in self.session.get_outputs()]

    def output_shapes(self) -> OutputShapes:
        return OutputShapes.from_graph({node.name: node.shape for node in self.session.get_inputs()},
                                       {node.name: node.shape for node in self.session.get_outputs()})

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str],
            into: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """`into`: arrays of the shapes some outputs will have, which they are written into (no copy after
        the run); where the run into them fails, a plain run follows."""
        try:
            if not (into and self.runs_into) or any(a.dtype.kind in "OSU" for a in feeds.values()):
                return self.session.run(output_names, feeds)  # (a binding takes no strings)
            if (written := self._run_into(feeds, output_names, into)) is not None:
                return written
            outputs = self.session.run(output_names, feeds)  # a bad input fails here too, and says why
            self.runs_into = False  # it ran where the run into `into` failed: the shapes were not those
            return outputs
        except OrtInvalidArgument as error:  # the input's values, not the server: a 400, not a backend fault
            raise InvalidArgument(f"the model rejected the input: {_status_message(error)}") from None

    def _run_into(self, feeds, output_names, into) -> list[np.ndarray] | None:
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        for name in output_names:
            target = into.get(name)
            if target is None:
                binding.bind_output(name, "cpu")
            else:
                binding.bind_output(name, "cpu", 0, target.dtype, list(target.shape), target.ctypes.data)
        try:
            self.session.run_with_iobinding(binding)
        except RuntimeError:  # errors through a binding are untyped: a shape other than expected, a bad input
            return None
        values = binding.get_outputs()
        return [into[name] if name in into else value.numpy() for name, value in zip(output_names, values)]


def _status_message(error: Exception) -> str:
    """ONNX Runtime's own words without its status prefix: "... Status Message: <this>"."""
    text = str(error)
    for marker in ("Status Message: ", "INVALID_ARGUMENT : "):
        if marker in text:
            return text.split(marker, 1)[1].strip()
    return text


def _graph_tensor(node, optional: bool = False) -> GraphTensor:
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else None for dim in node.shape or ())
    return GraphTensor(node.name, datatypes.from_onnx(node.type), shape, optional)
