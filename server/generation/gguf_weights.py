"""GGUF tensors as ONNX Runtime's `MatMulNBits` weights, kept in the blocks llama.cpp quantized them in.

`MatMulNBits` computes (q - zero_point) x scale per block along K. Exact forms:
- Q4_0 (blocks of 32: d, q): 4 bits, scale d, the operator's default zero point 8.
- Q4_1 (blocks of 32: q x d + m): 4 bits, scale d, zero point -m / d as a float.
- Q4_K (super-blocks of 256: eight sub-blocks of 32, each q x d·sc - dmin·m): 4 bits, blocks of 32.
- Q8_0 (blocks of 32: q x d, q signed): 8 bits, q + 128 with the default zero point 128.
- Q6_K (sixteen blocks of 16: (q - 32) x d·sc): 8 bits, blocks of 16, q + 96.
Every other quantized type (Q5_0, Q5_1, Q5_K, Q2_K, Q3_K, IQ*) is dequantized with the `gguf` package and
kept at 8 bits in symmetric blocks of 32 (`NEAREST`: the nearest form the operator runs; its rounding is
finer than the source's 5 bits or fewer). F32, F16 and BF16 matrices are kept as floats."""

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

Q = GGMLQuantizationType
EXACT = (Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q8_0, Q.Q6_K)
FLOATS = (Q.F32, Q.F16, Q.BF16)


@dataclass
class Blocks:
    """A [N, K] matrix as MatMulNBits takes it: `data` [N, K / block, block x bits / 8] uint8,
    `scales` [N, K / block] float32, `zero_points` [N, K / block] float32 or None (the default,
    2^(bits - 1))."""

    data: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    bits: int
    block: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape[0], self.data.shape[1] * self.block

    def dequantized(self) -> np.ndarray:
        q = _unpacked(self.data) if self.bits == 4 else self.data.astype(np.float32)
        zero = self.zero_points[..., None] if self.zero_points is not None else 2 ** (self.bits - 1)
        return ((q - zero) * self.scales[..., None]).reshape(self.shape).astype(np.float32)

    def rows(self, start: int, stop: int) -> "Blocks":
        zero = None if self.zero_points is None else self.zero_points[start:stop]
        return Blocks(self.data[start:stop], self.scales[start:stop], zero, self.bits, self.block)


def blocks(kind: GGMLQuantizationType, raw: np.ndarray) -> Blocks | np.ndarray:
    """A matrix tensor's data as the reader gives it ([N, bytes of a row] for quantized types, [N, K]
    floats otherwise) in MatMulNBits form, or float32 [N, K] for float tensors."""
    if kind in FLOATS:
        return float_matrix(kind, raw)
    block, size = GGML_QUANT_SIZES[kind]
    rows = raw.reshape(raw.shape[0], -1, size)  # [N, super-blocks, bytes]
    match kind:
        case Q.Q4_0:
            return _q4_0(rows)
        case Q.Q4_1:
            return _q4_1(rows)
        case Q.Q4_K:
            return _q4_k(rows)
        case Q.Q8_0:
            return _q8_0(rows)
        case Q.Q6_K:
            return _q6_k(rows)
    return nearest(quants.dequantize(raw, kind))


def float_matrix(kind: GGMLQuantizationType, raw: np.ndarray) -> np.ndarray:
    """Any tensor as float32 (quantized ones dequantized by the `gguf` package)."""
    if kind == Q.F32:
        return np.asarray(raw, np.float32)
    return quants.dequantize(raw, kind).astype(np.float32)


