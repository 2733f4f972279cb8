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
    """N sessions of one model version serving N executions at once; more wait for a free one."""

    def __init__(self, sessions: list[OrtSession], name: str):
        self.sessions = sessions
        self._free: queue.SimpleQueue[OrtSession] = queue.SimpleQueue()
        for session in sessions:
            self._free.put(session)
        self._threads = ThreadPoolExecutor(max_workers=len(sessions), thread_name_prefix=name)

    async def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
        return await self.call(lambda session: session.run(feeds, output_names))

    async def call(self, work: Callable[[OrtSession], T]) -> T:
        """`work(session)` on a worker thread with a free session."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, self._call, work)

    def _call(self, work):
        session = self._free.get()
        try:
            return work(session)
        finally:
            self._free.put(session)

    def close(self) -> None:
        self._threads.shutdown(wait=True)
