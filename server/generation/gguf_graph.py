"""A GGUF decoder as an ONNX graph of ONNX Runtime's own operators, in the layout onnxruntime-genai's
builder writes (served by `gqa.GqaDecoder`): `input_ids`, `attention_mask`, `past_key_values.{i}.key|value`
in, `logits` and `present.{i}.key|value` out; plus `logit_positions` [batch, k]: the positions of each row
whose logits are computed (a prefill needs each row's last only: the output projection over every
position of a long prompt would cost more than the rest of the model).

Each layer: SimplifiedLayerNormalization (the residual add fused into SkipSimplifiedLayerNormalization),
one MatMulNBits for the query, key and value projections together, GroupQueryAttention (rotary positions
inside, from cos/sin tables of the file's RoPE settings), MatMulNBits for the output projection, and the
gated MLP with the gate and up projections in one MatMulNBits. Weights stay in the file's blocks
(`gguf_weights`); blocks with a minimum add their offsets' share as a small float MatMul over the sums of
each block of the input. The token embedding is gathered from its blocks where GatherBlockQuantized reads
them. Given per-channel scales (`kv_calibration`), GroupQueryAttention keeps the cache in int8."""

from itertools import groupby

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from server.generation.gguf_file import DecoderSettings, GgufError, GgufModel
from server.generation.gguf_weights import Blocks, blocks, float_matrix, nibbles

OPSET = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
MS = "com.microsoft"
INT8_COMPUTE = 4  # MatMulNBits' accuracy_level: activations quantized per block to int8, as llama.cpp does
FLOAT_COMPUTE = 0


