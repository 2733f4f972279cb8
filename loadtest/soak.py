"""Soak: minutes of mixed traffic against one server, with its memory sampled.

Infer over HTTP (binary) and gRPC on `simple`, generation streams on `gpt` that half the time leave after a
few tokens (the server must abort them), and a reload of `simple` every few seconds. Passes when no request
fails (503s from a full queue are counted apart, as deliberate refusals) and the server's resident memory
after the warm-up grows by less than 5%. Writes the "soak" section of BENCHMARKS.md.
"""

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np

from loadtest import client, report
from loadtest.server_process import start_server, stop_server
from server.protocol import SERVICE_NAME, message

MAX_GROWTH = 0.05


@dataclass
class Tally:
    ok: dict[str, int] = field(default_factory=dict)
    refused: int = 0  # 503: a full queue, deliberate
    failed: int = 0
    examples: list[str] = field(default_factory=list)  # the first failures, for the report

    def count(self, kind: str, status: int, detail: str = "") -> None:
        if status == 200:
            self.ok[kind] = self.ok.get(kind, 0) + 1
        elif status == 503:
            self.refused += 1
        else:
            self.failed += 1
            if len(self.examples) < 20:
                self.examples.append(f"{kind}: {status} {detail[:200]}")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def http_infer(port: int, stop_at: float, tally: Tally) -> None:
    data = np.arange(16, dtype="<i4").tobytes()
    inputs = [{"name": n, "datatype": "INT32", "shape": [1, 16], "parameters": {"binary_data_size": 64}}
              for n in ("INPUT0", "INPUT1")]
    header = json.dumps({"inputs": inputs}).encode()
    connection = client.HttpConnection("127.0.0.1", port)
    try:
        while time.monotonic() < stop_at:
            status, body = await connection.post("/v2/models/simple/infer", header + data * 2,
                                                 {"Inference-Header-Content-Length": str(len(header))})
            tally.count("http infer", status, body.decode(errors="replace"))
    finally:
        connection.close()


async def grpc_infer(port: int, stop_at: float, tally: Tally) -> None:
    request = message("ModelInferRequest")(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(np.arange(16, dtype="<i4").tobytes())
    payload = request.SerializeToString()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(f"/{SERVICE_NAME}/ModelInfer")
        while time.monotonic() < stop_at:
            try:
                await call(payload)
                tally.count("grpc infer", 200)
            except grpc.aio.AioRpcError as error:
                status = 503 if error.code() == grpc.StatusCode.UNAVAILABLE else 500
                tally.count("grpc infer", status, f"{error.code()} {error.details()}")


async def streams(port: int, stop_at: float, tally: Tally, worker: int) -> None:
    body = {"text_input": "def ", "parameters": {"max_tokens": 48, "temperature": 0.8, "ignore_eos": True}}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        round_ = 0
        while time.monotonic() < stop_at:
            round_ += 1
            leave_early = (round_ + worker) % 2 == 0
            async with http.stream("POST", "/v2/models/gpt/generate_stream", json=body) as response:
                if response.status_code != 200:
                    tally.count("generation", response.status_code, (await response.aread()).decode())
                    continue
                events = 0
                async for line in response.aiter_lines():
                    events += line.startswith("data: ")
                    if leave_early and events == 3:
                        break  # the client goes: the server must abort the sequence
            tally.count("generation (left early)" if leave_early else "generation", 200)


async def reloads(port: int, stop_at: float, tally: Tally, every: float) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
        while time.monotonic() < stop_at:
            await asyncio.sleep(every)
            response = await http.post("/v2/repository/models/simple/load")
            tally.count("reload", response.status_code, response.text)


async def sample_memory(pid: int, stop_at: float, samples: list[tuple[float, int]], every: float) -> None:
    start = time.monotonic()
    while time.monotonic() < stop_at:
        samples.append((time.monotonic() - start, rss_bytes(pid)))
        await asyncio.sleep(every)


async def traffic(server, seconds: float, samples) -> Tally:
    tally, stop_at = Tally(), time.monotonic() + seconds
    every = max(seconds / 120, 1.0)
    await asyncio.gather(
        *(http_infer(server.http_port, stop_at, tally) for _ in range(4)),
        *(grpc_infer(server.grpc_port, stop_at, tally) for _ in range(4)),
        *(streams(server.http_port, stop_at, tally, worker) for worker in range(2)),
        reloads(server.http_port, stop_at, tally, every=max(seconds / 60, 2.0)),
        sample_memory(server.process.pid, stop_at, samples, every),
    )
    return tally


def growth(samples: list[tuple[float, int]], warmup: float) -> tuple[float, int, int]:
    """(relative growth, RSS just after the warm-up, RSS at the end): medians of five samples each."""
    after = [rss for t, rss in samples if t >= warmup]
    first, last = statistics.median(after[:5]), statistics.median(after[-5:])
    return (last - first) / first, int(first), int(last)


def run(repository: Path, seconds: float, log: Path) -> tuple[str, bool]:
    server = start_server(repository, log, "--model-control-mode", "explicit", "--load-model", "simple",
                          "--load-model", "gpt", "--access-log", "false", ready_model="gpt")
    samples: list[tuple[float, int]] = []
    try:
        tally = asyncio.run(traffic(server, seconds, samples))
    finally:
        stop_server(server)
    warmup = seconds / 5
    change, first, last = growth(samples, warmup)
    passed = not tally.failed and change < MAX_GROWTH
    rows = [[kind, count] for kind, count in sorted(tally.ok.items())]
    rows += [["refused with 503 (full queue)", tally.refused], ["failed", tally.failed]]
    text = "\n".join([
        "## Soak",
        "",
        f"{report.machine()}. `python -m loadtest.soak --repository {repository} --seconds {seconds:g}`: "
        "4 HTTP and 4 gRPC clients on "
        "`simple`, 2 generation streams on `gpt` (every other one leaves after 3 events), a reload of "
        f"`simple` every {max(seconds / 60, 2.0):g} s; resident memory sampled {len(samples)} times.",
        "",
        report.table(["requests", "count"], rows),
        "",
        f"Resident memory after the {warmup:g} s warm-up: {first / 2**20:.1f} MiB, at the end "
        f"{last / 2**20:.1f} MiB: {change * 100:+.1f}% (target under {MAX_GROWTH * 100:g}%). Failures: "
        f"{tally.failed}. **{'met' if passed else 'missed'}**.",
        *([""] + [f"- {failure}" for failure in tally.examples] if tally.examples else []),
    ])
    return text, passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--log", type=Path, default=Path("loadtest/results/soak-server.log"))
    args = parser.parse_args()
    args.log.parent.mkdir(parents=True, exist_ok=True)
    text, passed = run(args.repository, args.seconds, args.log)
    report.write_section("soak", text)
    print(text)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
