"""Request bodies: size limit and Content-Encoding."""

import zlib

from starlette.requests import Request

from server.core.errors import InvalidArgument, TooLarge

_DECOMPRESSORS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed, refused once it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body is {declared} bytes, the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding not in _DECOMPRESSORS:
        raise InvalidArgument(f"unsupported Content-Encoding '{encoding}', expected gzip or deflate")
    decompressor = zlib.decompressobj(_DECOMPRESSORS[encoding])
    try:
        data = decompressor.decompress(data, limit + 1)
    except zlib.error as error:
        raise InvalidArgument(f"request body is not valid {encoding} data: {error}") from None
    if len(data) > limit or decompressor.unconsumed_tail:
        raise TooLarge(f"decompressed request body is over the limit of {limit} bytes")
    return data
