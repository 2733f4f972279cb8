"""Triton's sequence batcher: requests of one sequence run in order, and the server keeps its state.

Every live sequence holds a slot (direct: a fixed row of one instance's batch; oldest: a place among
the candidate sequences); started sequences beyond the slots wait in a bounded backlog, and a START
beyond that is refused. A batch takes at most one request per sequence. Implicit state lives here,
on the host: each sequence's last output state is fed back as its next input state, the initial
state at START, so any instance can run any batch.
"""

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import numpy as np

from server.batching.loop import BatchLoop
from server.core.errors import Internal, InvalidArgument, ServerError, Unavailable
from server.core.fields import boolean
from server.core.stats import SequenceStats, Timing
from server.sequences.settings import CORRID, END, READY, START, SequenceSettings, control_array

RunBatch = Callable[[dict[str, np.ndarray], list[str]], Awaitable[tuple[dict[str, np.ndarray], Timing]]]
REMEMBERED_IDS = 4096  # ended or released ids kept to explain a late request
MAX_QUEUED_PER_SEQUENCE = 16


@dataclass(frozen=True)
class SequenceControl:
    """What a request says of its sequence: Triton's sequence_id, sequence_start, sequence_end."""

    id: int | str
    start: bool = False
    end: bool = False

    @classmethod
    def from_parameters(cls, parameters: dict) -> "SequenceControl | None":
        if not parameters:  # most requests: nothing to read
            return None
        sequence_id = parameters.get("sequence_id", 0)
        flags = {key: boolean(parameters.get(key), f"request parameter '{key}'", False)
                 for key in ("sequence_start", "sequence_end")}
        if isinstance(sequence_id, bool) or not isinstance(sequence_id, int | str) or (
            isinstance(sequence_id, int) and sequence_id < 0
        ):
            raise InvalidArgument(
                "request parameter 'sequence_id' must be an unsigned integer or a string, "
                f"got {sequence_id!r}"
            )
        if sequence_id in (0, ""):
            return None
        return cls(sequence_id, flags["sequence_start"], flags["sequence_end"])


@dataclass(eq=False)
class _Request:
    feeds: dict[str, np.ndarray]
    output_names: list[str]
    control: SequenceControl
    enqueued_ns: int
    future: asyncio.Future


@dataclass(eq=False)
class _Sequence:
    id: int | str
    started_ns: int
    last_ns: int
    requests: deque = field(default_factory=deque)
    slot: int | None = None
    states: dict[str, np.ndarray] | None = None
    busy: bool = False
    ending: bool = False  # its last request so far carries END

    @property
    def ready(self) -> bool:
        return self.slot is not None and not self.busy and bool(self.requests)


@dataclass
class _Batch:
    rows: int
    entries: list[tuple[int, _Sequence, _Request]]  # (row in the batch, sequence, its request)


