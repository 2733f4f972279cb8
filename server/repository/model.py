"""A loaded model version: its completed config, tensor specs, labels and running instances."""

import time
from dataclasses import dataclass, field

import numpy as np

from server.batching.batcher import Batcher, BatchPolicy
from server.batching.collate import Padding
from server.batching.ragged import Ragged
from server.core.errors import InvalidArgument
from server.core.stats import ModelStats, Timing
from server.core.types import TensorSpec
from server.core.validation import InputLimits
from server.encoding.encoder import TextService
from server.generation.engine import GenerationEngine
from server.generation.settings import GenerationSettings
from server.protocol import ModelConfig
from server.repository.ensemble import EnsembleStep
from server.runtime.executor import InstancePool
from server.runtime.shapes import OutputShapes
from server.sequences.scheduler import SequenceControl, SequenceScheduler
from server.sequences.settings import SequenceSettings


@dataclass
class ModelVersion:
    name: str
    version: int
    config: ModelConfig
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    pool: InstancePool | None  # None for an ensemble: its steps run other models
    labels: dict[str, list[str]] = field(default_factory=dict)
    # Triton's `reshape`: the graph's shape of an input, and the client's shape of an output
    input_reshapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    output_reshapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # the outputs' shapes before a run, from the inputs' (none where a reshape stands between them)
    output_shapes: OutputShapes = field(default_factory=lambda: OutputShapes({}))
    padding: Padding | None = None
    policy: BatchPolicy = field(default_factory=BatchPolicy)  # the dynamic batcher's, from the config
    ragged: Ragged | None = None  # Triton's ragged batching: allow_ragged_batch, batch_input, batch_output
    limits: InputLimits = field(default_factory=InputLimits)
    stats: ModelStats = field(default_factory=ModelStats)
    scheduler: Batcher | SequenceScheduler | None = None
    sequences: SequenceSettings | None = None  # set for stateful models (sequence_batching)
    generation: GenerationSettings | None = None  # set for decoder models served by generation
    engine: GenerationEngine | None = None
    text: TextService | None = None  # set for encoders that take text (config text_tokenizer)
    ensemble: list[EnsembleStep] | None = None  # set for ensembles, the steps in an order they can run in

    def start(self) -> None:
        """Starts the model's request queue or generation loop (on the event loop that serves it); an
        ensemble has neither."""
        if self.ensemble is not None:
            return
        if self.generation is not None:
            self.engine = GenerationEngine(self.pool, self.generation, self.stats)
            self.engine.start()
            return
        if self.sequences is not None:
            self.scheduler = SequenceScheduler(
                self.name, self.execute, self.sequences, len(self.pool.sessions), self.stats.sequences
            )
            self.scheduler.start()
            return
        self.scheduler = Batcher(
            name=self.name,
            run_batch=self.execute,
            policy=self.policy,
            padding=self.padding if self.batching else None,
            instances=len(self.pool.sessions),
            ragged=self.ragged,
        )
        self.scheduler.start()

    async def stop(self, drain: bool = False) -> None:
        """`drain`: the requests already queued run first (a reload or unload); generation streams end."""
        if self.scheduler is not None:
            await self.scheduler.stop(drain)
        if self.engine is not None:
            await self.engine.stop()

    async def infer(
        self,
        feeds: dict[str, np.ndarray],
        output_names: list[str],
        priority: int = 0,
        timeout_us: int = 0,
        sequence: SequenceControl | None = None,
        into: dict[str, np.ndarray] | None = None,
    ) -> tuple[dict[str, np.ndarray], Timing]:
        """`into`: arrays of the shapes `output_shapes` gives, which outputs are written into where the
        request runs alone."""
        if self.sequences is None:
            return await self.scheduler.submit(feeds, output_names, priority, timeout_us, into)
        if sequence is None:
            raise InvalidArgument(
                f"model '{self.name}' is stateful (sequence batching): every request needs a non-zero "
                "sequence_id, and the first of a sequence sequence_start"
            )
        return await self.scheduler.submit(feeds, output_names, sequence)

    @property
    def batching(self) -> bool:
        return self.config.max_batch_size > 0

    async def execute(
        self, feeds: dict[str, np.ndarray], output_names: list[str], rows: int | None = None,
        into: dict[str, np.ndarray] | None = None,
    ) -> tuple[dict[str, np.ndarray], Timing]:
        """`rows`: the batch's size where its feeds do not show it (ragged inputs are 1-D)."""
        start = time.perf_counter_ns()
        feeds = self.graph_feeds(feeds)
        ready = time.perf_counter_ns()
        arrays = await self.pool.run(feeds, output_names, into)
        done = time.perf_counter_ns()
        batch = rows or (next(iter(feeds.values())).shape[0] if self.batching and feeds else 1)
        outputs = {name: self._client_shape(name, a, batch) for name, a in zip(output_names, arrays)}
        timing = Timing(
            input_ns=ready - start, infer_ns=done - ready, output_ns=time.perf_counter_ns() - done,
            batch_size=batch,
        )
        self.stats.record_execution(batch, timing)
        return outputs, timing

    def graph_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.input_reshapes:
            return feeds
        return {name: self._reshape(array, self.input_reshapes.get(name)) for name, array in feeds.items()}

    def _client_shape(self, name: str, array: np.ndarray, batch: int) -> np.ndarray:
        dims = self.output_reshapes.get(name)
        if dims is None:
            return array
        return array.reshape((batch, *dims) if self.batching else dims)

    def _reshape(self, array: np.ndarray, dims: tuple[int, ...] | None) -> np.ndarray:
        if dims is None:
            return array
        return array.reshape((array.shape[0], *dims) if self.batching else dims)
