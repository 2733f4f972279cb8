"""The per-model scheduler: a bounded priority queue and one loop that forms batches for free instances.

Requests wait at most `max_queue_delay_microseconds` for a batch to fill, as in Triton; a batch goes at
once when it reaches `max_batch_size` or a preferred size. With the config parameter
`dispatch_lone_requests: "true"` (an ortserve extension) a lone request goes at once when nothing else is
queued: lower latency at low load, while under load requests still pile up behind busy instances. A model
without dynamic batching runs one request per execution: a request that finds an instance free and
nothing queued runs at once on its caller's task, the others queue. Results return to each caller, in
arrival order when asked.

With `pad_batch` (an ortserve parameter: "auto", the default, pads where the model runs on a GPU) an
execution's rows are padded up to the next preferred batch size or `max_batch_size`, repeating its last
row, so the model sees a few batch shapes: on CUDA each new input shape costs ONNX Runtime a rebuild of
its convolution plans, far more than the padded rows' compute.
"""

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import numpy as np

from server.batching.collate import Padding, batch_key, collate, padded_length, rows, split
from server.batching.loop import BatchLoop
from server.batching.ragged import Ragged
from server.core.errors import InvalidArgument, Unavailable
from server.core.stats import Timing
from server.protocol import ModelConfig

DEFAULT_MAX_QUEUE_SIZE = 1024  # where the config leaves max_queue_size at 0 (unbounded in Triton)

# run_batch(feeds, output names[, rows=the batch's size where its feeds do not show it])
RunBatch = Callable[..., Awaitable[tuple[dict[str, np.ndarray], Timing]]]


@dataclass(frozen=True)
class QueuePolicy:
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    default_timeout_us: int = 0
    allow_timeout_override: bool = False
    delay_on_timeout: bool = False  # timeout_action DELAY; REJECT otherwise

    @classmethod
    def from_config(cls, policy) -> "QueuePolicy":
        return cls(
            max_queue_size=policy.max_queue_size or DEFAULT_MAX_QUEUE_SIZE,
            default_timeout_us=policy.default_timeout_microseconds,
            allow_timeout_override=policy.allow_timeout_override,
            delay_on_timeout=policy.timeout_action == 1,
        )


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 0  # 0: every request runs alone
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    preserve_ordering: bool = False
    dispatch_lone_requests: bool = False
    max_execution_tokens: int = 0  # padded tokens per execution of a padded model; 0: no budget
    padded_batch_sizes: tuple[int, ...] = ()  # an execution's rows are padded up to one of these
    default_priority: int = 1
    queues: tuple[QueuePolicy, ...] = (QueuePolicy(),)  # one per priority level, highest first

    @classmethod
    def from_config(cls, config: ModelConfig, on_gpu: bool = False) -> "BatchPolicy":
        if not config.HasField("dynamic_batching") or config.max_batch_size <= 0:
            return cls()
        batching = config.dynamic_batching
        default = QueuePolicy.from_config(batching.default_queue_policy)
        levels = max(int(batching.priority_levels), 1)
        queues = tuple(
            QueuePolicy.from_config(batching.priority_queue_policy[level])
            if level in batching.priority_queue_policy
            else default
            for level in range(1, levels + 1)
        )
        preferred = tuple(sorted(s for s in batching.preferred_batch_size if 0 < s <= config.max_batch_size))
        padded = pads_batches(config, on_gpu)
        return cls(
            max_batch_size=config.max_batch_size,
            preferred_batch_sizes=preferred,
            padded_batch_sizes=tuple(sorted({*preferred, config.max_batch_size})) if padded else (),
            max_queue_delay_us=batching.max_queue_delay_microseconds,
            preserve_ordering=batching.preserve_ordering,
            dispatch_lone_requests=_parameter(config, "dispatch_lone_requests") == "true",
            max_execution_tokens=execution_tokens(config),
            default_priority=int(batching.default_priority_level) or (levels + 1) // 2,
            queues=queues,
        )

    def padded_rows(self, rows: int) -> int:
        return next((size for size in self.padded_batch_sizes if size >= rows), rows)


