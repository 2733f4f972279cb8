"""glibc's allocator told to keep request-sized buffers. By default it hands a freed buffer of a few MB
back to the system (unmapped, or trimmed off the heap's top), so the next request's buffer of the same
size is mapped again and every page of it faults on first touch, which cost more than copying the tensor
(tests/test_grpc_wire.py counts a 4 MB request's page faults)."""

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # <malloc.h>: free memory at a heap's top kept before it is returned
M_MMAP_THRESHOLD = -3  # allocations at least this large get their own mapping, unmapped when freed
LARGEST_FROM_HEAP = 32 << 20  # glibc's ceiling for the mmap threshold on 64-bit systems
KEPT_FREE = 64 << 20
OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_request_buffers() -> bool:
    """Buffers up to 32 MB come from the heap and up to 64 MB of free memory stays there for the next
    request. Not where the allocator is not glibc's, or where the operator tuned it (MALLOC_*_ variables
    of the environment, read by glibc itself). True where applied."""
    if platform.libc_ver()[0] != "glibc" or any(name in os.environ for name in OPERATOR_SETTINGS):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_THRESHOLD, LARGEST_FROM_HEAP)) and bool(mallopt(M_TRIM_THRESHOLD, KEPT_FREE))
