"""GGUF tensors as ONNX Runtime's `MatMulNBits` weights, kept in the blocks llama.cpp quantized them in.

`MatMulNBits` computes (q - zero_point) x scale per block along K. Its fast kernels (activations in int8,
as llama.cpp's) take the default zero point 2^(bits - 1) only; a float zero point falls back to a far
slower kernel. So blocks with a minimum keep the default zero point and carry a per-block offset:
q x d + m = (q - 8) x d + (8d + m), the offsets' share computed apart, exactly, as the sums of each block
of the input times the offsets (a matrix 1/32 the size). Exact forms:
- Q4_0 (blocks of 32: (q - 8) x d): 4 bits, scale d.
- Q4_1 (blocks of 32: q x d + m): 4 bits, scale d, offset 8d + m.
- Q4_K (super-blocks of 256: eight sub-blocks of 32, each q x d·sc - dmin·m): 4 bits, blocks of 32.
- Q8_0 (blocks of 32: q x d, q signed): 8 bits, q + 128 with the default zero point 128.
- Q6_K (sixteen blocks of 16: (q - 32) x d·sc): 8 bits, blocks of 16, q + 96.
- Q5_0, Q5_1, Q5_K (5-bit q, as Q4_0, Q4_1, Q4_K with a fifth bit): 8 bits, q + 112, offsets as above.
Every other quantized type (Q2_K, Q3_K, IQ*) is dequantized with the `gguf` package and kept at 8 bits in
symmetric blocks of 32 (`nearest`: the nearest form the operator runs; its rounding is finer than the
source's 3 bits or fewer). F32, F16 and BF16 matrices are kept as floats."""

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from server.generation.gguf_file import GgufError

Q = GGMLQuantizationType
FLOATS = (Q.F32, Q.F16, Q.BF16)


@dataclass
class Blocks:
    """A [N, K] matrix as MatMulNBits takes it, `data` [N, K / block, block x bits / 8] uint8 and
    `scales` [N, K / block] float32, plus `offsets` [N, K / block] float32 (or None): each value is
    (q - 2^(bits - 1)) x scale + offset."""

    data: np.ndarray
    scales: np.ndarray
    offsets: np.ndarray | None
    bits: int
    block: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape[0], self.data.shape[1] * self.block

    def dequantized(self) -> np.ndarray:
        q = _unpacked(self.data) if self.bits == 4 else self.data.astype(np.float32)
        values = (q - 2 ** (self.bits - 1)) * self.scales[..., None]
        if self.offsets is not None:
            values += self.offsets[..., None]
        return values.reshape(self.shape).astype(np.float32)


def blocks(kind: GGMLQuantizationType, raw: np.ndarray) -> Blocks | np.ndarray:
    """A matrix tensor's data as the reader gives it ([N, bytes of a row] for quantized types, [N, K]
    floats otherwise) in MatMulNBits form, or float32 [N, K] for float tensors."""
    if kind in FLOATS:
        return float_matrix(kind, raw)
    if kind not in EXACT:
        return nearest(_dequantized(kind, raw))
    _, size = GGML_QUANT_SIZES[kind]
    return EXACT[kind](raw.reshape(raw.shape[0], -1, size))  # [N, super-blocks, bytes]


def float_matrix(kind: GGMLQuantizationType, raw: np.ndarray) -> np.ndarray:
    """Any tensor as float32 (quantized ones dequantized by the `gguf` package)."""
    if kind == Q.F32:
        return np.asarray(raw, np.float32)
    return _dequantized(kind, raw)


def _dequantized(kind: GGMLQuantizationType, raw: np.ndarray) -> np.ndarray:
    try:
        return quants.dequantize(raw, kind).astype(np.float32)
    except NotImplementedError:
        exact = ", ".join(k.name for k in EXACT)
        raise GgufError(f"tensor type {kind.name} is not supported: the gguf package cannot read its blocks; "
                        f"supported: F32, F16, BF16, {exact} (kept as they are) and the other types the "
                        f"gguf package dequantizes (kept at 8 bits)") from None


