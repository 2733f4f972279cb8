"""Triton's system shared memory extension: POSIX shared memory regions that clients register by name and
that requests name for their inputs and outputs, so tensors do not travel in the request."""

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

from server.core.errors import InvalidArgument, NotFound

SHM_ROOT = Path("/dev/shm")


@dataclass
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    memory: mmap.mmap

    def status(self) -> dict:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


@dataclass(frozen=True)
class RegionUse:
    """Where a tensor lies: `byte_size` bytes at `offset` in region `name` (request parameters
    shared_memory_region, shared_memory_offset, shared_memory_byte_size)."""

    name: str
    byte_size: int
    offset: int = 0

    @classmethod
    def from_parameters(cls, tensor: str, parameters: dict) -> "RegionUse | None":
        name = parameters.get("shared_memory_region")
        if name is None:
            return None
        size, offset = parameters.get("shared_memory_byte_size"), parameters.get("shared_memory_offset", 0)
        for key, value in (("shared_memory_byte_size", size), ("shared_memory_offset", offset)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidArgument(f"'{tensor}': parameter '{key}' must be an integer >= 0, got {value!r}")
        if not isinstance(name, str):
            raise InvalidArgument(f"'{tensor}': parameter 'shared_memory_region' must be a string")
        return cls(name, size, offset)


class SystemSharedMemory:
    def __init__(self):
        self._regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if name in self._regions:
            raise InvalidArgument(f"shared memory region '{name}' is already registered")
        path = SHM_ROOT / key.lstrip("/")
        if not key.strip("/") or "/" in key.strip("/"):
            raise InvalidArgument(f"shared memory key '{key}' must name one POSIX shared memory object")
        try:
            descriptor = os.open(path, os.O_RDWR)
        except OSError as error:
            raise InvalidArgument(f"cannot open shared memory key '{key}': {error.strerror}") from None
        try:
            size = os.fstat(descriptor).st_size
            if byte_size == 0 or offset + byte_size > size:
                raise InvalidArgument(
                    f"shared memory region '{name}': offset {offset} + byte_size {byte_size} does not fit "
                    f"in key '{key}' of {size} bytes"
                )
            memory = mmap.mmap(descriptor, size)
        finally:
            os.close(descriptor)
        self._regions[name] = Region(name, key, offset, byte_size, memory)

    def unregister(self, name: str = "") -> None:
        """One region, or every region when `name` is empty (unknown names are not an error, as Triton)."""
        for region_name in [name] if name else list(self._regions):
            region = self._regions.pop(region_name, None)
            if region is not None:
                region.memory.close()

    def status(self, name: str = "") -> list[dict]:
        if name:
            return [self._region(name).status()]
        return [region.status() for region in self._regions.values()]

    def read(self, use: RegionUse) -> bytes:
        region, start = self._span(use)
        return region.memory[start : start + use.byte_size]

    def write(self, use: RegionUse, data: bytes) -> None:
        if len(data) > use.byte_size:
            raise InvalidArgument(
                f"output needs {len(data)} bytes but shared memory region '{use.name}' was given "
                f"{use.byte_size}"
            )
        region, start = self._span(use)
        region.memory[start : start + len(data)] = data

    def _region(self, name: str) -> Region:
        region = self._regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find system shared memory region: '{name}'")
        return region

    def _span(self, use: RegionUse) -> tuple[Region, int]:
        region = self._region(use.name)
        if use.offset + use.byte_size > region.byte_size:
            raise InvalidArgument(
                f"shared memory region '{use.name}' holds {region.byte_size} bytes; offset {use.offset} + "
                f"byte_size {use.byte_size} is past its end"
            )
        return region, region.offset + use.offset


class CudaSharedMemory:
    """Triton's CUDA shared memory extension as ortserve answers it: it holds no regions and refuses a
    registration with the reason, so a client that tries it learns what to use instead."""

    def status(self, name: str = "") -> list[dict]:
        if name:
            raise NotFound(f"Unable to find cuda shared memory region: '{name}'")
        return []

    def register(self, name: str) -> None:
        raise InvalidArgument(
            f"cannot register CUDA shared memory region '{name}': ortserve does not implement CUDA shared "
            "memory; register the tensors' host copies as system shared memory (/v2/systemsharedmemory)"
        )

    def unregister(self, name: str = "") -> None:
        if name:
            raise NotFound(f"Unable to find cuda shared memory region: '{name}'")
