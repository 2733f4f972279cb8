"""The scales of an int8 key/value cache. ONNX Runtime's GroupQueryAttention can keep its cache in int8 with
one fixed scale per channel of each layer's keys (after the rotary positions) and values. Each scale is
the largest magnitude that channel reaches over real text run through the float graph, with headroom for
text that reaches further (beyond it a value is clamped, as in any static int8 cache)."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from server.generation.gqa import GqaDecoder
from server.text.corpus import paragraphs

CHUNK_TOKENS = 512
CHUNKS = 4
HEADROOM = 1.25
INT8_LARGEST = 127


def calibration_ids(tokenizer_file: Path, context: int) -> list[list[int]]:
    """CHUNKS runs of CHUNK_TOKENS tokens (fewer where the context is shorter) from the corpus' last
    paragraphs (its first ones are where the benchmarks measure perplexity)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    ids = tokenizer.encode("\n\n".join(reversed(paragraphs())), add_special_tokens=False).ids
    length = min(CHUNK_TOKENS, context)
    return [ids[i * length:(i + 1) * length] for i in range(CHUNKS)]


def kv_cache_scales(graph: onnx.ModelProto, chunks: list[list[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer, the (key, value) scales [kv_heads, 1, head_dim] of a float-cache `graph` over `chunks`."""
    decoder = GqaDecoder(ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]),
                         slots=1)
    peaks = None
    for chunk in chunks:
        _, cache = decoder.prefill([chunk], reach=len(chunk))
        seen = [np.abs(buffer[0, :, :len(chunk)]).max(axis=1, keepdims=True) for buffer in cache.past]
        peaks = seen if peaks is None else [np.maximum(a, b) for a, b in zip(peaks, seen)]
    scales = [np.maximum(peak * HEADROOM / INT8_LARGEST, np.finfo(np.float32).tiny).astype(np.float32)
              for peak in peaks]
    return list(zip(scales[0::2], scales[1::2]))
