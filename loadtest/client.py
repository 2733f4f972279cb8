"""A light closed-loop load client: one asyncio process, raw HTTP/1.1 keep-alive or grpc.aio.

Locust costs too much CPU to measure a server on two cores; this client sends pre-encoded requests
and only reads the answers back, so nearly all CPU goes to the server.
"""

import asyncio
import json
import time
from dataclasses import dataclass, field

import grpc
import numpy as np

from server.protocol import SERVICE_NAME, message

DATATYPES = {np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}


def json_body(arrays: dict[str, np.ndarray]) -> bytes:
    """A KServe v2 infer request with the tensors as JSON data."""
    inputs = [{"name": name, "shape": list(a.shape), "datatype": DATATYPES[a.dtype],
               "data": a.ravel().tolist()} for name, a in arrays.items()]
    return json.dumps({"inputs": inputs}).encode()


def binary_body(arrays: dict[str, np.ndarray], outputs: list[str]) -> tuple[bytes, dict[str, str]]:
    """The binary tensor extension: a JSON header, then the raw tensors; `outputs` asked for as binary."""
    header = {
        "inputs": [{"name": name, "shape": list(a.shape), "datatype": DATATYPES[a.dtype],
                    "parameters": {"binary_data_size": a.nbytes}} for name, a in arrays.items()],
        "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs],
    }
    encoded = json.dumps(header).encode()
    body = encoded + b"".join(np.ascontiguousarray(a).tobytes() for a in arrays.values())
    return body, {"Content-Type": "application/octet-stream",
                  "Inference-Header-Content-Length": str(len(encoded))}


def grpc_message(model: str, arrays: dict[str, np.ndarray], parameters: dict | None = None,
                 request_id: str = "") -> bytes:
    """A serialized ModelInferRequest with the tensors in raw_input_contents; `parameters` (bool or int
    values) as the request's parameters."""
    request = message("ModelInferRequest")(model_name=model, id=request_id)
    for name, array in arrays.items():
        request.inputs.add(name=name, datatype=DATATYPES[array.dtype], shape=array.shape)
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    for key, value in (parameters or {}).items():
        setattr(request.parameters[key], "bool_param" if isinstance(value, bool) else "int64_param", value)
    return request.SerializeToString()


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds
    failures: int = 0
    seconds: float = 0.0
    completed: int = 0  # every success, the warm-up's too: what the server worked for

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


class HttpConnection:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.writer.write(head.encode() + b"\r\n" + body)
        status_line = await self.reader.readline()
        length, chunked = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding":
                chunked = "chunked" in value.lower()
        body = await self._chunks() if chunked else await self.reader.readexactly(length)
        return int(status_line.split()[1]), body

    async def _chunks(self) -> bytes:
        parts = []
        while size := int((await self.reader.readline()).split(b";")[0], 16):
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)  # the chunk's CRLF
        while await self.reader.readline() not in (b"\r\n", b""):  # trailers
            pass
        return b"".join(parts)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


WARMUP = 0.5  # seconds of load before the measurement window: the start of a closed loop is no steady state


async def closed_loop(send, requests, concurrency: int, seconds: float, warmup: float = WARMUP) -> Result:
    """`concurrency` workers send `requests` round robin for `warmup` + `seconds`; send() returns success.
    Throughput and latencies count the requests that complete within the last `seconds` (the
    measurement window): neither the ramp-up nor the requests drained after it; failures count always."""
    result = Result(seconds=seconds)
    window_start = time.perf_counter() + warmup
    stop_at = window_start + seconds

    async def worker(index: int):
        position = index
        while time.perf_counter() < stop_at:
            request = requests[position % len(requests)]
            position += concurrency
            start = time.perf_counter()
            ok = await send(index, request)
            end = time.perf_counter()
            if not ok:
                result.failures += 1
                continue
            result.completed += 1
            if window_start <= end <= stop_at:
                result.latencies.append(end - start)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return result


async def http_load(port: int, path: str, bodies: list[tuple[bytes, dict]], concurrency: int,
                    seconds: float) -> Result:
    """A closed loop of POSTs of (body, headers) to `path` on loopback, one keep-alive connection per
    worker; a connection the server broke counts a failure and is opened again."""
    connections = [HttpConnection("127.0.0.1", port) for _ in range(concurrency)]

    async def send(index, item):
        try:
            status, _ = await connections[index].post(path, *item)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            connections[index].close()
            connections[index] = HttpConnection("127.0.0.1", port)
            return False
        return status == 200

    try:
        return await closed_loop(send, bodies, concurrency, seconds)
    finally:
        for connection in connections:
            connection.close()


async def grpc_load(address, messages: list[bytes], concurrency, seconds) -> Result:
    unbounded = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(address, options=unbounded) as channel:  # tensor-sized answers
        call = channel.unary_unary(f"/{SERVICE_NAME}/ModelInfer")

        async def send(_, message):
            try:
                await call(message)
            except grpc.aio.AioRpcError:
                return False
            return True

        return await closed_loop(send, messages, concurrency, seconds)


async def grpc_stream_load(address, messages: list[bytes], in_flight: int, seconds: float) -> Result:
    """A closed loop of `in_flight` requests at a time on one ModelStreamInfer stream: each worker sends
    its next request once the answer to its last one (matched by the request id, the worker's index)
    has come back; an error answer counts a failure."""
    answer = message("ModelStreamInferResponse").FromString
    # worker i sends positions i, i + in_flight, ...: each of its requests carries the id i
    requests = [_with_id(messages[(position // in_flight) % len(messages)], str(position % in_flight))
                for position in range(len(messages) * in_flight)]
    async with grpc.aio.insecure_channel(address) as channel:
        stream = channel.stream_stream(f"/{SERVICE_NAME}/ModelStreamInfer", response_deserializer=answer)()
        waiting: dict[str, asyncio.Future] = {}
        writing = asyncio.Lock()  # one write at a time on a stream

        async def read():
            try:
                async for response in stream:
                    if response.infer_response.id not in waiting:
                        raise RuntimeError(f"an answer to no request in flight: {response.error_message}")
                    waiting.pop(response.infer_response.id).set_result(not response.error_message)
            finally:
                for future in waiting.values():
                    if not future.done():
                        future.set_result(False)

        async def send(index, request):
            if reader.done():  # the stream ended: nothing sent gets an answer
                return False
            waiting[str(index)] = future = asyncio.get_running_loop().create_future()
            async with writing:
                await stream.write(request)
            return await future

        reader = asyncio.create_task(read())
        try:
            return await closed_loop(send, requests, in_flight, seconds)
        finally:
            await stream.done_writing()
            await reader


def _with_id(serialized: bytes, request_id: str) -> bytes:
    request = message("ModelInferRequest").FromString(serialized)
    request.id = request_id
    return request.SerializeToString()
