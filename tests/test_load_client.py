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
