"""Per model version statistics: Triton's statistics extension and every metric read the same numbers."""

import bisect
import time
from dataclasses import dataclass, field

LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


@dataclass
class Histogram:
    """Cumulative-bucket histogram in Prometheus' shape; `counts[i]` counts values <= bounds[i]."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: int = 0
    sum: float = 0.0

    def __post_init__(self):
        self.counts = self.counts or [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        running, buckets = 0, []
        for bound, count in zip(self.bounds, self.counts):
            running += count
            buckets.append((bound, running))
        return buckets


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class GenerationStats:
    """A generation model's token-level numbers; gauges are refreshed after every engine step."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    steps: int = 0
    running: int = 0
    waiting: int = 0
    cache_tokens: int = 0
    context_tokens: int = 0  # the running sequences' prompt and generated tokens
    token_capacity: int = 0  # the most context tokens the engine runs at once (set at start)
    block_size: int = 16  # the prefix cache's block, the unit the inference gateway hashes prompts by
    prefix_hits: int = 0  # prompts that reused cached blocks of an earlier prompt's keys and values
    prefix_misses: int = 0
    prefix_tokens_reused: int = 0
    prefix_cache_bytes: int = 0
    draft_tokens: int = 0  # tokens drafted by prompt lookup and checked
    accepted_draft_tokens: int = 0  # of which the model's own choice agreed
    finished: dict[str, int] = field(default_factory=dict)  # by finish reason
    time_to_first_token: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS))
    inter_token: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS))
    request_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS))


@dataclass
class SequenceStats:
    """A stateful model's sequences (the live and waiting gauges are read from its scheduler)."""

    started: int = 0
    ended: int = 0
    idle_released: int = 0
    requests: int = 0


@dataclass
class TextStats:
    """An encoder's server-side tokenization."""

    texts: int = 0
    tokens: int = 0
    truncated: int = 0
    tokenize: Duration = field(default_factory=Duration)

    def record(self, texts: int, tokens: int, truncated: int, ns: int) -> None:
        self.texts += texts
        self.tokens += tokens
        self.truncated += truncated
        self.tokenize.add(ns)


@dataclass
class ModelStats:
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)  # Triton's: lookup and reading the outputs
    cache_miss: Duration = field(default_factory=Duration)  # lookup and keeping the outputs
    batches: dict[int, BatchStats] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))
    requests_by_protocol: dict[tuple[str, str], int] = field(default_factory=dict)  # (protocol, outcome)
    request_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS))
    queue_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS))
    compute_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS))
    batch_size: Histogram = field(default_factory=lambda: Histogram(BATCH_BOUNDS))
    generation: GenerationStats = field(default_factory=GenerationStats)
    sequences: SequenceStats = field(default_factory=SequenceStats)
    text: TextStats = field(default_factory=TextStats)

    def record_execution(self, batch_size: int, timing: "Timing") -> None:
        """One run of the model on a batch of `batch_size` items (Triton's batch_stats)."""
        self.execution_count += 1
        self.inference_count += batch_size
        batch = self.batches.setdefault(batch_size, BatchStats())
        batch.compute_input.add(timing.input_ns)
        batch.compute_infer.add(timing.infer_ns)
        batch.compute_output.add(timing.output_ns)
        self.batch_size.observe(batch_size)
        self.compute_seconds.observe((timing.input_ns + timing.infer_ns + timing.output_ns) / 1e9)

    def record_success(self, request_ns: int, timing: "Timing", protocol: str = "") -> None:
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.success.add(request_ns)
        self.queue.add(timing.queue_ns)
        self.compute_input.add(timing.input_ns)
        self.compute_infer.add(timing.infer_ns)
        self.compute_output.add(timing.output_ns)
        self.request_seconds.observe(request_ns / 1e9)
        self.queue_seconds.observe(timing.queue_ns / 1e9)
        self._count(protocol, "success")

    def record_failure(self, request_ns: int, reason: str, protocol: str = "") -> None:
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.fail.add(request_ns)
        self.failures[reason] += 1
        self.request_seconds.observe(request_ns / 1e9)
        self._count(protocol, "failure")

    def _count(self, protocol: str, outcome: str) -> None:
        key = (protocol or "other", outcome)
        self.requests_by_protocol[key] = self.requests_by_protocol.get(key, 0) + 1


@dataclass
class Timing:
    """Where one request's time went, in nanoseconds."""

    queue_ns: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
    batch_size: int = 0  # the rows of the execution it ran in (0: not known)
