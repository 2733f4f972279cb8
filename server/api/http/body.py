"""Request bodies: size limit and Content-Encoding, refused with Triton's status (400) and words."""

import asyncio
import zlib

import numpy as np
from starlette.requests import Request

from server.core.errors import InvalidArgument

_DECOMPRESSORS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_RAISE_IT = "Use --http-max-input-size to increase the limit."
# compressed bodies of this size or more are inflated in a thread (zlib lets go of the GIL), so the event
# loop serves other requests meanwhile; a smaller one inflates to about 1 MB at most (deflate's largest
# ratio is about 1:1032), quicker than the hand-over
INFLATE_IN_THREAD_FROM = 1 << 10


async def read_body(request: Request, limit: int, what: str = "Request JSON") -> bytes | memoryview:
    """The request body, decompressed, refused once it passes `limit` bytes. `what` names the body in
    the refusal as Triton does: "Request JSON", or "Request" for raw and binary bodies."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit():
        if int(declared) > limit:
            raise _too_large(what, int(declared), limit)
        data = await _gathered(request, int(declared))
    else:
        data = await _joined(request, limit, what)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding not in _DECOMPRESSORS:
        raise InvalidArgument(f"unsupported Content-Encoding '{encoding}', expected gzip or deflate")
    if len(data) < INFLATE_IN_THREAD_FROM:
        return _decompressed(data, encoding, limit, what)
    return await asyncio.to_thread(_decompressed, data, encoding, limit, what)


async def _gathered(request: Request, length: int) -> bytes | memoryview:
    """A body of a declared length: one chunk as it is; several copied into one buffer each as it comes,
    while it is still in the CPU's cache (joined at the end, they would all be read back from memory)."""
    first, buffer, filled = None, None, 0
    async for chunk in request.stream():
        if not chunk:
            continue
        if first is None:
            first = chunk
            continue
        if buffer is None:
            buffer = np.empty(length, np.uint8)
            filled = _put(buffer, 0, first)
        filled = _put(buffer, filled, chunk)
    if buffer is None:
        return first or b""
    return memoryview(buffer)[:filled]


def _put(buffer: np.ndarray, at: int, chunk: bytes) -> int:
    end = at + len(chunk)
    if end > len(buffer):
        raise InvalidArgument(f"request body is longer than its Content-Length of {len(buffer)} bytes")
    buffer[at:end] = np.frombuffer(chunk, np.uint8)
    return end


async def _joined(request: Request, limit: int, what: str) -> bytes:
    """A body of no declared length (chunked): refused past `limit` once read to its end (not kept), so
    the refusal names the size and the connection lives."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise _too_large(what, size, limit)
    return b"".join(chunks)


def _decompressed(data: bytes, encoding: str, limit: int, what: str) -> bytes:
    decompressor = zlib.decompressobj(_DECOMPRESSORS[encoding])
    try:
        data = decompressor.decompress(data, limit + 1)
    except zlib.error as error:
        raise InvalidArgument(f"request body is not valid {encoding} data: {error}") from None
    if len(data) > limit or decompressor.unconsumed_tail:
        raise InvalidArgument(
            f"{what} size once decompressed ({encoding}) exceeds the maximum allowed value of {limit} "
            f"bytes. {_RAISE_IT}"
        )
    return data


def _too_large(what: str, size: int, limit: int) -> InvalidArgument:
    return InvalidArgument(
        f"{what} size of {size} bytes exceeds the maximum allowed value of {limit} bytes. {_RAISE_IT}"
    )
