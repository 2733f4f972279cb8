"""The scheduling loop the dynamic batcher and the sequence batcher share: one task that, while an instance
is free, takes the next batch and runs it; stopping refuses new requests, then runs (drains) or fails
the waiting ones and lets running batches finish."""

import asyncio
import time

from server.core.errors import Unavailable

DRAIN_POLL_SECONDS = 0.005


class BatchLoop:
    """Subclasses give `_take` (the batch to run now, or None and when to look again), `_compute` and
    `_finish` (run a batch; deliver its results), `_waiting` and `_fail_waiting`."""

    def __init__(self, name: str, instances: int):
        self.name = name
        self._instances = instances
        self._executing = 0  # batches running, each on an instance
        self._wakeup = asyncio.Event()
        self._running: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._accepting = True
        self._closed = False

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name=f"{type(self).__name__}-{self.name}")

    def _check_accepting(self) -> None:
        if not self._accepting:
            raise Unavailable(f"model '{self.name}' is unloading")

    async def stop(self, drain: bool = False) -> None:
        """Refuse new requests, run (drain) or fail the waiting ones, and let running batches finish."""
        self._accepting = False
        self._wakeup.set()  # what waits for a fuller batch goes now
        while drain and (self._waiting() or self._executing):
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        self._closed = True
        self._wakeup.set()  # a cancel that lands as the wait ends is lost on Python 3.11: the loop checks
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        self._fail_waiting(Unavailable(f"model '{self.name}' was unloaded while the request waited"))
        await asyncio.gather(*self._running, return_exceptions=True)
        while self._executing:  # batches that run on their callers' tasks
            await asyncio.sleep(DRAIN_POLL_SECONDS)

    async def _loop(self) -> None:
        while True:
            batch = await self._next_batch()
            self._executing += 1
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _instance_free(self) -> bool:
        return self._executing < self._instances

    async def _next_batch(self):
        """The next batch to run, once an instance is free for it."""
        while True:
            if self._closed:
                raise asyncio.CancelledError
            self._wakeup.clear()
            batch, wake_at = self._take(time.monotonic_ns()) if self._instance_free() else (None, None)
            if batch is not None:
                return batch
            timeout = None if wake_at is None else max(wake_at - time.monotonic_ns(), 0) / 1e9
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                pass

    async def _run(self, batch) -> None:
        try:
            results = await self._compute(batch)
        finally:
            self._instance_freed()
        self._finish(batch, results)

    def _work_arrived(self) -> None:
        """Wakes the loop where it can act: while every instance runs, the next one to finish wakes it."""
        if self._instance_free():
            self._wakeup.set()

    def _instance_freed(self) -> None:
        self._executing -= 1
        self._wakeup.set()

    def _take(self, now: int):
        raise NotImplementedError

    async def _compute(self, batch):
        raise NotImplementedError

    def _finish(self, batch, results) -> None:
        raise NotImplementedError

    def _waiting(self) -> bool:
        raise NotImplementedError

    def _fail_waiting(self, error: Exception) -> None:
        raise NotImplementedError
