"""The answers of one ModelStreamInfer stream, in the order they may leave it: as in Triton, a plain
model's answers in the order of their requests (each held until those before it have left) and a
decoupled model's responses as they come."""

import asyncio
from collections import deque

IN_FLIGHT = 64  # requests of one stream running or holding their answers; the stream reads no more beyond
_FREED = object()  # queued after a request's last answer: its slot frees once the writer has sent that


class StreamAnswers:
    """Items (a response and, for an error, its gRPC status) ready to leave, and the places held for
    plain requests' answers. A request holds one of the stream's slots until its last answer has been
    sent, so a client that stops reading stops the stream's reading and running too."""

    def __init__(self, in_flight: int = IN_FLIGHT):
        self._ready: asyncio.Queue = asyncio.Queue()
        self._places: deque[asyncio.Future] = deque()
        self._slots = asyncio.Semaphore(in_flight)

    async def admit(self, in_order: bool) -> asyncio.Future | None:
        """A slot for the next request (waiting for one), and its answer's place if it keeps its order."""
        await self._slots.acquire()
        if not in_order:
            return None
        self._places.append(place := asyncio.get_running_loop().create_future())
        return place

    def deliver(self, item: tuple, place: asyncio.Future | None) -> None:
        """An answer: one with no place leaves at once, one with a place once every place before it has."""
        if place is None:
            self._ready.put_nowait(item)
            return
        place.set_result(item)
        while self._places and self._places[0].done():
            self._ready.put_nowait(self._places.popleft().result())
            self._ready.put_nowait(_FREED)

    def done_out_of_order(self) -> None:
        """A request admitted without a place has given all its answers."""
        self._ready.put_nowait(_FREED)

    def close(self) -> None:
        self._ready.put_nowait(None)

    async def next(self) -> tuple | None:
        """The next item to send; None once the stream is closed and everything before it has gone. Asked
        for once the item before has been sent, it frees the slots of the requests that item ended."""
        while (item := await self._ready.get()) is _FREED:
            self._slots.release()
        return item
