"""The running sequences' past keys and values, as one left-padded batch in buffers with room to grow."""

from dataclasses import dataclass

import numpy as np

GROWTH = 32  # columns a full buffer grows by: a copy of the cache every GROWTH steps, not every step


@dataclass
class KVBatch:
    """`past[i]`: [rows, heads, capacity, head_dim] for each past tensor of the graph, in input order;
    `mask`: [rows, length], 1 where a row has a real token, 0 on its left padding. Columns from `length`
    to `capacity` are free room, masked out, so the graph can read the buffers as they are."""

    past: list[np.ndarray]
    mask: np.ndarray

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    @property
    def capacity(self) -> int:
        return self.past[0].shape[2]

    def attention_mask(self, new: int) -> np.ndarray:
        """[rows, capacity + new]: the past (its free room masked out), then `new` real tokens."""
        mask = np.zeros((self.rows, self.capacity + new), np.int64)
        mask[:, :self.length] = self.mask
        mask[:, self.capacity:] = 1
        return mask

    def append(self, present: list[np.ndarray], count: int) -> None:
        """Writes the keys and values of `count` new tokens per row, the last columns of the graph's
        `present`, after the past, growing the buffers when they are full."""
        new = [p[:, :, p.shape[2] - count:] for p in present]
        end = self.length + count
        if end > self.capacity:
            room = -(-end // GROWTH) * GROWTH
            # one at a time, so that each old buffer's memory, freed, serves the next new one: made all at
            # once, the new buffers took memory never touched before, a page fault for each of its pages
            for index, buffer in enumerate(self.past):
                self.past[index] = _with_capacity(buffer, self.length, room)
        for buffer, values in zip(self.past, new):
            buffer[:, :, self.length:end] = values
        self.mask = with_new_tokens(self.mask, count)

    def rewind(self, tokens: int) -> None:
        """Every row's last `tokens` columns dropped (drafts that did not hold): free room again, masked
        out until written over."""
        if tokens:
            self.mask = self.mask[:, :-tokens]

    def filter(self, keep: list[int]) -> "KVBatch":
        """Only the rows in `keep`, with the padding columns no kept row needs removed."""
        mask, start = kept_rows(self.mask, keep)
        return KVBatch([p[keep, :, start:] for p in self.past], mask)

    @staticmethod
    def concatenate(batches: list["KVBatch"]) -> "KVBatch":
        """Rows of all batches, left-padded to the longest. The batches are consumed: each of their
        buffers is released once copied, so that its memory serves the next joined one."""
        batches = [b for b in batches if b.rows]
        if len(batches) == 1:
            return batches[0]
        length, rows = max(b.length for b in batches), sum(b.rows for b in batches)
        past = []
        for index, first in enumerate(batches[0].past):
            _, heads, _, dim = first.shape
            joined = np.zeros((rows, heads, length, dim), first.dtype)
            start = 0
            for batch in batches:
                rows_of_batch = slice(start, start + batch.rows)
                joined[rows_of_batch, :, length - batch.length:] = batch.past[index][:, :, :batch.length]
                batch.past[index] = None
                start += batch.rows
            past.append(joined)
        masks = [left_padded(b.mask, length) for b in batches]
        return KVBatch(past, np.concatenate(masks))


def with_new_tokens(mask: np.ndarray, count: int) -> np.ndarray:
    """The mask with `count` real tokens after every row."""
    return np.concatenate([mask, np.ones((mask.shape[0], count), mask.dtype)], axis=1)


def left_padded(mask: np.ndarray, length: int) -> np.ndarray:
    """The mask padded on the left with masked-out columns to `length`."""
    return np.pad(mask, [(0, 0), (length - mask.shape[1], 0)])


def kept_rows(mask: np.ndarray, keep: list[int]) -> tuple[np.ndarray, int]:
    """The mask of the rows in `keep` from the first column any of them uses, and that column."""
    kept = mask[keep]
    used = np.flatnonzero(kept.any(axis=0))
    start = int(used[0]) if used.size else mask.shape[1]
    return kept[:, start:], start


def _with_capacity(buffer: np.ndarray, length: int, capacity: int) -> np.ndarray:
    """A new buffer of `capacity` columns holding the first `length` columns of `buffer`."""
    rows, heads, _, dim = buffer.shape
    grown = np.zeros((rows, heads, capacity, dim), buffer.dtype)
    grown[:, :, :length] = buffer[:, :, :length]
    return grown
