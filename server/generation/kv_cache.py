"""The running sequences' past keys and values, as one left-padded batch."""

from dataclasses import dataclass

import numpy as np


@dataclass
class KVBatch:
    """`past[i]`: [rows, heads, length, head_dim] for each past tensor of the graph, in input order;
    `mask`: [rows, length], 1 where a row has a real token, 0 on its left padding."""

    past: list[np.ndarray]
    mask: np.ndarray

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    def filter(self, keep: list[int]) -> "KVBatch":
        """Only the rows in `keep`, with the padding columns no kept row needs removed."""
        mask = self.mask[keep]
        used = np.flatnonzero(mask.any(axis=0))
        start = int(used[0]) if used.size else self.length
        return KVBatch([p[keep][:, :, start:] for p in self.past], mask[:, start:])

    @staticmethod
    def concatenate(batches: list["KVBatch"]) -> "KVBatch":
        """Rows of all batches, left-padded to the longest."""
        batches = [b for b in batches if b.rows]
        if len(batches) == 1:
            return batches[0]
        length = max(b.length for b in batches)
        past = [
            np.concatenate([_left_pad(b.past[i], length, axis=2) for b in batches])
            for i in range(len(batches[0].past))
        ]
        return KVBatch(past, np.concatenate([_left_pad(b.mask, length, axis=1) for b in batches]))


def _left_pad(array: np.ndarray, length: int, axis: int) -> np.ndarray:
    missing = length - array.shape[axis]
    if missing == 0:
        return array
    widths = [(0, 0)] * array.ndim
    widths[axis] = (missing, 0)
    return np.pad(array, widths)