class SequenceScheduler(BatchLoop):
    def __init__(self, name: str, run_batch: RunBatch, settings: SequenceSettings, instances: int,
                 stats: SequenceStats):
        super().__init__(name, instances)
        self.run_batch = run_batch
        self.settings = settings
        self.stats = stats
        self._sequences: dict[int | str, _Sequence] = {}
        self._free_slots = list(range(settings.slots))
        self._backlog: deque[_Sequence] = deque()
        self._gone: OrderedDict[int | str, str] = OrderedDict()

    @property
    def batched(self) -> bool:
        return self.settings.max_batch_size > 0

    @property
    def queued(self) -> int:
        return sum(len(seq.requests) for seq in self._sequences.values())

    @property
    def live(self) -> int:
        return len(self._sequences)

    @property
    def backlogged(self) -> int:
        return len(self._backlog)

    def _waiting(self) -> bool:
        """Requests of sequences holding a slot (those waiting for one cannot run while draining)."""
        return any(seq.requests for seq in self._sequences.values() if seq.slot is not None)

    def _fail_waiting(self, error: Exception) -> None:
        for seq in self._sequences.values():
            while seq.requests:
                request = seq.requests.popleft()
                if not request.future.done():
                    request.future.set_exception(error)

    async def submit(
        self, feeds: dict[str, np.ndarray], output_names: list[str], control: SequenceControl
    ) -> tuple[dict[str, np.ndarray], Timing]:
        self._check_accepting()
        self._check(feeds, control)
        seq = self._sequence_for(control)
        if len(seq.requests) >= MAX_QUEUED_PER_SEQUENCE:
            raise Unavailable(
                f"sequence {control.id!r} of model '{self.name}' already has {MAX_QUEUED_PER_SEQUENCE} "
                "requests waiting; send the next one after a response"
            )
        now = time.monotonic_ns()
        request = _Request(feeds, output_names, control, now, asyncio.get_running_loop().create_future())
        seq.requests.append(request)
        seq.ending = control.end
        seq.last_ns = now
        self.stats.requests += 1
        self._work_arrived()
        return await request.future

    def _check(self, feeds: dict[str, np.ndarray], control: SequenceControl) -> None:
        if self.batched and any(array.shape[0] != 1 for array in feeds.values()):
            raise InvalidArgument(
                f"model '{self.name}' batches sequences: each request carries one step of its sequence, "
                "batch size 1"
            )
        corrid = next((c for c in self.settings.controls if c.kind == CORRID), None)
        if corrid is not None and isinstance(control.id, str) and corrid.datatype != "BYTES":
            raise InvalidArgument(
                f"model '{self.name}' takes {corrid.datatype} correlation ids, got the string {control.id!r}"
            )

    def _sequence_for(self, control: SequenceControl) -> _Sequence:
        seq = self._sequences.get(control.id)
        if seq is not None:
            if seq.ending and not control.start:
                raise InvalidArgument(
                    f"sequence {control.id!r} of model '{self.name}' has ended; "
                    "start a new one with sequence_start"
                )
            return seq
        if not control.start:
            why = self._gone.get(control.id, "was never started")
            raise InvalidArgument(  # Triton's words, which clients match to start again
                f"inference request for sequence {control.id} to model '{self.name}' must specify the START "
                f"flag on the first request of the sequence: it is not active ({why}); set sequence_start"
            )
        limit = self.settings.slots + self.settings.backlog
        if len(self._sequences) >= limit:
            raise Unavailable(
                f"model '{self.name}' holds {limit} live sequences, its limit ({self.settings.slots} "
                f"with a slot, {self.settings.backlog} waiting); retry later"
            )
        now = time.monotonic_ns()
        seq = _Sequence(control.id, now, now)
        self._sequences[control.id] = seq
        self._gone.pop(control.id, None)
        self.stats.started += 1
        if self._free_slots:
            seq.slot = self._take_slot()
        else:
            self._backlog.append(seq)
        return seq

    def _take_slot(self) -> int:
        slot = min(self._free_slots)
        self._free_slots.remove(slot)
        return slot

    def _release(self, seq: _Sequence, why: str) -> None:
        del self._sequences[seq.id]
        self._gone[seq.id] = why
        while len(self._gone) > REMEMBERED_IDS:
            self._gone.popitem(last=False)
        if seq.slot is None:
            self._backlog.remove(seq)
            return
        if self._backlog:
            self._backlog.popleft().slot = seq.slot
        else:
            self._free_slots.append(seq.slot)

    def _take(self, now: int) -> tuple[_Batch | None, int | None]:
        wake_at = self._release_idle(now)
        batch, ready_at = self._choose(now)
        if batch is not None:
            for _, seq, _ in batch.entries:
                seq.busy = True
                seq.requests.popleft()
            return batch, None
        waits = [t for t in (wake_at, ready_at) if t is not None]
        return None, min(waits) if waits else None

    def _release_idle(self, now: int) -> int | None:
        """Releases sequences idle past max_sequence_idle_microseconds; returns the next such moment."""
        idle_ns = self.settings.idle_us * 1000
        next_at = None
        for seq in list(self._sequences.values()):
            if seq.busy or seq.requests:
                continue
            at = seq.last_ns + idle_ns
            if at <= now:
                self._release(seq, f"released after {self.settings.idle_us} us without a request")
                self.stats.idle_released += 1
            else:
                next_at = at if next_at is None else min(next_at, at)
        return next_at

    def _choose(self, now: int) -> tuple[_Batch | None, int | None]:
        """The batch to run now, or None and when the oldest ready request stops waiting for others."""
        ready = [seq for seq in self._sequences.values() if seq.ready]
        if not ready:
            return None, None
        head = min(ready, key=lambda seq: seq.requests[0].enqueued_ns)
        if not self.batched:
            return _Batch(1, [(0, head, head.requests[0])]), None
        if self.settings.strategy == "direct":
            members, live = self._direct_members(head, ready)
        else:
            head = min(ready, key=lambda seq: seq.started_ns)
            members, live = self._oldest_members(head, ready)
        size = len(members)
        ready_at = head.requests[0].enqueued_ns + self.settings.delay_us * 1000
        full = size == len(live) or size == self.settings.max_batch_size
        preferred = size in self.settings.preferred_batch_sizes
        if not (full or preferred or now >= ready_at or not self._accepting):
            return None, ready_at
        if self.settings.strategy == "direct":
            rows = 1 + max(seq.slot % self.settings.max_batch_size for seq in members)
            entries = [(seq.slot % self.settings.max_batch_size, seq, seq.requests[0]) for seq in members]
        else:
            rows, entries = size, [(row, seq, seq.requests[0]) for row, seq in enumerate(members)]
        return _Batch(rows, entries), None

    def _direct_members(self, head: _Sequence, ready: list[_Sequence]):
        """The ready sequences in the head's instance group whose tensors can share its batch."""
        rows = self.settings.max_batch_size
        group, key = head.slot // rows, self._key(head)
        members = [s for s in ready if s.slot // rows == group and self._key(s) == key]
        live = [s for s in self._sequences.values() if s.slot is not None and s.slot // rows == group]
        return members, live

    def _oldest_members(self, head: _Sequence, ready: list[_Sequence]):
        key = self._key(head)
        members = sorted((s for s in ready if self._key(s) == key), key=lambda s: s.started_ns)
        live = [s for s in self._sequences.values() if s.slot is not None]
        return members[: self.settings.max_batch_size], live

    def _key(self, seq: _Sequence) -> tuple:
        """Sequences whose next requests have equal keys can run in one batch."""
        request = seq.requests[0]
        shapes = tuple((name, array.shape) for name, array in request.feeds.items())
        states = tuple(self._state_in(seq, request, state).shape for state in self.settings.states)
        return shapes + states

    def _state_in(self, seq: _Sequence, request: _Request, state) -> np.ndarray:
        if request.control.start or seq.states is None:
            return state.initial[None] if self.batched else state.initial
        return seq.states[state.input_name]

    def _finish(self, batch: _Batch, results: list[tuple]) -> None:
        now = time.monotonic_ns()
        for (_, seq, request), (result, error) in zip(batch.entries, results):
            seq.busy, seq.last_ns = False, now
            if error is not None:
                request.future.done() or request.future.set_exception(error)
            else:
                request.future.done() or request.future.set_result(result)
            if request.control.end and not seq.requests and self._sequences.get(seq.id) is seq:
                self._release(seq, "ended")
                self.stats.ended += 1

    async def _compute(self, batch: _Batch) -> list[tuple]:
        start = time.monotonic_ns()
        names = list(dict.fromkeys(
            [n for _, _, request in batch.entries for n in request.output_names]
            + [state.output_name for state in self.settings.states]
        ))
        try:
            outputs, timing = await self.run_batch(self._feeds(batch), names)
        except Exception as error:
            if len(batch.entries) == 1:
                return [(None, error)]
            # a failed batch is retried request by request, so that only the bad ones fail
            return [(await self._compute(_Batch(1, [(0, seq, request)])))[0]
                    for _, seq, request in batch.entries]
        results = []
        for row, seq, request in batch.entries:
            try:
                timing_of_request = replace(timing, queue_ns=start - request.enqueued_ns)
                results.append((self._collect(seq, request, outputs, row, timing_of_request), None))
            except ServerError as error:
                results.append((None, error))
        return results

    def _feeds(self, batch: _Batch) -> dict[str, np.ndarray]:
        first_seq, first = batch.entries[0][1], batch.entries[0][2]
        columns: dict[str, list] = {}
        for name, array in first.feeds.items():
            columns[name] = [_blank(array)] * batch.rows
        for state in self.settings.states:
            columns[state.input_name] = [np.zeros_like(self._state_in(first_seq, first, state))] * batch.rows
        flags = {kind: [False] * batch.rows for kind in (START, END, READY)}
        flags[CORRID] = [0] * batch.rows
        for row, seq, request in batch.entries:
            for name, array in request.feeds.items():
                columns[name][row] = array
            for state in self.settings.states:
                columns[state.input_name][row] = self._state_in(seq, request, state)
            flags[START][row], flags[END][row] = request.control.start, request.control.end
            flags[READY][row], flags[CORRID][row] = True, seq.id
        feeds = {name: np.concatenate(rows) if self.batched else rows[0] for name, rows in columns.items()}
        for control in self.settings.controls:
            feeds[control.input_name] = control_array(control, flags[control.kind], self.batched)
        return feeds

    def _collect(self, seq: _Sequence, request: _Request, outputs: dict, row: int, timing: Timing):
        """The request's outputs from its row; its sequence keeps the output state for the next step."""
        def take(name):
            return outputs[name][row : row + 1] if self.batched else outputs[name]

        states = {}
        for state in self.settings.states:
            value = np.array(take(state.output_name))
            dims = value.shape[1:] if self.batched else value.shape
            if len(dims) != len(state.dims) or any(d not in (-1, v) for d, v in zip(state.dims, dims)):
                raise Internal(
                    f"model '{self.name}' returned state '{state.output_name}' with shape {list(dims)}, "
                    f"its config says {list(state.dims)}"
                )
            states[state.input_name] = value
        seq.states = states
        return {name: take(name) for name in request.output_names}, timing


def _blank(array: np.ndarray) -> np.ndarray:
    """A row of the batch no request fills (direct strategy): READY is false there."""
    return np.full(array.shape, "", dtype=object) if array.dtype == object else np.zeros_like(array)
