"""Per model version statistics in the shape of Triton's statistics extension."""

import time
from dataclasses import dataclass, field


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
    batches: dict[int, BatchStats] = field(default_factory=dict)

    def record_execution(self, batch_size: int, timing: "Timing") -> None:
        """One run of the model on a batch of `batch_size` items (Triton's batch_stats)."""
        self.execution_count += 1
        self.inference_count += batch_size
        batch = self.batches.setdefault(batch_size, BatchStats())
        batch.compute_input.add(timing.input_ns)
        batch.compute_infer.add(timing.infer_ns)
        batch.compute_output.add(timing.output_ns)

    def record_success(self, request_ns: int, timing: "Timing") -> None:
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.success.add(request_ns)
        self.queue.add(timing.queue_ns)
        self.compute_input.add(timing.input_ns)
        self.compute_infer.add(timing.infer_ns)
        self.compute_output.add(timing.output_ns)

    def record_failure(self, request_ns: int) -> None:
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.fail.add(request_ns)


@dataclass
class Timing:
    """Where one request's time went, in nanoseconds."""

    queue_ns: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
