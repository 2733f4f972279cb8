"""Request bodies read by the HTTP front end: decompression of a large body leaves the event loop free."""

import asyncio
import gzip

import numpy as np
import pytest
from starlette.requests import Request

from server.api.http.body import INFLATE_IN_THREAD_FROM, read_body
from server.core.errors import InvalidArgument


def test_a_large_compressed_body_is_decompressed_while_the_event_loop_serves_others():
    payload = np.random.default_rng(0).integers(0, 2, 48 << 20, dtype=np.uint8).tobytes()
    compressed = gzip.compress(payload, 1)
    assert len(compressed) >= INFLATE_IN_THREAD_FROM

    async def receive():
        return {"type": "http.request", "body": compressed, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-encoding", b"gzip")]}

    async def read_while_ticking() -> tuple[bytes, int]:
        ticks, reading = 0, True

        async def tick():
            nonlocal ticks
            while reading:
                await asyncio.sleep(0.001)
                ticks += 1

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)
        ticks = 0
        body = await read_body(Request(scope, receive), limit=64 << 20)
        during, reading = ticks, False
        await ticker
        return body, during

    body, ticks = asyncio.run(read_while_ticking())
    assert body == payload
    assert ticks >= 5  # on the event loop's own thread the decompression would let none run


def _read(chunks: list[bytes], headers: list[tuple[bytes, bytes]]):
    messages = [{"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks]
    messages.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive():
        return messages.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    return asyncio.run(read_body(Request(scope, receive), limit=64 << 20))


def test_a_body_in_several_chunks_is_gathered_whole_and_one_in_a_single_chunk_is_kept_as_it_came():
    rng = np.random.default_rng(1)
    chunks = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for size in (65536, 70000, 3)]
    whole = b"".join(chunks)
    declared = [(b"content-length", str(len(whole)).encode())]
    assert bytes(_read(chunks, declared)) == whole
    assert bytes(_read(chunks, [])) == whole  # chunked transfer: no length declared
    single = chunks[1]
    assert _read([single], [(b"content-length", str(len(single)).encode())]) is single  # not copied
    assert _read([], [(b"content-length", b"0")]) == b""


def test_a_body_longer_than_its_content_length_is_refused_naming_the_length():
    with pytest.raises(InvalidArgument, match="longer than its Content-Length of 10 bytes"):
        _read([b"x" * 8, b"y" * 8], [(b"content-length", b"10")])
