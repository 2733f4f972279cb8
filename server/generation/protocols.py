"""The two interfaces the generation engine runs on, whatever the graph's layout.

A `TokenDecoder` runs one decoder graph: prompts in (prefill), one token per running row (decode), whole
prompts scored. A `KVCache` holds the running rows' keys and values between steps; the engine keeps its
rows aligned with the sequences it runs, dropping finished rows (`filter`) and adding prefilled ones
(`concatenate`). Layouts: `decoder.Decoder` with `kv_cache.KVBatch` (left-padded, on the host) or
`device_cache.DeviceKVBatch` (on the graph's device), `gqa.GqaDecoder` with `gqa.RightPaddedKV`."""

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class KVCache(Protocol):
    @property
    def rows(self) -> int:
        """The sequences held, in the engine's order."""

    @property
    def length(self) -> int:
        """The columns the longest row uses."""

    def attention_mask(self, new: int) -> np.ndarray:
        """The mask the graph reads for `new` more tokens per row."""

    def filter(self, keep: list[int]) -> "KVCache":
        """Only the rows in `keep` (increasing)."""

    @staticmethod
    def concatenate(batches: list["KVCache"]) -> "KVCache":
        """The rows of every batch, in order; the batches may be consumed (their buffers reused or
        released), so only the result is used after."""


@runtime_checkable
class TokenDecoder(Protocol):
    vocab_size: int | None
    scores_prompts: bool  # `score` works: the graph returns every position's logits
    kernels: object | None  # where the cache lives on the graph's device: the kernels that move it
    # it has `check(tokens, cache, starting)`: a cache of one row, its last token and drafted ones after
    # it in one run, each position's next-token logits (the cache's `rewind` drops rejected drafts)
    checks_drafts: bool

    def prefill(self, prompts: list[list[int]], cached: list[tuple[int, list | None]] | None = None,
                reach: int = 0, beside: KVCache | None = None) -> tuple[np.ndarray, KVCache]:
        """Each prompt's next-token logits and the new rows' cache; `cached`: per prompt, the leading
        tokens whose keys and values a prefix cache holds; `reach`: the most positions a row will hold;
        `beside`: the running rows' cache, which the new rows will join (a layout may write them into its
        free room, so that joining copies nothing)."""

    def decode(self, last_tokens: list[int], cache: KVCache, starting=None) -> np.ndarray:
        """One token per row: the next-token logits, the cache grown by a column. `starting` is called
        as the graph starts to run."""

    def score(self, prompt: list[int]) -> np.ndarray:
        """The logits that predicted each prompt token after the first."""

    @staticmethod
    def row_past(cache: KVCache, row: int) -> list[np.ndarray]:
        """One row's keys and values of its tokens, per past input (for the prefix cache)."""