class Graph:
    """Nodes and initializers, named in order (after `prefix`, where they join a graph of others)."""

    def __init__(self, prefix: str = ""):
        self.nodes, self.weights, self.names, self.count, self.prefix = [], [], set(), 0, prefix
        self.block_sums = {}  # (input, block size): the sums of each block of the input's last axis

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, domain: str = "", **attrs) -> list[str]:
        self.count += 1
        names = [f"{self.prefix}{op_type.lower()}_{self.count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, domain=domain, name=names[0], **attrs))
        return names

    def one(self, op_type: str, inputs: list[str], domain: str = "", **attrs) -> str:
        return self.op(op_type, inputs, 1, domain, **attrs)[0]

    def weight(self, name: str, array: np.ndarray) -> str:
        """An initializer; a name given before is the same constant, added once."""
        name = self.prefix + name
        if name not in self.names:
            self.names.add(name)
            self.weights.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def block_matmul(self, x: str, blocks: Blocks, label: str, accuracy_level: int) -> str:
        """x [batch, sequence, K] times the blocks' [N, K] matrix, transposed: MatMulNBits, plus the
        offsets' share where the blocks have offsets. 8-bit blocks multiplied in float go as two 4-bit
        halves (`nibbles`): ONNX Runtime's float kernel for 8 bits dequantizes the whole matrix at every
        call, its 4-bit one reads the blocks as they are."""
        if blocks.bits == 8 and accuracy_level == FLOAT_COMPUTE:
            high, low = nibbles(blocks)
            return self.one("Add", [self.block_matmul(x, high, f"{label}.high", accuracy_level),
                                    self.block_matmul(x, low, f"{label}.low", accuracy_level)])
        n, k = blocks.shape
        inputs = [x, self.weight(f"{label}.data", blocks.data),
                  self.weight(f"{label}.scales", blocks.scales.reshape(-1))]
        out = self.one("MatMulNBits", inputs, MS, K=k, N=n, bits=blocks.bits, block_size=blocks.block,
                       accuracy_level=accuracy_level)
        if blocks.offsets is None:
            return out
        offsets = self.weight(f"{label}.offsets", blocks.offsets.T)
        return self.one("Add", [out, self.one("MatMul", [self._block_sums(x, blocks.block), offsets])])

    def _block_sums(self, x: str, block: int) -> str:
        """x [batch, sequence, K] as [batch, sequence, K / block]: each block's sum (a MatMul by a matrix of
        ones would read that matrix again at every step)."""
        if (x, block) not in self.block_sums:
            shape = self.weight(f"blocks_of_{block}", np.array([0, 0, -1, block], np.int64))
            blocks = self.one("Reshape", [x, shape])
            last = self.weight("axis_last", np.array([-1], np.int64))
            self.block_sums[x, block] = self.one("ReduceSum", [blocks, last], keepdims=0)
        return self.block_sums[x, block]


def build(model: GgufModel, accuracy_level: int = INT8_COMPUTE, kv_scales: list | None = None
          ) -> onnx.ModelProto:
    """`kv_scales`: per layer, the (key, value) scales [kv_heads, 1, head_dim] of an int8 cache (ONNX
    Runtime's per-channel quantized cache, `kv_calibration`); None keeps the cache in float32."""
    return _Decoder(model, model.settings(), Graph(), accuracy_level, kv_scales).model()


class _Decoder:
    def __init__(self, model: GgufModel, settings: DecoderSettings, graph: Graph, accuracy_level: int,
                 kv_scales: list | None = None):
        self.file, self.s, self.g, self.accuracy = model, settings, graph, accuracy_level
        self.kv_scales = kv_scales
        self.vocab = model.tensor("token_embd.weight").data.shape[0]
        # llama's conversion stores query/key rows in interleaved rotary pairs; the others in halves
        self.interleaved = int(settings.architecture == "llama")

    def model(self) -> onnx.ModelProto:
        s, g = self.s, self.g
        hidden = self._embedding()
        seqlens, total = self._lengths()
        caches = {base: self._rotary(base) for base in {s.rope_base, s.local_rope_base} if base}
        inputs, outputs = [], []
        residual = None
        for layer in range(s.layers):
            normed, residual = self._norm(hidden, residual, f"blk.{layer}.attn_norm.weight")
            past = [f"past_key_values.{layer}.key", f"past_key_values.{layer}.value"]
            present = [f"present.{layer}.key", f"present.{layer}.value"]
            attended = self._attention(layer, normed, past, present, seqlens, total, caches)
            attended = self._post_norm(attended, f"blk.{layer}.post_attention_norm.weight")
            normed, residual = self._norm(attended, residual, f"blk.{layer}.ffn_norm.weight")
            hidden = self._post_norm(self._mlp(layer, normed), f"blk.{layer}.post_ffw_norm.weight")
            inputs += [self._past_info(name) for name in past]
            outputs += [self._past_info(name, "total_sequence_length") for name in present]
        normed, _ = self._norm(hidden, residual, "output_norm.weight")
        positions = g.one("Unsqueeze", ["logit_positions", g.weight("axis_last", np.array([-1], np.int64))])
        normed = g.one("GatherND", [normed, positions], batch_dims=1)
        head = "output" if "output.weight" in self.file.tensors else "token_embd"  # tied: the same blocks
        projected = self._linear(normed, [f"{head}.weight"], head)
        g.nodes.append(helper.make_node("Identity", [projected], ["logits"]))
        ids = [_int64("input_ids", ["batch_size", "sequence_length"]),
               _int64("attention_mask", ["batch_size", "total_sequence_length"]),
               _int64("logit_positions", ["batch_size", "positions"])]
        logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                               ["batch_size", "positions", self.vocab])
        body = helper.make_graph(g.nodes, "decoder", ids + inputs, [logits] + outputs, g.weights)
        return helper.make_model(body, opset_imports=OPSET, producer_name="ortserve import-llm")

    def _past_info(self, name: str, length: str = "past_sequence_length"):
        kind = TensorProto.FLOAT if self.kv_scales is None else TensorProto.INT8
        dims = ["batch_size", self.s.kv_heads, length, self.s.head_dim]
        return helper.make_tensor_value_info(name, kind, dims)

    def _embedding(self) -> str:
        g, table = self.g, self._blocks("token_embd.weight")
        if isinstance(table, Blocks) and table.offsets is None:
            # [rows, blocks, block]: the initializer a tied output projection's MatMulNBits reads too
            scales = g.weight("token_embd.gather_scales", table.scales[..., None])
            data = g.weight("token_embd.data", table.data)
            blocks = g.one("GatherBlockQuantized", [data, "input_ids", scales], MS, gather_axis=0,
                           quantize_axis=2, block_size=table.block, bits=table.bits)
            width = g.weight("hidden_shape", np.array([0, 0, -1], np.int64))
            hidden = g.one("Reshape", [blocks, width])
        else:
            table = table.dequantized() if isinstance(table, Blocks) else table
            hidden = g.one("Gather", [g.weight("embedding", table), "input_ids"])
        if self.s.architecture == "gemma3":  # Gemma scales its embeddings by sqrt(hidden size)
            scale = np.array(np.sqrt(self.s.hidden), np.float32)
            hidden = g.one("Mul", [hidden, g.weight("embedding.scale", scale)])
        return hidden

    def _lengths(self) -> tuple[str, str]:
        """GroupQueryAttention's per-row lengths (the mask's sum - 1) and the total length."""
        g = self.g
        axis = g.weight("axis_1", np.array([1], np.int64))
        summed = g.one("ReduceSum", ["attention_mask", axis], keepdims=0)
        seqlens = g.one("Cast", [g.one("Sub", [summed, g.weight("one", np.array(1, np.int64))])],
                        to=TensorProto.INT32)
        index = g.weight("index_1", np.array(1, np.int64))
        width = g.one("Gather", [g.one("Shape", ["attention_mask"]), index])
        return seqlens, g.one("Cast", [width], to=TensorProto.INT32)

    def _rotary(self, base: float) -> tuple[str, str]:
        s = self.s
        dims = np.arange(0, s.rope_dim, 2, dtype=np.float64) / s.rope_dim
        inverse = 1.0 / (base ** dims)
        if base == s.rope_base and "rope_freqs.weight" in self.file.tensors:  # Llama 3's factors
            inverse = inverse / self._floats("rope_freqs.weight")
        angles = np.outer(np.arange(s.context, dtype=np.float64) / s.rope_scale, inverse)
        tag = f"{base:g}"
        return (self.g.weight(f"cos_cache_{tag}", np.cos(angles).astype(np.float32)),
                self.g.weight(f"sin_cache_{tag}", np.sin(angles).astype(np.float32)))

    def _norm(self, hidden: str, residual: str | None, weight: str) -> tuple[str, str]:
        """RMS norm of hidden + residual (the sum is the next residual)."""
        if residual is None:
            return self._rms(hidden, weight), hidden
        out = self.g.op("SkipSimplifiedLayerNormalization", [hidden, residual, self._vector(weight)], 4, MS,
                        epsilon=self.s.epsilon)
        return out[0], out[3]

    def _rms(self, x: str, weight: str) -> str:
        """RMS norm over the last axis, scaled by the named weight."""
        return self.g.one("SimplifiedLayerNormalization", [x, self._vector(weight)], axis=-1,
                          epsilon=self.s.epsilon, stash_type=1)

    def _post_norm(self, hidden: str, weight: str) -> str:
        """Gemma 3's norms of the attention and MLP outputs before they join the residual."""
        return self._rms(hidden, weight) if weight in self.file.tensors else hidden

    def _vector(self, name: str) -> str:
        return self.g.weight(name, self._floats(name))

    def _floats(self, name: str) -> np.ndarray:
        return self._read(name, float_matrix).reshape(-1)

    def _blocks(self, name: str) -> Blocks | np.ndarray:
        return self._read(name, blocks)

    def _read(self, name: str, form):
        tensor = self.file.tensor(name)
        try:
            return form(tensor.kind, tensor.data)
        except GgufError as error:
            raise GgufError(f"tensor '{name}': {error}") from None

    def _attention(self, layer, normed, past, present, seqlens, total, caches) -> str:
        s, g = self.s, self.g
        prefix = f"blk.{layer}.attn_"
        qkv = self._linear(normed, [f"{prefix}{p}.weight" for p in "qkv"], f"{prefix}qkv",
                           [f"{prefix}{p}.bias" for p in "qkv"])
        local = bool(s.sliding_pattern) and (layer + 1) % s.sliding_pattern != 0
        cos, sin = caches[s.local_rope_base if local else s.rope_base]
        if f"{prefix}q_norm.weight" in self.file.tensors:  # qwen3, gemma3: RMS norm of each query/key head
            sizes = [s.heads * s.head_dim, s.kv_heads * s.head_dim, s.kv_heads * s.head_dim]
            query, key, value = g.op("Split", [qkv, g.weight(f"{prefix}split", np.array(sizes, np.int64))], 3,
                                     axis=-1)
            query = self._head_norm(query, s.heads, f"{prefix}q_norm.weight")
            key = self._head_norm(key, s.kv_heads, f"{prefix}k_norm.weight")
            qkv_inputs = [query, key, value]
        else:
            qkv_inputs = [qkv, "", ""]
        attrs = dict(num_heads=s.heads, kv_num_heads=s.kv_heads, do_rotary=1,
                     rotary_interleaved=self.interleaved)
        if local:
            attrs["local_window_size"] = s.sliding_window
        inputs = [*qkv_inputs, *past, seqlens, total, cos, sin]
        if self.kv_scales is not None:
            attrs.update(k_quant_type="PER_CHANNEL", v_quant_type="PER_CHANNEL", kv_cache_bit_width=8)
            key_scale, value_scale = self.kv_scales[layer]
            # after position_ids, attention_bias and head_sink, which this graph does not use
            scales = [g.weight(f"{prefix}k_scale", key_scale), g.weight(f"{prefix}v_scale", value_scale)]
            inputs += ["", "", "", *scales]
        attended = g.one("GroupQueryAttention", inputs, MS, **attrs)
        g.nodes[-1].output.extend(present)
        return self._linear(attended, [f"{prefix}output.weight"], f"{prefix}output")

    def _head_norm(self, x: str, heads: int, weight: str) -> str:
        g = self.g
        heads_shape = g.weight(f"{weight}.shape", np.array([0, 0, heads, self.s.head_dim], np.int64))
        normed = self._rms(g.one("Reshape", [x, heads_shape]), weight)
        return g.one("Reshape", [normed, g.weight(f"{weight}.flat", np.array([0, 0, -1], np.int64))])

    def _mlp(self, layer: int, normed: str) -> str:
        g, prefix = self.g, f"blk.{layer}.ffn_"
        both = self._linear(normed, [f"{prefix}gate.weight", f"{prefix}up.weight"], f"{prefix}gate_up")
        gate, up = g.op("Split", [both], 2, axis=-1, num_outputs=2)
        if self.s.architecture == "gemma3":
            active = g.one("Gelu", [gate], approximate="tanh")
        else:
            active = g.one("Mul", [gate, g.one("Sigmoid", [gate])])
        return self._linear(g.one("Mul", [active, up]), [f"{prefix}down.weight"], f"{prefix}down")

    def _linear(self, x: str, names: list[str], label: str, biases: list[str] = ()) -> str:
        """x times the named [N, K] matrices side by side: one MatMulNBits where their blocks agree."""
        matrices = [self._blocks(name) for name in names]
        groups = [list(run) for _, run in groupby(matrices, key=_form)]  # one operator per run
        labels = [label] if len(groups) == 1 else [f"{label}_{i}" for i in range(len(groups))]
        parts = [self._matmul(x, group, name) for group, name in zip(groups, labels)]
        out = parts[0] if len(parts) == 1 else self.g.one("Concat", parts, axis=-1)
        if biases and all(b in self.file.tensors for b in biases):
            bias = np.concatenate([self._floats(b) for b in biases])
            out = self.g.one("Add", [out, self.g.weight(f"{label}.bias", bias)])
        return out

    def _matmul(self, x: str, group: list, label: str) -> str:
        g = self.g
        if not isinstance(group[0], Blocks):
            matrix = np.concatenate(group)
            return g.one("MatMul", [x, g.weight(f"{label}.weight", matrix.T)])
        return g.block_matmul(x, _joined(group), label, self.accuracy)


def _int64(name: str, dims: list[str]):
    return helper.make_tensor_value_info(name, TensorProto.INT64, dims)


def _form(matrix) -> tuple:
    """What one operator needs its matrices to share: float, or blocks of the same bits and size."""
    return ("float",) if not isinstance(matrix, Blocks) else (matrix.bits, matrix.block)


def _joined(group: list[Blocks]) -> Blocks:
    if len(group) == 1:
        return group[0]
    first = group[0]
    offsets = None
    if any(b.offsets is not None for b in group):
        offsets = np.concatenate([b.offsets if b.offsets is not None else np.zeros_like(b.scales)
                                  for b in group])
    return Blocks(np.concatenate([b.data for b in group]), np.concatenate([b.scales for b in group]), offsets,
                  first.bits, first.block)
