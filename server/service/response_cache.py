"""Triton's response cache (`--cache-config local,size=N`, and `response_cache { enable: true }` in a
model's config): a model's outputs kept by a digest of the model's name and version, the inputs (names,
datatypes, shapes, bytes) and the outputs asked for; the least recently used forgotten first once the
entries' bytes pass the size. A hit answers without running the model."""

import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import numpy as np

from server.core import tensors
from server.core.stats import Timing
from server.repository.model import ModelVersion

Outputs = dict[str, np.ndarray]


def cache_bytes(options: list[str], byte_size: int = 0) -> int:
    """The size of `--cache-config local,size=N` options (Triton's `--response-cache-byte-size N`, the
    older flag, as `local,size=N`); 0 without either."""
    size = byte_size
    for option in options:
        kind, _, setting = option.partition(",")
        key, _, value = setting.partition("=")
        if kind != "local":
            raise ValueError(f"--cache-config '{option}': ortserve's response cache is 'local' (in the "
                             f"server's memory), not '{kind}'")
        if key != "size" or not value.isdigit():
            raise ValueError(f"--cache-config '{option}': expected local,size=<bytes>")
        size = int(value)
    return size


class ResponseCache:
    def __init__(self, size: int):
        self.size, self.used = size, 0
        self.entries: OrderedDict[bytes, tuple[Outputs, int]] = OrderedDict()

    async def through(self, model: ModelVersion, feeds: Outputs, names: list[str],
                      run: Callable[[], Awaitable[tuple[Outputs, Timing]]]) -> tuple[Outputs, Timing]:
        """The cached outputs, or those of `run`, kept; counted in the model's statistics."""
        start = time.perf_counter_ns()
        key = _digest(model, feeds, names)
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
            model.stats.cache_hit.add(time.perf_counter_ns() - start)
            return dict(entry[0]), Timing()
        looked = time.perf_counter_ns() - start
        arrays, timing = await run()
        start = time.perf_counter_ns()
        self._put(key, {name: arrays[name] for name in names})
        model.stats.cache_miss.add(looked + time.perf_counter_ns() - start)
        return arrays, timing

    def _put(self, key: bytes, arrays: Outputs) -> None:
        size = sum(_size(array) for array in arrays.values())
        if size > self.size or key in self.entries:
            return
        copies = {name: _kept(array) for name, array in arrays.items()}
        self.entries[key] = (copies, size)
        self.used += size
        while self.used > self.size:
            _, (_, dropped) = self.entries.popitem(last=False)
            self.used -= dropped


def _kept(array: np.ndarray) -> np.ndarray:
    """A copy (not a view of a batch or a region) that the answers it is handed to cannot change."""
    copy = array.copy()
    copy.setflags(write=False)
    return copy


def _size(array: np.ndarray) -> int:
    if array.dtype != object:
        return array.nbytes
    return sum(len(tensors.as_bytes(item)) for item in array.flat)


def _digest(model: ModelVersion, feeds: Outputs, names: list[str]) -> bytes:
    digest = hashlib.blake2b(f"{model.name}\0{model.version}\0{','.join(sorted(names))}".encode(),
                             digest_size=16)
    for name in sorted(feeds):
        array = feeds[name]
        digest.update(f"\0{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(tensors.raw_view(array))
    return digest.digest()