PAD_BATCH = {"auto": None, "": None, "true": True, "false": False}


def execution_tokens(config: ModelConfig) -> int:
    """`max_execution_tokens`, else `max_batch_tokens` (which text services also read as the tokens one
    request may hold): padded tokens per execution; 0, no budget."""
    value = _parameter(config, "max_execution_tokens") or _parameter(config, "max_batch_tokens") or "0"
    if not value.isdigit():
        raise ValueError(f"max_execution_tokens and max_batch_tokens must be integers >= 0 (0: no budget), "
                         f"got '{value}'")
    return int(value)


def pads_batches(config: ModelConfig, on_gpu: bool) -> bool:
    """The `pad_batch` parameter: "true", "false" or "auto" (pad where the model runs on a GPU)."""
    value = _parameter(config, "pad_batch")
    if value not in PAD_BATCH:
        raise ValueError(f"parameter pad_batch must be auto, true or false, got '{value}'")
    return on_gpu if PAD_BATCH[value] is None else PAD_BATCH[value]


def _parameter(config: ModelConfig, key: str) -> str:
    return config.parameters[key].string_value.strip().lower() if key in config.parameters else ""


@dataclass(eq=False)
class Pending:
    feeds: dict[str, np.ndarray]
    output_names: list[str]
    rows: int
    length: int | None
    key: tuple
    level: int
    enqueued_ns: int
    deadline_ns: int | None
    future: asyncio.Future
    previous: asyncio.Future | None = None  # preserve_ordering: delivered before this one
    delivered: asyncio.Future | None = None
    into: dict[str, np.ndarray] | None = None  # arrays its outputs are written into where it runs alone


@dataclass
class _Outcome:
    pending: Pending
    result: tuple | None = None
    error: BaseException | None = None


