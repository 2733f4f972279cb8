"""The KV cache kept where the decoder runs (on CUDA: GPU memory), through ONNX Runtime IO binding.

The decoder's `present` outputs stay on the device and become the next step's past; only token ids, the
attention mask and positions go in from the host and only the logits come back. Appending a token's
column, dropping rows and joining batches run as small ONNX graphs on the same execution provider, so no
key or value crosses to the host."""

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from server.generation.kv_cache import kept_rows, left_padded, with_new_tokens

_ELEMENT = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}
_LAST = np.array([np.iinfo(np.int64).max], np.int64)


def _tensor(name: str, element: int, rank: int = 4):
    return helper.make_tensor_value_info(name, element, [f"{name}_{axis}" for axis in range(rank)])


def _model(nodes, inputs, outputs, initializers=()) -> bytes:
    graph = helper.make_graph(nodes, "kv_cache", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    return model.SerializeToString()


def append_graph(count: int, element: int) -> bytes:
    """out.i = past.i followed by new.i along the sequence axis."""
    nodes = [helper.make_node("Concat", [f"past.{i}", f"new.{i}"], [f"out.{i}"], axis=2)
             for i in range(count)]
    inputs = [_tensor(f"{kind}.{i}", element) for kind in ("past", "new") for i in range(count)]
    return _model(nodes, inputs, [_tensor(f"out.{i}", element) for i in range(count)])


def select_graph(count: int, element: int) -> bytes:
    """out.i = past.i's `rows`, from column `start` on."""
    nodes = []
    for i in range(count):
        nodes.append(helper.make_node("Gather", [f"past.{i}", "rows"], [f"kept.{i}"], axis=0))
        nodes.append(helper.make_node("Slice", [f"kept.{i}", "start", "end", "axis"], [f"out.{i}"]))
    inputs = [_tensor(f"past.{i}", element) for i in range(count)]
    inputs += [_tensor("rows", TensorProto.INT64, 1), _tensor("start", TensorProto.INT64, 1)]
    constants = [helper.make_tensor("end", TensorProto.INT64, [1], _LAST),
                 helper.make_tensor("axis", TensorProto.INT64, [1], [2])]
    return _model(nodes, inputs, [_tensor(f"out.{i}", element) for i in range(count)], constants)


def join_graph(count: int, element: int) -> bytes:
    """out.i = the rows of a.i, then those of b.i, each zero-padded on the left by its `pad_*` columns."""
    nodes = []
    for i in range(count):
        for side in ("a", "b"):
            nodes.append(helper.make_node("Pad", [f"{side}.{i}", f"pads_{side}"], [f"{side}_padded.{i}"]))
        nodes.append(helper.make_node("Concat", [f"a_padded.{i}", f"b_padded.{i}"], [f"out.{i}"], axis=0))
    inputs = [_tensor(f"{side}.{i}", element) for side in ("a", "b") for i in range(count)]
    inputs += [_tensor("pads_a", TensorProto.INT64, 1), _tensor("pads_b", TensorProto.INT64, 1)]
    return _model(nodes, inputs, [_tensor(f"out.{i}", element) for i in range(count)])


def _left_pads(columns: int) -> np.ndarray:
    return np.array([0, 0, columns, 0, 0, 0, 0, 0], np.int64)


class DeviceRunner:
    """Runs sessions with IO binding on the decoder's device: host arrays are bound as inputs (ONNX
    Runtime copies them where the graph needs them), outputs stay on the device unless named host."""

    def __init__(self, session: ort.InferenceSession):
        cuda = session.get_provider_options().get("CUDAExecutionProvider")
        self.device = "cpu" if cuda is None else "cuda"
        self.device_id = 0 if cuda is None else int(cuda.get("device_id", 0))
        self.providers = ["CPUExecutionProvider"]
        if cuda is not None:  # the cache's own graphs: plain CUDA, whatever else runs the decoder
            self.providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device_id}))

    def session(self, model: bytes) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # copies: threads would only wait on memory
        return ort.InferenceSession(model, options, providers=self.providers)

    def run(self, session: ort.InferenceSession, inputs: dict, outputs: list[str],
            host: tuple[str, ...] = ()) -> list[ort.OrtValue]:
        binding = session.io_binding()
        for name, value in inputs.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in outputs:
            if name in host:
                binding.bind_output(name, "cpu")
            else:
                binding.bind_output(name, self.device, self.device_id)
        session.run_with_iobinding(binding)
        return binding.get_outputs()


class CacheKernels:
    """The cache's device-side operations for a decoder with `count` past tensors of `dtype`."""

    def __init__(self, runner: DeviceRunner, count: int, dtype: np.dtype):
        element = _ELEMENT[np.dtype(dtype)]
        self.runner = runner
        self.outputs = [f"out.{i}" for i in range(count)]
        self._append = runner.session(append_graph(count, element))
        self._select = runner.session(select_graph(count, element))
        self._join = runner.session(join_graph(count, element))

    def append(self, past: list, new: list) -> list[ort.OrtValue]:
        feeds = {**{f"past.{i}": v for i, v in enumerate(past)}, **{f"new.{i}": v for i, v in enumerate(new)}}
        return self.runner.run(self._append, feeds, self.outputs)

    def select(self, past: list, rows: list[int], start: int) -> list[ort.OrtValue]:
        feeds = {f"past.{i}": v for i, v in enumerate(past)}
        feeds.update(rows=np.asarray(rows, np.int64), start=np.array([start], np.int64))
        return self.runner.run(self._select, feeds, self.outputs)

    def join(self, a: list, pad_a: int, b: list, pad_b: int) -> list[ort.OrtValue]:
        feeds = {**{f"a.{i}": v for i, v in enumerate(a)}, **{f"b.{i}": v for i, v in enumerate(b)}}
        feeds.update(pads_a=_left_pads(pad_a), pads_b=_left_pads(pad_b))
        return self.runner.run(self._join, feeds, self.outputs)


class DeviceKVBatch:
    """`KVBatch`'s contract with the keys and values in device buffers (ONNX Runtime OrtValues) exactly
    `length` columns wide; the mask stays on the host, where the attention mask and positions are built."""

    def __init__(self, past: list[ort.OrtValue], mask: np.ndarray, kernels: CacheKernels):
        self.past, self.mask, self.kernels = past, mask, kernels

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    def attention_mask(self, new: int) -> np.ndarray:
        return with_new_tokens(self.mask, new)

    def append(self, present: list[ort.OrtValue], count: int) -> None:
        """`present`: the graph's outputs, whose last `count` columns are the new tokens. When they hold
        the past too (Optimum's layout) they become the cache as they are."""
        width = present[0].shape()[2]
        self.past = present if width == self.length + count else self.kernels.append(self.past, present)
        self.mask = with_new_tokens(self.mask, count)

    def filter(self, keep: list[int]) -> "DeviceKVBatch":
        mask, start = kept_rows(self.mask, keep)
        return DeviceKVBatch(self.kernels.select(self.past, keep, start), mask, self.kernels)

    @staticmethod
    def concatenate(batches: list["DeviceKVBatch"]) -> "DeviceKVBatch":
        batches = [b for b in batches if b.rows]
        joined = batches[0]
        for batch in batches[1:]:
            length = max(joined.length, batch.length)
            past = joined.kernels.join(joined.past, length - joined.length, batch.past, length - batch.length)
            masks = [left_padded(b.mask, length) for b in (joined, batch)]
            joined = DeviceKVBatch(past, np.concatenate(masks), joined.kernels)
        return joined
