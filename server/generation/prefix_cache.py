"""Automatic prefix caching, as vLLM has it: the keys and values of prompts are kept in blocks of
`BLOCK` tokens, each keyed by all the tokens up to its end, in a bounded LRU cache; a prompt that
starts with cached blocks prefills only the rest. A block's keys and values depend only on the tokens
before it, so reusing them changes no output."""

import hashlib
from collections import OrderedDict

import numpy as np

from server.core.stats import GenerationStats

BLOCK = 16


class PrefixCache:
    def __init__(self, token_budget: int, stats: GenerationStats):
        self.block_budget = token_budget // BLOCK
        self.stats = stats  # prefix_hits, prefix_misses, prefix_tokens_reused, prefix_cache_bytes
        self._blocks: OrderedDict[bytes, list[np.ndarray]] = OrderedDict()

    def lookup(self, prompt: list[int]) -> tuple[int, list[np.ndarray] | None]:
        """The longest cached prefix that leaves at least one token to prefill (its logits choose the
        first new token): its length and its past tensors ([heads, length, head_dim] each), or 0, None."""
        found = []
        for key in _block_keys(prompt[:len(prompt) - 1]):
            block = self._blocks.get(key)
            if block is None:
                break
            self._blocks.move_to_end(key)
            found.append(block)
        if not found:
            self.stats.prefix_misses += 1
            return 0, None
        self.stats.prefix_hits += 1
        self.stats.prefix_tokens_reused += BLOCK * len(found)
        return BLOCK * len(found), [np.concatenate(parts, axis=1) for parts in zip(*found)]

    def insert(self, prompt: list[int], past: list[np.ndarray]) -> None:
        """Keeps the prompt's whole blocks; `past`: [heads, len(prompt), head_dim] per graph past input."""
        for index, key in enumerate(_block_keys(prompt)):
            if key in self._blocks:
                self._blocks.move_to_end(key)
                continue
            block = [np.ascontiguousarray(p[:, index * BLOCK:(index + 1) * BLOCK]) for p in past]
            self._blocks[key] = block
            self.stats.prefix_cache_bytes += sum(b.nbytes for b in block)
            while len(self._blocks) > self.block_budget:
                _, evicted = self._blocks.popitem(last=False)
                self.stats.prefix_cache_bytes -= sum(b.nbytes for b in evicted)


def _block_keys(tokens: list[int]):
    """One key per whole block: a digest of the block's tokens chained to the key of the block before,
    so a key stands for every token up to its block's end."""
    key = b""
    for end in range(BLOCK, len(tokens) + 1, BLOCK):
        key = hashlib.sha256(key + np.asarray(tokens[end - BLOCK:end], np.int64).tobytes()).digest()
        yield key