def minimum_blocks(matrix: np.ndarray, block: int = 32) -> Blocks:
    """[N, K] float weights in 4-bit blocks as llama.cpp's Q4_1 makes them: each block's range in 15
    steps up from its minimum (q x d + m), the minimum kept as an offset."""
    n, k = matrix.shape
    grouped = matrix.reshape(n, k // block, block).astype(np.float32)
    low, high = grouped.min(axis=-1), grouped.max(axis=-1)
    scale = (high - low) / 15
    steps = np.rint((grouped - low[..., None]) / np.where(scale == 0, 1, scale)[..., None])
    return _with_minimum(np.clip(steps, 0, 15).astype(np.uint8), scale, low)


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


def nibbles(matrix: Blocks) -> tuple[Blocks, Blocks]:
    """8-bit blocks as two 4-bit ones whose products add up to theirs: each byte q is 16 x high + low,
    so (q - 128) x s = (high - 8) x 16s + (low - 8) x s + 8s, the last term an offset of the low half."""
    high = Blocks(_packed(matrix.data >> 4), matrix.scales * 16, None, 4, matrix.block)
    offsets = 8 * matrix.scales + (0 if matrix.offsets is None else matrix.offsets)
    return high, Blocks(_packed(matrix.data & 0xF), matrix.scales, offsets, 4, matrix.block)


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
    return _with_minimum(_nibbles(rows[..., 4:]), _f16(rows, 0), _f16(rows, 2))


def _with_minimum(q: np.ndarray, scale: np.ndarray, low: np.ndarray, bits: int = 4) -> Blocks:
    """Blocks [N, blocks, 32] of q x scale + low (q of `bits`, 4 or 5): (Q - zero) x scale +
    (middle x scale + low), with Q the operator's form of q (5-bit values in 8 bits, centred)."""
    if bits == 4:
        return Blocks(_packed(q), scale, (8 * scale + low).astype(np.float32), 4, q.shape[-1])
    return Blocks((q + 112).astype(np.uint8), scale, (16 * scale + low).astype(np.float32), 8, q.shape[-1])


def _fifth_bits(high: np.ndarray, count: int) -> np.ndarray:
    """Bit i of the little-endian bytes `high` [..., count / 8] for i < count, as [..., count]."""
    return np.unpackbits(high, axis=-1, bitorder="little")[..., :count]


def _q5_0(rows: np.ndarray) -> Blocks:
    q = _nibbles(rows[..., 6:22]) | (_fifth_bits(rows[..., 2:6], 32) << 4)
    return Blocks((q.astype(np.int16) + 112).astype(np.uint8), _f16(rows, 0), None, 8, 32)


def _q5_1(rows: np.ndarray) -> Blocks:
    q = _nibbles(rows[..., 8:24]) | (_fifth_bits(rows[..., 4:8], 32) << 4)
    return _with_minimum(q, _f16(rows, 0), _f16(rows, 2), bits=5)


def _q5_k(rows: np.ndarray) -> Blocks:
    # sub-block s takes bit s of byte l as the fifth bit of its value l
    high = _fifth_bits(rows[..., 16:48], 256).reshape(*rows.shape[:2], 32, 8).swapaxes(-1, -2)
    low = _nibbles(rows[..., 48:176].reshape(*rows.shape[:2], 4, 32)).reshape(*rows.shape[:2], 8, 32)
    return _k_minimum(rows, low | (high << 4), bits=5)


def _q4_k(rows: np.ndarray) -> Blocks:
    qs = rows[..., 16:144].reshape(*rows.shape[:2], 4, 32)  # four runs of 64 values
    return _k_minimum(rows, _nibbles(qs), bits=4)


def _k_minimum(rows: np.ndarray, q: np.ndarray, bits: int) -> Blocks:
    """Q4_K's and Q5_K's values `q` in sub-blocks of 32, each q x d·sc - dmin·m: the super-block's
    float16 d and dmin, then eight 6-bit scales and minimums packed in 12 bytes."""
    n = rows.shape[0]
    sc, m = _k_scales(rows[..., 4:16])
    scale = (_f16(rows, 0)[..., None] * sc).reshape(n, -1)
    low = -(_f16(rows, 2)[..., None] * m).reshape(n, -1)
    return _with_minimum(q.reshape(n, -1, 32), scale, low, bits)


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eight 6-bit scales and minimums of 12 bytes (llama.cpp's get_scale_min_k4)."""
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


# the types kept exactly, each with the reader of its super-blocks [N, super-blocks, bytes]
EXACT = {Q.Q4_0: _q4_0, Q.Q4_1: _q4_1, Q.Q4_K: _q4_k, Q.Q5_0: _q5_0, Q.Q5_1: _q5_1, Q.Q5_K: _q5_k,
         Q.Q8_0: _q8_0, Q.Q6_K: _q6_k}
