"""Runs model executions off the event loop, one worker thread per model instance."""

import asyncio
import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from server.runtime.session import OrtSession

T = TypeVar("T")


class InstancePool:
    """N sessions of one model version serving N executions at once; more wait for a free one.

    `busy_sessions`: one more session per instance with fewer intra-op threads, which an execution runs
    on while another is running: a lone execution has every core, concurrent ones do not oversubscribe
    them."""

    def __init__(self, sessions: list[OrtSession], name: str, busy_sessions: list[OrtSession] | None = None):
        self.sessions = sessions
        self.busy_sessions = busy_sessions
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(sessions)):
            self._free.put(index)
        self._running = 0  # executions started and not finished, counted on the event loop
        self._threads = ThreadPoolExecutor(max_workers=len(sessions), thread_name_prefix=name)

    async def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
        return await self.call(lambda session: session.run(feeds, output_names))

    async def call(self, work: Callable[[OrtSession], T]) -> T:
        """`work(session)` on a worker thread with a free instance's session."""
        loop = asyncio.get_running_loop()
        chosen = self.busy_sessions if self.busy_sessions and self._running else self.sessions
        self._running += 1
        try:
            return await loop.run_in_executor(self._threads, self._call, work, chosen)
        finally:
            self._running -= 1

    def _call(self, work, sessions: list[OrtSession]):
        index = self._free.get()
        try:
            return work(sessions[index])
        finally:
            self._free.put(index)

    def close(self) -> None:
        self._threads.shutdown(wait=True)
