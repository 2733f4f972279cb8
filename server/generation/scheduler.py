"""Continuous batching, decided without a model: which waiting sequences start (prefill) and which
running ones take their next step (decode) at each iteration.

Every iteration decodes all running sequences, and admits waiting ones first come first served while
there is room (running sequences), prefill budget (prompt tokens per iteration) and cache budget
(tokens the admitted sequences may reach). Prefill is bounded, so running sequences keep their pace
while new ones join; a sequence that finishes leaves at once, making room at the next iteration."""

from collections import deque
from dataclasses import dataclass, field

from server.core.errors import Unavailable
from server.core.types import FinishReason


@dataclass
class Sequence:
    id: int
    prompt: list[int]
    max_tokens: int
    generated: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None

    @property
    def budget(self) -> int:
        """The most cache positions this sequence can hold."""
        return len(self.prompt) + self.max_tokens

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class SchedulerLimits:
    max_running: int = 16
    max_waiting: int = 64
    max_prefill_tokens: int = 2048
    max_cache_tokens: int = 16 * 1024


@dataclass
class Plan:
    prefill: list[Sequence]
    decode: list[Sequence]

    @property
    def empty(self) -> bool:
        return not self.prefill and not self.decode


class Scheduler:
    def __init__(self, limits: SchedulerLimits):
        self.limits = limits
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, sequence: Sequence) -> None:
        if len(self.waiting) >= self.limits.max_waiting:
            raise Unavailable(
                f"too many sequences waiting ({self.limits.max_waiting}, with {len(self.running)} "
                "running); retry later"
            )
        if sequence.budget > self.limits.max_cache_tokens:
            raise Unavailable(
                f"the sequence needs {sequence.budget} cache tokens but the cache holds "
                f"{self.limits.max_cache_tokens}"
            )
        self.waiting.append(sequence)

    def schedule(self) -> Plan:
        decode = [s for s in self.running if not s.finished]
        self.running = decode.copy()
        prefill, tokens = [], 0
        cache = sum(s.budget for s in self.running)
        while self.waiting and len(self.running) < self.limits.max_running:
            candidate = self.waiting[0]
            too_long = prefill and tokens + len(candidate.prompt) > self.limits.max_prefill_tokens
            if too_long or cache + candidate.budget > self.limits.max_cache_tokens:
                break
            self.waiting.popleft()
            prefill.append(candidate)
            self.running.append(candidate)
            tokens += len(candidate.prompt)
            cache += candidate.budget
        return Plan(prefill, decode)

    def finish(self, sequence: Sequence, reason: FinishReason) -> None:
        """Marks it finished; a running one leaves the batch at the next `schedule`."""
        sequence.finish_reason = sequence.finish_reason or reason
        if sequence in self.waiting:
            self.waiting.remove(sequence)

    def abort_all(self) -> list[Sequence]:
        every = [*self.running, *self.waiting]
        for sequence in every:
            self.finish(sequence, FinishReason.ABORT)
        self.running = []
        return every

    @property
    def has_work(self) -> bool:
        return bool(self.waiting) or any(not s.finished for s in self.running)
