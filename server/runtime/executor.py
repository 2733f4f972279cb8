"""Runs model executions off the event loop, one worker thread per model instance, except those too
short for the hand-over to a thread and back to pay."""

import asyncio
import queue
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from server.runtime.session import OrtSession

T = TypeVar("T")

DEFAULT_INLINE_EXECUTION_US = 100
DECAY = 0.9  # per execution: how fast one slow execution is forgotten


class InstancePool:
    """N sessions of one model version serving N executions at once; more wait for a free one.

    `busy_sessions`: one more session per instance with fewer intra-op threads, which an execution runs
    on while another is running: a lone execution has every core, concurrent ones do not oversubscribe
    them.

    `inline_execution_us`: an execution runs on the event loop's own thread when the model's recent ones took
    less (the slowest of them, forgotten by `DECAY` per execution) and no larger inputs than one of them;
    a hand-over to a worker thread and back costs more than such a run (0: never)."""

    def __init__(self, sessions: list[OrtSession], name: str, busy_sessions: list[OrtSession] | None = None,
                 inline_execution_us: int = DEFAULT_INLINE_EXECUTION_US):
        self.sessions = sessions
        self.busy_sessions = busy_sessions
        self.inline_execution_ns = inline_execution_us * 1000
        self._recent_ns: float | None = None  # the slowest recent execution, decaying
        self._fast_bytes = -1  # the largest inputs an execution ran in less than inline_execution_ns
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(sessions)):
            self._free.put(index)
        self._running = 0  # executions started and not finished, counted on the event loop
        self._threads = ThreadPoolExecutor(max_workers=len(sessions), thread_name_prefix=name)

    async def run(self, feeds: dict[str, np.ndarray], output_names: list[str],
                  into: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """`into`: arrays that outputs are written into (`OrtSession.run`)."""
        size = sum(array.nbytes for array in feeds.values())
        index = self._free_now() if self._inline(size) else None
        if index is None:
            return await self.call(lambda session: self._timed(session, feeds, output_names, size, into))
        try:
            return self._timed(self._chosen()[index], feeds, output_names, size, into)
        finally:
            self._free.put(index)

    def _inline(self, size: int) -> bool:
        recent = self._recent_ns
        return recent is not None and recent < self.inline_execution_ns and size <= self._fast_bytes

    def _free_now(self) -> int | None:
        """A free instance, or None while every instance runs on its thread."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return None

    def _timed(self, session: OrtSession, feeds, output_names, size: int, into) -> list[np.ndarray]:
        start = time.perf_counter_ns()
        try:
            return session.run(feeds, output_names, into)
        finally:
            elapsed = time.perf_counter_ns() - start
            recent = self._recent_ns
            self._recent_ns = elapsed if recent is None else max(elapsed, recent * DECAY)
            if elapsed < self.inline_execution_ns:
                self._fast_bytes = max(self._fast_bytes, size)

    async def call(self, work: Callable[[OrtSession], T]) -> T:
        """`work(session)` on a worker thread with a free instance's session."""
        loop = asyncio.get_running_loop()
        chosen = self._chosen()
        self._running += 1
        try:
            return await loop.run_in_executor(self._threads, self._call, work, chosen)
        finally:
            self._running -= 1

    def _chosen(self) -> list[OrtSession]:
        return self.busy_sessions if self.busy_sessions and self._running else self.sessions

    def _call(self, work, sessions: list[OrtSession]):
        index = self._free.get()
        try:
            return work(sessions[index])
        finally:
            self._free.put(index)

    def close(self) -> None:
        self._threads.shutdown(wait=True)
