"""The benchmark load client's measurement window, on a fake clock."""

import asyncio

from loadtest import client


def test_closed_loop_counts_successes_completing_in_the_window_and_every_failure(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(client.time, "perf_counter", lambda: clock[0])

    async def send(_, request):  # each request takes a quarter second; every other one fails
        clock[0] += 0.25
        return request == "ok"

    result = asyncio.run(client.closed_loop(send, ["ok", "bad"], concurrency=1, seconds=1.0, warmup=0.5))
    # completions at 0.25 (ok, warm-up), 0.5 (bad), 0.75 (ok), 1.0 (bad), 1.25 (ok), 1.5 (bad, window end)
    assert (len(result.latencies), result.failures, result.seconds) == (2, 3, 1.0)
    assert result.latencies == [0.25, 0.25] and result.requests_per_s == 2.0
    assert result.completed == 3  # the warm-up's success too: what the server worked for


def test_http_connection_reads_chunked_and_sized_answers_on_one_connection():
    answers = [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n",
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
    ]

    async def serve(reader, writer):
        for answer in answers:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            writer.write(answer)
        writer.close()

    async def main():
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        connection = client.HttpConnection("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            return [await connection.post("/", b"{}") for _ in answers]
        finally:
            connection.close()
            server.close()

    assert asyncio.run(main()) == [(200, b"hello world"), (503, b"busy")]
