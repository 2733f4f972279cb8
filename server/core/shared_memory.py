"""Triton's shared memory extensions: regions that clients register by name and that requests name for
their inputs and outputs, so tensors do not travel in the request. System regions are POSIX shared memory
objects mapped into the server; CUDA regions are GPU allocations shared by a CUDA IPC handle, copied to
and from host memory around an execution. Both kinds share one namespace of region names, as Triton's."""

import math
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.core.cuda_ipc import CudaRuntime, CudaUnavailable
from server.core.errors import InvalidArgument, NotFound
from server.core.fields import integer

SHM_ROOT = Path("/dev/shm")
CUDA_IPC_HANDLE_BYTES = 64


@dataclass
class SystemRegion:
    name: str
    key: str
    offset: int
    byte_size: int
    memory: mmap.mmap

    def status(self) -> dict:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def read(self, start: int, size: int) -> bytes:
        return self.memory[self.offset + start : self.offset + start + size]

    def write(self, start: int, data: bytes | memoryview) -> None:
        self.memory[self.offset + start : self.offset + start + len(data)] = data

    def array(self, start: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray | None:
        """The span as a writable array, where its offset suits the type (else None)."""
        at = self.offset + start
        if at % dtype.itemsize:
            return None
        # frombuffer holds the mapping's buffer (an ndarray built on it directly would not stop `close`)
        return np.frombuffer(self.memory, dtype, math.prod(shape), at).reshape(shape)

    def release(self) -> None:
        try:
            self.memory.close()
        except BufferError:  # a running request writes into it: unmapped once its array is gone
            pass


@dataclass
class CudaRegion:
    name: str
    device_id: int
    byte_size: int
    pointer: int
    runtime: CudaRuntime

    def status(self) -> dict:
        return {"name": self.name, "device_id": self.device_id, "byte_size": self.byte_size}

    def read(self, start: int, size: int) -> bytes:
        return self.runtime.to_host(self.device_id, self.pointer + start, size)

    def write(self, start: int, data: bytes | memoryview) -> None:
        self.runtime.to_device(self.device_id, self.pointer + start, data)

    def release(self) -> None:
        self.runtime.close(self.device_id, self.pointer)


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
            integer(value, f"'{tensor}': parameter '{key}'")
        if not isinstance(name, str):
            raise InvalidArgument(f"'{tensor}': parameter 'shared_memory_region' must be a string")
        return cls(name, size, offset)


class Regions:
    """The regions of one kind: registration bookkeeping, status, unregistering."""

    kind = ""

    def __init__(self, every_kind: "SharedMemory"):
        self._every_kind = every_kind
        self._regions: dict = {}

    def unregister(self, name: str = "") -> None:
        """One region, or every region when `name` is empty (unknown names are not an error, as Triton)."""
        for region_name in [name] if name else list(self._regions):
            region = self._regions.pop(region_name, None)
            if region is not None:
                region.release()

    def status(self, name: str = "") -> list[dict]:
        if name:
            return [self.region(name).status()]
        return [region.status() for region in self._regions.values()]

    def get(self, name: str) -> "SystemRegion | CudaRegion | None":
        return self._regions.get(name)

    def region(self, name: str):
        region = self._regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find {self.kind} shared memory region: '{name}'")
        return region

    def _check_free(self, name: str) -> None:
        if self._every_kind.find(name) is not None:
            raise InvalidArgument(f"shared memory region '{name}' is already registered")


class SystemSharedMemory(Regions):
    kind = "system"

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._check_free(name)
        path = SHM_ROOT / key.lstrip("/")
        if not key.strip("/") or "/" in key.strip("/"):
            raise InvalidArgument(f"shared memory key '{key}' must name one POSIX shared memory object")
        try:
            descriptor = os.open(path, os.O_RDWR)
        except OSError as error:
            raise InvalidArgument(  # Triton's words (its status is 500; a client's key is a 400 here)
                f"Unable to open shared memory region: '{key}' ({error.strerror})"
            ) from None
        try:
            size = os.fstat(descriptor).st_size
            if byte_size == 0 or offset + byte_size > size:
                raise InvalidArgument(
                    f"failed to register shared memory region '{name}': invalid args (offset {offset} + "
                    f"byte_size {byte_size} does not fit in key '{key}' of {size} bytes)"
                )
            memory = mmap.mmap(descriptor, size)
        finally:
            os.close(descriptor)
        self._regions[name] = SystemRegion(name, key, offset, byte_size, memory)


class CudaSharedMemory(Regions):
    """Opens each client's CUDA IPC handle once; the runtime is loaded on the first registration, so a
    server without cuda-python or a GPU serves everything else and says why a registration fails."""

    kind = "cuda"

    def __init__(self, every_kind: "SharedMemory"):
        super().__init__(every_kind)
        self._runtime: CudaRuntime | None = None

    def register(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        self._check_free(name)
        if len(raw_handle) != CUDA_IPC_HANDLE_BYTES:
            raise InvalidArgument(
                f"CUDA shared memory region '{name}': raw_handle must be the {CUDA_IPC_HANDLE_BYTES} bytes "
                f"of a cudaIpcMemHandle_t, got {len(raw_handle)}"
            )
        if device_id < 0 or byte_size <= 0:
            raise InvalidArgument(
                f"CUDA shared memory region '{name}': device_id must be >= 0 and byte_size > 0, got "
                f"{device_id} and {byte_size}"
            )
        runtime = self._cuda(name)
        try:
            pointer, allocated = runtime.open(raw_handle, device_id)
        except CudaUnavailable as error:
            raise InvalidArgument(f"cannot open CUDA shared memory region '{name}': {error}") from None
        region = CudaRegion(name, device_id, byte_size, pointer, runtime)
        if byte_size > allocated:
            region.release()
            raise InvalidArgument(
                f"CUDA shared memory region '{name}': byte_size {byte_size} is larger than the "
                f"{allocated}-byte allocation its handle opens"
            )
        self._regions[name] = region

    def _cuda(self, name: str) -> CudaRuntime:
        if self._runtime is None:
            try:
                self._runtime = CudaRuntime()
            except CudaUnavailable as error:
                raise InvalidArgument(
                    f"cannot register CUDA shared memory region '{name}': {error}; register the tensors' "
                    "host copies as system shared memory (/v2/systemsharedmemory)"
                ) from None
        return self._runtime


class SharedMemory:
    """Both kinds of region; requests name a region without saying its kind."""

    def __init__(self):
        self.system = SystemSharedMemory(self)
        self.cuda = CudaSharedMemory(self)

    def find(self, name: str) -> "SystemRegion | CudaRegion | None":
        return self.system.get(name) or self.cuda.get(name)

    def read(self, use: RegionUse) -> bytes:
        return self._span(use).read(use.offset, use.byte_size)

    def array(self, use: RegionUse, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray | None:
        """Where a tensor of `dtype` and `shape` fits the span of a system region: the span as an array
        that an execution writes its output into (else None: `write` copies it there, or says why not)."""
        region = self._span(use)
        if not isinstance(region, SystemRegion) or not 0 < math.prod(shape) * dtype.itemsize <= use.byte_size:
            return None
        return region.array(use.offset, dtype, shape)

    def write(self, use: RegionUse, data: bytes | memoryview) -> None:
        if len(data) > use.byte_size:
            raise InvalidArgument(
                f"output needs {len(data)} bytes but shared memory region '{use.name}' was given "
                f"{use.byte_size}"
            )
        self._span(use).write(use.offset, data)

    def _span(self, use: RegionUse):
        region = self.find(use.name)
        if region is None:
            raise NotFound(f"Unable to find shared memory region: '{use.name}'")
        if use.offset + use.byte_size > region.byte_size:
            raise InvalidArgument(
                f"shared memory region '{use.name}' holds {region.byte_size} bytes; offset {use.offset} + "
                f"byte_size {use.byte_size} is past its end"
            )
        return region