def nearest(matrix: np.ndarray, block: int = 32) -> Blocks:
    """Symmetric 8-bit blocks: scale max|w| / 127 per block."""
    n, k = matrix.shape
    grouped = matrix.reshape(n, k // block, block)
    scales = np.abs(grouped).max(axis=-1) / 127
    safe = np.where(scales == 0, 1, scales)
    q = np.clip(np.rint(grouped / safe[..., None]), -127, 127) + 128
    return Blocks(q.astype(np.uint8), scales.astype(np.float32), None, 8, block)


def _f16(rows: np.ndarray, start: int) -> np.ndarray:
    """The float16 at byte `start` of every block, as float32 [N, blocks]."""
    return rows[..., start:start + 2].copy().view(np.float16)[..., 0].astype(np.float32)


def _packed(q: np.ndarray) -> np.ndarray:
    """4-bit values [..., 2m] packed two to a byte as MatMulNBits reads them: even ones low."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def _unpacked(data: np.ndarray) -> np.ndarray:
    q = np.empty((*data.shape[:-1], data.shape[-1] * 2), np.float32)
    q[..., 0::2], q[..., 1::2] = data & 0xF, data >> 4
    return q


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """llama.cpp's 4-bit runs: bytes [..., m] hold values 0..m-1 low and m..2m-1 high."""
    return np.concatenate([qs & 0xF, qs >> 4], axis=-1)


def _q4_0(rows: np.ndarray) -> Blocks:
    return Blocks(_packed(_nibbles(rows[..., 2:])), _f16(rows, 0), None, 4, 32)


def _q4_1(rows: np.ndarray) -> Blocks:
    scale, low = _f16(rows, 0), _f16(rows, 2)
    return _with_minimum(_nibbles(rows[..., 4:]), scale, low, 32)


def _with_minimum(q: np.ndarray, scale: np.ndarray, low: np.ndarray, block: int) -> Blocks:
    """Blocks of q x scale + low as (q - zero) x scale, zero = -low / scale; a block whose scale is 0
    (every value equal to `low`) becomes q = 1, scale = low, zero = 0."""
    flat = scale == 0
    q = np.where(flat[..., None], 1, q).reshape(q.shape[0], -1, block)
    zero = np.where(flat, 0, -low / np.where(flat, 1, scale))
    return Blocks(_packed(q), np.where(flat, low, scale).astype(np.float32).reshape(q.shape[:2]),
                  zero.astype(np.float32).reshape(q.shape[:2]), 4, block)


def _q4_k(rows: np.ndarray) -> Blocks:
    d, dmin = _f16(rows, 0), _f16(rows, 2)
    sc, m = _k_scales(rows[..., 4:16])
    qs = rows[..., 16:144].reshape(*rows.shape[:2], 4, 32)  # four runs of 64 values
    q = _nibbles(qs).reshape(*rows.shape[:2], 256)
    return _with_minimum(q.reshape(rows.shape[0], -1, 32), (d[..., None] * sc).reshape(rows.shape[0], -1),
                         -(dmin[..., None] * m).reshape(rows.shape[0], -1), 32)


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K's eight 6-bit scales and minimums from 12 bytes (llama.cpp's get_scale_min_k4)."""
    packed = packed.astype(np.uint8)
    low, high = packed[..., 0:4], packed[..., 4:8]
    top = packed[..., 8:12]
    scales = np.concatenate([low & 63, (top & 0xF) | ((low >> 6) << 4)], axis=-1)
    minimums = np.concatenate([high & 63, (top >> 4) | ((high >> 6) << 4)], axis=-1)
    return scales.astype(np.float32), minimums.astype(np.float32)


def _q8_0(rows: np.ndarray) -> Blocks:
    q = rows[..., 2:].view(np.int8).astype(np.int16) + 128
    return Blocks(q.astype(np.uint8), _f16(rows, 0), None, 8, 32)


def _q6_k(rows: np.ndarray) -> Blocks:
    n, supers = rows.shape[:2]
    ql, qh = rows[..., 0:128], rows[..., 128:192]
    sc = rows[..., 192:208].view(np.int8).astype(np.float32)
    d = _f16(rows, 208)
    q = np.empty((n, supers, 2, 128), np.int16)
    for half in range(2):
        low, high = ql[..., 64 * half:64 * half + 64], qh[..., 32 * half:32 * half + 32]
        for quarter in range(4):
            nibble = (low[..., 32 * (quarter % 2):32 * (quarter % 2) + 32] >> (4 * (quarter // 2))) & 0xF
            q[..., half, 32 * quarter:32 * quarter + 32] = nibble | (((high >> (2 * quarter)) & 3) << 4)
    data = (q.reshape(n, supers * 16, 16) + 96).astype(np.uint8)  # (q - 32) = (q + 96) - 128
    return Blocks(data, (d[..., None] * sc).reshape(n, supers * 16), None, 8, 16)
