"""Pooled embeddings and head scores from one text's unpadded output rows (numpy, in the server)."""

import numpy as np

from server.core.errors import InvalidArgument


def pool(hidden: np.ndarray, mode: str) -> np.ndarray:
    """`hidden`: [tokens, width] of one text, its padding already cut away by the batcher."""
    hidden = hidden.astype(np.float32, copy=False)
    if mode == "mean":
        return hidden.mean(axis=0)
    if mode == "cls":
        return hidden[0].copy()
    if mode == "max":
        return hidden.max(axis=0)
    return hidden[-1].copy()  # last token (decoder embedders)


def shaped(vector: np.ndarray, normalize: bool, dimensions: int | None) -> np.ndarray:
    """Cut to the first `dimensions` (Matryoshka models) and then L2-normalize, as asked."""
    if dimensions is not None:
        if not 0 < dimensions <= vector.shape[-1]:
            raise InvalidArgument(
                f"dimensions must be between 1 and {vector.shape[-1]} (this model's width), got {dimensions}"
            )
        vector = vector[:dimensions]
    if normalize:
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
    return vector


def scores(logits: np.ndarray, raw: bool) -> np.ndarray:
    """A head's logits as scores: sigmoid for one label (cross-encoders), softmax over several."""
    logits = logits.astype(np.float32, copy=False).reshape(-1)
    if raw:
        return logits
    if logits.size == 1:
        return 1 / (1 + np.exp(-logits))
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()
