"""The CUDA calls behind CUDA shared memory, through cuda-python's bindings (as tritonclient's own CUDA
shared memory utilities): open a client's IPC handle, copy between the allocation and host memory."""

import ctypes

import numpy as np

LAZY_ENABLE_PEER_ACCESS = 1  # cudaIpcMemLazyEnablePeerAccess, the one flag cudaIpcOpenMemHandle takes


class CudaUnavailable(Exception):
    """The CUDA runtime is missing, finds no GPU, or refused a call; the message says which."""


def cuda_device_count() -> int:
    """How many CUDA GPUs cuda-python sees here; 0 without cuda-python or a driver."""
    try:
        return CudaRuntime().device_count
    except CudaUnavailable:
        return 0


class CudaRuntime:
    def __init__(self):
        try:
            from cuda.bindings import driver, runtime
        except ImportError:
            raise CudaUnavailable("CUDA shared memory needs cuda-python (ortserve[gpu])") from None
        self._runtime, self._driver = runtime, driver
        try:
            count = self._call(runtime.cudaGetDeviceCount(), "cudaGetDeviceCount")
        except CudaUnavailable as error:
            raise CudaUnavailable(f"CUDA shared memory needs a CUDA GPU ({error})") from None
        if count == 0:
            raise CudaUnavailable("CUDA shared memory needs a CUDA GPU and this machine has none")
        self.device_count = count

    def open(self, raw_handle: bytes, device_id: int) -> tuple[int, int]:
        """The device pointer that the handle opens, and the size of the allocation it points into."""
        runtime = self._runtime
        self._call(runtime.cudaSetDevice(device_id), f"cudaSetDevice({device_id})")
        handle = runtime.cudaIpcMemHandle_t()
        ctypes.memmove(handle.getPtr(), raw_handle, len(raw_handle))
        opened = runtime.cudaIpcOpenMemHandle(handle, LAZY_ENABLE_PEER_ACCESS)
        pointer = int(self._call(opened, "cudaIpcOpenMemHandle"))
        base, size = self._call_many(
            self._driver.cuMemGetAddressRange(self._driver.CUdeviceptr(pointer)), "cuMemGetAddressRange"
        )
        return pointer, int(size) - (pointer - int(base))

    def close(self, device_id: int, pointer: int) -> None:
        self._call(self._runtime.cudaSetDevice(device_id), f"cudaSetDevice({device_id})")
        self._call(self._runtime.cudaIpcCloseMemHandle(pointer), "cudaIpcCloseMemHandle")

    def to_host(self, device_id: int, pointer: int, size: int) -> memoryview:
        host = np.empty(size, np.uint8)
        self._copy(device_id, host.ctypes.data, pointer, size, "cudaMemcpyDeviceToHost")
        return host.data

    def to_device(self, device_id: int, pointer: int, data: bytes | memoryview) -> None:
        host = np.frombuffer(data, np.uint8)
        self._copy(device_id, pointer, host.ctypes.data, host.size, "cudaMemcpyHostToDevice")

    def _copy(self, device_id: int, target: int, source: int, size: int, direction: str) -> None:
        runtime = self._runtime
        self._call(runtime.cudaSetDevice(device_id), f"cudaSetDevice({device_id})")
        kind = getattr(runtime.cudaMemcpyKind, direction)
        self._call(runtime.cudaMemcpy(target, source, size, kind), direction)

    def _call(self, result: tuple, what: str):
        values = self._call_many(result, what)
        return values[0] if values else None

    def _call_many(self, result: tuple, what: str) -> tuple:
        error, *values = result
        if getattr(error, "value", error) != 0:
            name = getattr(error, "name", str(error))
            raise CudaUnavailable(f"{what} failed: {name}")
        return tuple(values)
