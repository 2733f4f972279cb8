"""Merging requests into one batch and splitting the outputs back, padding a variable axis.

Padding is opt-in per model through config `parameters` (the BERT exporter writes them):
  pad_inputs:  "input_ids:0,attention_mask:0"  inputs padded on axis 1, with their pad values
  pad_outputs: "last_hidden_state"             outputs whose axis 1 follows the padded inputs
  pad_buckets: "16,32,64,128"                  lengths that group requests (default: powers of 2)
"""

import bisect
from dataclasses import dataclass

import numpy as np

from server.core.errors import InvalidArgument

AXIS = 1


@dataclass(frozen=True)
class Padding:
    values: dict[str, float]
    outputs: frozenset[str]
    buckets: tuple[int, ...] = ()

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> "Padding | None":
        spec = parameters.get("pad_inputs", "").strip()
        if not spec:
            return None
        values = {}
        for item in spec.split(","):
            name, _, value = item.strip().partition(":")
            values[name.strip()] = float(value or 0)
        outputs = frozenset(n.strip() for n in parameters.get("pad_outputs", "").split(",") if n.strip())
        buckets = tuple(sorted(int(b) for b in parameters.get("pad_buckets", "").split(",") if b.strip()))
        return cls(values, outputs, buckets)

    def bucket(self, length: int) -> int:
        if self.buckets:
            index = bisect.bisect_left(self.buckets, length)
            return self.buckets[index] if index < len(self.buckets) else length
        return 1 << max(length - 1, 0).bit_length()


def rows(feeds: dict[str, np.ndarray]) -> int:
    return next(iter(feeds.values())).shape[0] if feeds else 1


def padded_length(feeds: dict[str, np.ndarray], padding: Padding | None) -> int | None:
    """The request's own length on the padded axis; its padded inputs must agree on it."""
    if padding is None:
        return None
    lengths = {name: feeds[name].shape[AXIS] for name in padding.values if name in feeds}
    if len(set(lengths.values())) > 1:
        raise InvalidArgument(f"inputs {', '.join(lengths)} must have the same length, got {lengths}")
    return next(iter(lengths.values()), None)


def batch_key(feeds: dict[str, np.ndarray], padding: Padding | None, length: int | None) -> tuple:
    """Requests with equal keys can run in one batch."""
    key = []
    for name, array in feeds.items():
        if padding is not None and name in padding.values:
            key.append((name, padding.bucket(length), array.shape[AXIS + 1 :]))
        else:
            key.append((name, array.shape[1:]))
    return tuple(key)


def collate(items: list[dict[str, np.ndarray]], padding: Padding | None) -> dict[str, np.ndarray]:
    if len(items) == 1:
        return items[0]
    merged = {}
    for name in items[0]:
        arrays = [item[name] for item in items]
        if padding is not None and name in padding.values:
            arrays = _pad(arrays, padding.values[name])
        merged[name] = np.concatenate(arrays, axis=0)
    return merged


def _pad(arrays: list[np.ndarray], value: float) -> list[np.ndarray]:
    length = max(array.shape[AXIS] for array in arrays)
    padded = []
    for array in arrays:
        missing = length - array.shape[AXIS]
        if missing:
            widths = [(0, 0)] * array.ndim
            widths[AXIS] = (0, missing)
            array = np.pad(array, widths, constant_values=value)
        padded.append(array)
    return padded


def split(
    outputs: dict[str, np.ndarray],
    sizes: list[int],
    lengths: list[int | None],
    padding: Padding | None,
) -> list[dict[str, np.ndarray]]:
    """Each request's rows of every output, cut back to its own length where padded."""
    if len(sizes) == 1:
        return [outputs]
    parts = [{} for _ in sizes]
    for name, array in outputs.items():
        cut = padding is not None and name in padding.outputs
        start = 0
        for part, size, length in zip(parts, sizes, lengths):
            piece = array[start : start + size]
            part[name] = piece[:, :length] if cut and length is not None else piece
            start += size
    return parts
