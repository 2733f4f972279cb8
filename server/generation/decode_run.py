"""Decode steps of the same rows back to back on a worker thread, handed to the event loop as they come.

A round trip between the threads at every step would cost more than the Python around a step, so the
worker keeps decoding while the loop delivers the previous step's tokens. The run ends after a step in
which a row may end (its token is an end, or it reached its length), or once the loop asks for its turn
(`yield_turn`: a sequence arrived, was aborted, or a stop string ended one)."""

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from server.generation.protocols import KVCache, TokenDecoder
from server.generation.structured import StepMasks


class DecodingRow(Protocol):
    """A running sequence as the run reads it: how it samples, and whether a token would end it."""

    logprobs: bool

    def sample(self, logits: np.ndarray, generated: list[int], masked: bool = False) -> int: ...

    def may_end(self, token: int, generated: int) -> bool: ...


@dataclass(frozen=True)
class DecodedStep:
    tokens: list[int]  # one per row
    logits: np.ndarray | None  # the step's logits, only where a row asked for log probabilities
    elapsed_ns: int


class DecodeRun:
    def __init__(self, decoder: TokenDecoder, cache: KVCache, rows: list[DecodingRow],
                 generated: list[list[int]], deliver: Callable[[DecodedStep], None]):
        """`generated`: each row's tokens so far (copied: the loop appends to its own as it delivers).
        `deliver` is called on the event loop with each step, in order."""
        self.decoder, self.cache, self.rows = decoder, cache, rows
        self.history = [list(tokens) for tokens in generated]
        self.deliver = deliver
        self.loop = asyncio.get_running_loop()
        self.scored = any(row.logprobs for row in rows)
        self._turn = threading.Event()

    def yield_turn(self) -> None:
        """Asks the worker to return after the step it is running (called on the event loop)."""
        self._turn.set()

    def __call__(self, _session) -> None:
        """The steps, on the worker thread: each step's tokens are handed over as the next one starts."""
        last, step, masks = [tokens[-1] for tokens in self.history], None, StepMasks(self.rows)
        while True:
            started = time.perf_counter_ns()
            masks.compute()  # the constrained rows' masks for this step, all at once
            logits = self.decoder.decode(last, self.cache, self._starting(step))
            elapsed = time.perf_counter_ns() - started
            logits = masks.apply(logits)
            last = [row.sample(row_logits, tokens, masked=True)
                    for row, row_logits, tokens in zip(self.rows, logits, self.history)]
            step = DecodedStep(last, logits.copy() if self.scored else None, elapsed)  # `logits` is reused
            for tokens, token in zip(self.history, last):
                tokens.append(token)
            may_end = any(row.may_end(token, len(tokens))
                          for row, token, tokens in zip(self.rows, last, self.history))
            if may_end or self._turn.is_set():
                self._hand_over(step)
                return

    def _starting(self, previous: DecodedStep | None) -> Callable[[], None] | None:
        """What the decoder calls as the graph starts: the previous step handed over meanwhile."""
        return None if previous is None else lambda: self._hand_over(previous)

    def _hand_over(self, step: DecodedStep) -> None:
        self.loop.call_soon_threadsafe(self.deliver, step)
