"""Decode steps of the same rows back to back on a worker thread, handed to the event loop as they come.

A round trip between the threads at every step would cost more than the Python around a step, so the
worker keeps decoding while the loop delivers the previous step's tokens. The run ends after a step in
which a row may end (its token is an end, or it reached its length), or once the loop asks for its turn
(`yield_turn`: a sequence arrived, was aborted, or a stop string ended one).

A row that runs alone may check drafted tokens (`prompt_lookup`): its last token and the draft go in one
run, and each position's token is sampled as its own step would sample it, given the tokens before it;
the draft holds while they agree. One run then yields several steps, handed over in order."""

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from server.generation.prompt_lookup import PromptLookup
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
    elapsed_ns: int  # of the run that computed it; 0 for the steps after the first of one run
    drafted: int = 0  # tokens the run checked for the row (prompt lookup), on its first step
    accepted: int = 0  # of which held


class DecodeRun:
    def __init__(self, decoder: TokenDecoder, cache: KVCache, rows: list[DecodingRow],
                 generated: list[list[int]], deliver: Callable[[DecodedStep], None],
                 lookup: PromptLookup | None = None):
        """`generated`: each row's tokens so far (copied: the loop appends to its own as it delivers).
        `deliver` is called on the event loop with each step, in order. `lookup`: the drafts of the one
        row (its decoder `checks_drafts`)."""
        self.decoder, self.cache, self.rows, self.lookup = decoder, cache, rows, lookup
        self.history = [list(tokens) for tokens in generated]
        self.deliver = deliver
        self.loop = asyncio.get_running_loop()
        self.scored = any(row.logprobs for row in rows)
        self._turn = threading.Event()

    def yield_turn(self) -> None:
        """Asks the worker to return after the step it is running (called on the event loop)."""
        self._turn.set()

    def __call__(self, _session) -> None:
        """The steps, on the worker thread: each run's steps are handed over as the next run starts."""
        steps, masks = [], StepMasks(self.rows)
        while True:
            draft = self.lookup.draft(self.history[0]) if self.lookup is not None else []
            steps = self._check(draft, steps) if draft else [self._step(masks, steps)]
            if self._turn.is_set() or any(row.may_end(tokens[-1], len(tokens))
                                          for row, tokens in zip(self.rows, self.history)):
                self._hand_over(steps)
                return

    def _step(self, masks: StepMasks, previous: list[DecodedStep]) -> DecodedStep:
        """One token per row."""
        started = time.perf_counter_ns()
        masks.compute()  # the constrained rows' masks for this step, all at once
        logits = self.decoder.decode([tokens[-1] for tokens in self.history], self.cache,
                                     self._starting(previous))
        elapsed = time.perf_counter_ns() - started
        logits = masks.apply(logits)
        chosen = [row.sample(row_logits, tokens, masked=True)
                  for row, row_logits, tokens in zip(self.rows, logits, self.history)]
        for tokens, token in zip(self.history, chosen):
            tokens.append(token)
        return DecodedStep(chosen, logits.copy() if self.scored else None, elapsed)  # `logits` is reused

    def _check(self, draft: list[int], previous: list[DecodedStep]) -> list[DecodedStep]:
        """The one row's last token and `draft` in one run: a step per position while the draft holds,
        then the token sampled in its place (or after it, where all of it held). The cache keeps the
        keys and values of the tokens before the last step's."""
        row, history = self.rows[0], self.history[0]
        started = time.perf_counter_ns()
        logits = self.decoder.check([history[-1], *draft], self.cache, self._starting(previous))
        elapsed = time.perf_counter_ns() - started
        steps, accepted = [], 0
        for position, position_logits in enumerate(logits):
            token = row.sample(position_logits, history)
            history.append(token)
            scored = position_logits[None].copy() if self.scored else None
            steps.append(DecodedStep([token], scored, 0 if position else elapsed))
            held = position < len(draft) and token == draft[position]
            accepted += held
            if not held or row.may_end(token, len(history)):
                break
        self.cache.rewind(len(draft) - len(steps) + 1)
        steps[0] = replace(steps[0], drafted=len(draft), accepted=accepted)
        return steps

    def _starting(self, previous: list[DecodedStep]) -> Callable[[], None] | None:
        """What the decoder calls as the graph starts: the previous run's steps handed over meanwhile."""
        return (lambda: self._hand_over(previous)) if previous else None

    def _hand_over(self, steps: list[DecodedStep]) -> None:
        for step in steps:
            self.loop.call_soon_threadsafe(self.deliver, step)