class Batcher(BatchLoop):
    def __init__(
        self,
        name: str,
        run_batch: RunBatch,
        policy: BatchPolicy | None = None,
        padding: Padding | None = None,
        instances: int = 1,
        ragged: Ragged | None = None,
    ):
        super().__init__(name, instances)
        self.run_batch = run_batch
        self.policy = policy or BatchPolicy()
        self.padding = padding
        self.ragged = ragged
        self._queues = [deque() for _ in self.policy.queues]
        self._last_delivered: asyncio.Future | None = None

    @property
    def queued(self) -> int:
        return sum(len(queue) for queue in self._queues)

    async def submit(
        self,
        feeds: dict[str, np.ndarray],
        output_names: list[str],
        priority: int = 0,
        timeout_us: int = 0,
        into: dict[str, np.ndarray] | None = None,
    ) -> tuple[dict[str, np.ndarray], Timing]:
        self._check_accepting()
        level = self._level(priority)
        policy = self.policy.queues[level]
        if len(self._queues[level]) >= policy.max_queue_size:
            raise Unavailable(  # Triton's words first
                f"Exceeds maximum queue size: the queue of model '{self.name}' holds its "
                f"{policy.max_queue_size} requests waiting; retry later"
            )
        timeout = timeout_us if timeout_us and policy.allow_timeout_override else policy.default_timeout_us
        length = padded_length(feeds, self.padding)
        now = time.monotonic_ns()
        loop = asyncio.get_running_loop()
        pending = Pending(
            feeds=feeds,
            output_names=output_names,
            rows=rows(feeds) if self.policy.max_batch_size else 1,
            length=length,
            key=self.ragged.key(feeds) if self.ragged else batch_key(feeds, self.padding, length),
            level=level,
            enqueued_ns=now,
            deadline_ns=now + timeout * 1000 if timeout else None,
            future=loop.create_future(),
            into=into,
        )
        if self._runs_at_once():
            return await self._run_at_once(pending)
        if self.policy.preserve_ordering:
            pending.previous, pending.delivered = self._last_delivered, loop.create_future()
            self._last_delivered = pending.delivered
        self._queues[level].append(pending)
        self._work_arrived()
        return await pending.future

    def _runs_at_once(self) -> bool:
        """A model without dynamic batching runs each request alone: one that finds an instance free and
        nothing queued runs on its caller's task, without the hand-over to the loop's task and back."""
        return not self.policy.max_batch_size and self._instance_free() and not any(self._queues)

    async def _run_at_once(self, pending: Pending) -> tuple[dict[str, np.ndarray], Timing]:
        """Runs `pending` on this task. A caller cancelled while its execution runs on a worker thread
        frees its instance here early; the instance pool still runs one execution per session at a time."""
        self._executing += 1
        try:
            [outcome] = await self._compute([pending])
        finally:
            self._instance_freed()
        if outcome.error is not None:
            raise outcome.error
        return outcome.result

    def _level(self, priority: int) -> int:
        levels = len(self.policy.queues)
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= levels:
            raise InvalidArgument(
                f"priority {priority!r} is out of range: model '{self.name}' has priority levels 1..{levels} "
                "(0 for its default)"
            )
        return (priority or min(self.policy.default_priority, levels)) - 1

    def _waiting(self) -> bool:
        return bool(self.queued)

    def _fail_waiting(self, error: Exception) -> None:
        for queue in self._queues:
            while queue:
                self._deliver(_Outcome(queue.popleft(), error=error))

    def _take(self, now: int) -> tuple[list[Pending] | None, int | None]:
        wake_at = self._expire(now)
        candidates, overflow = self._candidates()
        if not candidates:
            return None, wake_at
        chosen, ready_at = self._choose(candidates, overflow, now)
        if chosen:
            for pending in chosen:
                self._queues[pending.level].remove(pending)
            return chosen, None
        return None, min(ready_at, wake_at) if wake_at else ready_at

    def _expire(self, now: int) -> int | None:
        """Rejects or delays requests whose timeout passed; returns the next deadline."""
        next_deadline = None
        for level, queue in enumerate(self._queues):
            for pending in list(queue):
                if pending.future.done():  # the caller gave up
                    queue.remove(pending)
                    self._deliver(_Outcome(pending))
                elif pending.deadline_ns is not None and pending.deadline_ns <= now:
                    queue.remove(pending)
                    if self.policy.queues[level].delay_on_timeout:
                        pending.deadline_ns = None
                        pending.level = len(self._queues) - 1
                        self._queues[-1].append(pending)
                    else:
                        waited = (now - pending.enqueued_ns) // 1000
                        error = Unavailable(  # Triton's words first
                            f"Request timeout expired: it waited {waited} us in the queue of model "
                            f"'{self.name}'"
                        )
                        self._deliver(_Outcome(pending, error=error))
                elif pending.deadline_ns is not None:
                    next_deadline = min(next_deadline or pending.deadline_ns, pending.deadline_ns)
        return next_deadline

    def _candidates(self) -> tuple[list[Pending], bool]:
        """The oldest request of the highest priority and those that can join its batch; and whether a
        request that could run with them waits because the batch has no room for it."""
        head = next((queue[0] for queue in self._queues if queue), None)
        if head is None or not self.policy.max_batch_size:
            return ([head] if head else []), False
        chosen, total, capacity, overflow = [], 0, self._capacity(head), False
        for queue in self._queues:
            for pending in queue:
                if pending.key != head.key:
                    continue
                if total + pending.rows <= capacity or not chosen:
                    chosen.append(pending)
                    total += pending.rows
                else:
                    overflow = True
        return chosen, overflow

    def _capacity(self, head: Pending) -> int:
        """Rows that fit one execution with `head`: max_batch_size, and the token budget at its bucket."""
        if not self.policy.max_execution_tokens or self.padding is None or head.length is None:
            return self.policy.max_batch_size
        per_row = self.padding.bucket(head.length)
        return max(1, min(self.policy.max_batch_size, self.policy.max_execution_tokens // per_row))

    def _choose(self, candidates: list[Pending], overflow: bool, now: int) -> tuple[list[Pending], int]:
        """The batch to send now (empty to wait), and when the oldest candidate stops waiting. A batch that
        cannot grow (`overflow`: the next request would pass max_batch_size) goes at once, as Triton's."""
        ready_at = candidates[0].enqueued_ns + self.policy.max_queue_delay_us * 1000
        total = sum(p.rows for p in candidates)
        alone = self.policy.dispatch_lone_requests and len(candidates) == 1 and self.queued == 1
        full = total >= self._capacity(candidates[0])
        waited = now >= ready_at or not self._accepting
        if not self.policy.max_batch_size or alone or full or overflow or waited:
            return candidates, ready_at
        preferred = [size for size in self.policy.preferred_batch_sizes if size <= total]
        if preferred:
            chosen, count = [], 0
            for pending in candidates:
                if count + pending.rows > preferred[-1]:
                    break
                chosen.append(pending)
                count += pending.rows
            if count in self.policy.preferred_batch_sizes:
                return chosen, ready_at
        return [], ready_at

    def _finish(self, batch: list[Pending], outcomes: list[_Outcome]) -> None:
        for outcome in outcomes:
            self._deliver(outcome)

    async def _compute(self, batch: list[Pending]) -> list[_Outcome]:
        start = time.monotonic_ns()
        names = list(dict.fromkeys(name for pending in batch for name in pending.output_names))
        items, sizes = [p.feeds for p in batch], [p.rows for p in batch]
        try:
            if self.ragged is not None:
                outputs, timing = await self.run_batch(self.ragged.merge(items), names, rows=sum(sizes))
                parts = self.ragged.split(outputs, items, sizes)
            else:
                into = batch[0].into if len(batch) == 1 else None  # (one request's inputs are not padded)
                feeds = collate(items, self.padding)
                outputs, timing = await self._run_padded(feeds, sum(sizes), names, into)
                parts = split(outputs, sizes, [p.length for p in batch], self.padding)
        except Exception as error:
            if len(batch) == 1:
                return [_Outcome(batch[0], error=error)]
            # a failed batch is retried request by request, so that only the bad ones fail
            return [outcome for pending in batch for outcome in await self._compute([pending])]
        return [
            _Outcome(
                pending,
                result=(
                    {name: part[name] for name in pending.output_names},
                    replace(timing, queue_ns=start - pending.enqueued_ns),
                ),
            )
            for pending, part in zip(batch, parts)
        ]

    async def _run_padded(self, feeds: dict[str, np.ndarray], rows: int, names: list[str], into=None):
        """Runs `feeds` padded to the policy's next batch size; the outputs' padding rows are cut off.
        `into`: arrays the outputs of unpadded feeds are written into."""
        target = self.policy.padded_rows(rows)
        if target == rows:
            return await self.run_batch(feeds, names, into=into)
        padded = {name: np.concatenate([array, np.repeat(array[-1:], target - rows, axis=0)])
                  for name, array in feeds.items()}
        outputs, timing = await self.run_batch(padded, names)
        return {name: array[:rows] for name, array in outputs.items()}, timing

    def _deliver(self, outcome: _Outcome) -> None:
        pending = outcome.pending
        if pending.previous is not None and not pending.previous.done():
            pending.previous.add_done_callback(lambda _: self._deliver(outcome))
            return
        if not pending.future.done():
            if outcome.error is not None:
                pending.future.set_exception(outcome.error)
            else:
                pending.future.set_result(outcome.result)
        if pending.delivered is not None:
            pending.delivered.set_result(None)
