"""Where large tensors cost the server CPU: an identity model (FP32 [1, n] in, the same out) fed tensors from
16 KB to 16 MB over HTTP binary, HTTP JSON (up to 1 MB), gRPC raw_input_contents and system shared memory
(input and output in regions), one client at a time, interleaved rounds. Reports the server's CPU per
request and per MB moved in (the same MB come back out), and the middle round's. Writes the "bytes"
section of BENCHMARKS.md.

    python -m loadtest.bench_bytes [--seconds 2] [--rounds 3]
"""

import argparse
import asyncio
import contextlib
import json
import tempfile
from multiprocessing import shared_memory
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper

from loadtest import client, report
from loadtest.peer_servers import start_echo_floor
from loadtest.server_process import cpu_seconds, start_server, stop_server

SIZES = (16 << 10, 256 << 10, 4 << 20, 16 << 20)
JSON_UP_TO = 1 << 20
KEY = "ortserve_bench_bytes"
FLOORED = {"HTTP binary": "HTTP binary, echo floor", "gRPC": "gRPC, echo floor"}
TARGETS = {"HTTP binary": 0.3, "gRPC": 0.3, "shared memory": 0.15}  # ms of server CPU per MB


def identity_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def loads(values: np.ndarray) -> dict[str, object]:
    """Each transport's request for `values`: (body, headers) for HTTP, serialized bytes for gRPC."""
    shape = [1, int(values.size)]
    binary = {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape,
                          "parameters": {"binary_data_size": values.nbytes}}],
              "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
    def region(name: str) -> dict:
        return {"shared_memory_region": name, "shared_memory_byte_size": values.nbytes}

    shm = {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "parameters": region("in")}],
           "outputs": [{"name": "y", "parameters": region("out")}]}
    header = json.dumps(binary).encode()
    chosen = {
        "HTTP binary": (header + values.tobytes(), {"Inference-Header-Content-Length": str(len(header))}),
        "gRPC": client.grpc_message("identity", {"x": values.reshape(shape)}),
        "shared memory": (json.dumps(shm).encode(), {}),
    }
    if values.nbytes <= JSON_UP_TO:
        document = {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": values.tolist()}]}
        chosen["HTTP JSON"] = (json.dumps(document).encode(), {"Content-Type": "application/json"})
    return chosen


async def one_load(target: tuple[int, str], body, seconds: float) -> client.Result:
    """`target`: (HTTP port, gRPC address)."""
    if isinstance(body, bytes):
        return await client.grpc_load(target[1], [body], 1, seconds)
    return await client.http_load(target[0], "/v2/models/identity/infer", [body], 1, seconds)


def measure(target: tuple[int, str], pid: int, body, seconds: float,
            label: str) -> tuple[client.Result, float]:
    """A load and the server's CPU seconds per request it answered."""
    before = cpu_seconds(pid)
    result = asyncio.run(one_load(target, body, seconds))
    cpu = cpu_seconds(pid) - before
    if result.failures:
        raise RuntimeError(f"{label}: {result.failures} requests failed")
    return result, cpu / max(result.completed, 1)


def run(seconds: float, rounds: int) -> tuple[list[list], dict, str]:
    largest = max(SIZES)
    rng = np.random.default_rng(0)
    measured: dict[tuple[int, str], list[tuple[client.Result, float]]] = {}
    with tempfile.TemporaryDirectory() as work, contextlib.ExitStack() as cleanup:
        regions = {}
        for name in ("in", "out"):
            regions[name] = shared_memory.SharedMemory(name=f"{KEY}_{name}", create=True, size=largest)
            cleanup.callback(regions[name].unlink)
            cleanup.callback(regions[name].close)
        root = Path(work) / "repository"
        (root / "identity" / "1").mkdir(parents=True)
        onnx.save(identity_model(), root / "identity" / "1" / "model.onnx")
        (root / "identity" / "config.pbtxt").write_text("max_batch_size: 0\n")
        server = start_server(root, Path(work) / "server.log", "--access-log", "false",
                              "--max-request-bytes", str(4 * largest), ready_model="identity")
        cleanup.callback(stop_server, server)
        floor = start_echo_floor(Path(work))
        cleanup.callback(floor.stop)
        ortserve_target = (server.http_port, server.grpc_url)
        floor_target = (floor.http_port, f"127.0.0.1:{floor.grpc_port}")
        for name, region in regions.items():
            httpx.post(f"http://{server.http_url}/v2/systemsharedmemory/region/{name}/register",
                       json={"key": region.name, "offset": 0, "byte_size": largest}).raise_for_status()
        for size in SIZES:
            values = rng.standard_normal(size // 4).astype(np.float32)
            np.ndarray(values.shape, np.float32, buffer=regions["in"].buf)[:] = values
            for _ in range(rounds):
                for transport, body in loads(values).items():
                    runs = [(transport, ortserve_target, server.process.pid)]
                    if transport in FLOORED:
                        runs.append((FLOORED[transport], floor_target, floor.process.pid))
                    for label, target, pid in runs:
                        measured.setdefault((size, label), []).append(
                            measure(target, pid, body, seconds, f"{label}, {_size(size)}"))
    rows, per_mb = [], {}
    for (size, transport), results in measured.items():
        result, cpu = report.middle(results, key=lambda pair: pair[1])
        mb = size / (1 << 20)
        per_mb[size, transport] = cpu * 1000 / mb  # the middle round's: the rounds' median
        every = ", ".join(f"{c * 1000 / mb:.3f}" for _, c in results)
        rows.append([_size(size), transport, f"{result.requests_per_s:.0f}", f"{result.percentile(50):.2f}",
                     f"{cpu * 1000:.3f}", f"{per_mb[size, transport]:.3f}", every])
    command = f"python -m loadtest.bench_bytes --seconds {seconds:g} --rounds {rounds}"
    return rows, per_mb, (
        f"{report.machine()}. `{command}`: an identity model, FP32 [1, n] in and out, one client; "
        "server CPU is the server process's user + system time over a load divided by the requests it "
        "served; per MB of the input (the same MB come back); the middle round's, every round's per-MB "
        "figure after it. Echo floor rows: the same requests to `loadtest/peers/echo_floor.py`, uvicorn "
        "(httptools, uvloop) and grpc.aio answering each request with its own bytes, nothing parsed or "
        "run: what loopback TCP, the event loop and the protocol libraries cost per MB on this machine.")


def targets(per_mb: dict) -> str:
    """Issue 40's rows at 4 MB: server CPU per MB against its target and against the echo floor."""
    size, lines = 4 << 20, []
    for transport, target in TARGETS.items():
        mine = per_mb.get((size, transport))
        if mine is None:
            continue
        floor = per_mb.get((size, FLOORED.get(transport, "")))
        beside = f"; the echo floor {floor:.3f} ms/MB, ortserve {mine / floor:.2f}x it" if floor else ""
        verdict = "met" if mine <= target else "**MISSED**"
        lines.append(f"- 4 MB, {transport}: {mine:.3f} ms of server CPU per MB (median of the rounds)"
                     f"{beside}; target <= {target} ms/MB: {verdict}")
    return "\n".join(lines)


def _size(size: int) -> str:
    return f"{size >> 20} MB" if size >= 1 << 20 else f"{size >> 10} KB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows, per_mb, intro = run(args.seconds, args.rounds)
    table = report.table(["tensor", "transport", "requests/s", "p50 ms", "server CPU ms / request",
                          "server CPU ms / MB", "ms / MB by round"], rows)
    body = f"## Bytes\n\n{intro}\n\n{targets(per_mb)}\n\n{table}\n"
    report.write_section("bytes", body)
    print(body)


if __name__ == "__main__":
    main()
