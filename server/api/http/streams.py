"""Token streams over HTTP: collected whole (aborted when the client leaves), or sent as server-sent
events."""

import asyncio
import json
from collections.abc import AsyncIterator, Callable

from fastapi import Request

from server.core.errors import ServerError, Unavailable
from server.core.types import TokenEvent

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(document) -> str:
    return f"data: {json.dumps(document)}\n\n"


async def collect(request: Request, streams: list) -> list[TokenEvent]:
    """Every stream's whole generation; a client that leaves first aborts them (their sequences leave the
    batch at the next step), as a closed stream does."""
    collecting = asyncio.ensure_future(asyncio.gather(*(tokens.collect() for tokens in streams)))
    leaving = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({collecting, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        leaving.cancel()
        failed = collecting.done() and not collecting.cancelled() and collecting.exception() is not None
        if not collecting.done() or failed:  # the client left, or one choice failed: end the others
            collecting.cancel()
            for tokens in streams:
                await tokens.aclose()
    if collecting.cancelled():
        raise Unavailable("the client closed the connection; its generation was aborted")
    return collecting.result()


async def _disconnected(request: Request) -> None:
    """Returns when the client closes its connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def events(tokens: AsyncIterator[TokenEvent], encode: Callable[[TokenEvent], dict]):
    """Each event as `encode` writes it; an error as Triton's `{"error": ...}` event."""
    try:
        async for event in tokens:
            yield sse(encode(event))
    except ServerError as error:
        yield sse({"error": error.message})
    finally:
        await tokens.aclose()  # a client gone: the sequence leaves the batch


def usage(prompt: int, completion: int, cached: int | None = None) -> dict:
    """Token counts as OpenAI's usage; `cached`: the prompt tokens read from the prefix cache."""
    counts = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached is not None:
        counts["prompt_tokens_details"] = {"cached_tokens": cached}
    return counts
