"""An image-sized input (FP32 8 x 3 x 224 x 224, 4.8 MB) through system shared memory, HTTP binary and
gRPC (and CUDA shared memory where cuda-python finds a GPU), side by side in one run: requests/s, p50 and
the server's CPU time per request, one client at a time (the transport's own cost, not batching).
Interleaved rounds; the middle round of each. Writes the "shared memory" section of BENCHMARKS.md, or
"shared memory on a GPU machine" where the CUDA row was measured."""

import argparse
import asyncio
import json
import tempfile
from multiprocessing import shared_memory
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper

from loadtest import client, report
from loadtest.server_process import cpu_seconds, start_server, stop_server
from server.core.cuda_ipc import cuda_device_count

SHAPE = (8, 3, 224, 224)
REGION, KEY = "bench_images", "ortserve_bench_images"
CUDA_REGION = "bench_images_gpu"


def mean_model() -> onnx.ModelProto:
    """images FP32[8, 3, 224, 224] -> means FP32[8]: almost no compute, so the transport shows."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["means"], axes=[1, 2, 3], keepdims=0)],
        "mean",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("means", TensorProto.FLOAT, [SHAPE[0]])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def http_bodies(images: np.ndarray, cuda: bool) -> dict[str, tuple[bytes, dict]]:
    outputs = [{"name": "means", "parameters": {"binary_data": True}}]

    def request(parameters: dict) -> dict:
        tensor = {"name": "images", "datatype": "FP32", "shape": list(SHAPE), "parameters": parameters}
        return {"inputs": [tensor], "outputs": outputs}

    def in_region(name: str) -> dict:
        return request({"shared_memory_region": name, "shared_memory_byte_size": images.nbytes})

    loads = [("HTTP binary", request({"binary_data_size": images.nbytes}), images.tobytes()),
             ("shared memory (HTTP)", in_region(REGION), b"")]
    if cuda:
        loads.append(("CUDA shared memory (HTTP)", in_region(CUDA_REGION), b""))
    bodies = {}
    for name, header, data in loads:
        encoded = json.dumps(header).encode()
        bodies[name] = (encoded + data, {"Inference-Header-Content-Length": str(len(encoded))})
    return bodies


def register_gpu_copy(http_url: str, images: np.ndarray):
    """The images in a GPU allocation, registered as a CUDA shared memory region; its handle."""
    import tritonclient.utils.cuda_shared_memory as cudashm

    handle = cudashm.create_shared_memory_region(CUDA_REGION, images.nbytes, 0)
    cudashm.set_shared_memory_region(handle, [images])
    registration = {"raw_handle": {"b64": cudashm.get_raw_handle(handle).decode()}, "device_id": 0,
                    "byte_size": images.nbytes}
    httpx.post(f"http://{http_url}/v2/cudasharedmemory/region/{CUDA_REGION}/register",
               json=registration).raise_for_status()
    return handle


def run(seconds: float, rounds: int, cuda: bool) -> str:
    images = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    region = shared_memory.SharedMemory(name=KEY, create=True, size=images.nbytes)
    np.ndarray(SHAPE, np.float32, buffer=region.buf)[:] = images
    with tempfile.TemporaryDirectory() as work:
        root = Path(work) / "repository"
        (root / "mean" / "1").mkdir(parents=True)
        onnx.save(mean_model(), root / "mean" / "1" / "model.onnx")
        (root / "mean" / "config.pbtxt").write_text("max_batch_size: 0\n")
        server = start_server(root, Path(work) / "server.log", "--access-log", "false", ready_model="mean")
        loads = {**http_bodies(images, cuda), "gRPC": None}
        measured = {name: [] for name in loads}
        gpu_copy = None
        try:
            httpx.post(f"http://{server.http_url}/v2/systemsharedmemory/region/{REGION}/register",
                       json={"key": KEY, "offset": 0, "byte_size": images.nbytes}).raise_for_status()
            gpu_copy = register_gpu_copy(server.http_url, images) if cuda else None
            for _ in range(rounds):
                for name, body in loads.items():
                    before = cpu_seconds(server.process.pid)
                    if body is None:
                        messages = [client.grpc_message("mean", {"images": images})]
                        result = asyncio.run(client.grpc_load(server.grpc_url, messages, 1, seconds))
                    else:
                        load = client.http_load(server.http_port, "/v2/models/mean/infer", [body], 1, seconds)
                        result = asyncio.run(load)
                    cpu = cpu_seconds(server.process.pid) - before
                    if result.failures:
                        log = server.output()[-2000:]
                        raise RuntimeError(f"{name}: {result.failures} requests failed\n{log}")
                    served = result.requests_per_s * (seconds + client.WARMUP)  # warm-up included
                    measured[name].append((result, cpu / max(served, 1)))
        finally:
            stop_server(server)
            region.close()
            region.unlink()
            if gpu_copy is not None:
                import tritonclient.utils.cuda_shared_memory as cudashm

                cudashm.destroy_shared_memory_region(gpu_copy)
    rows = []
    for name, results in measured.items():
        result, cpu = report.middle(results, key=lambda pair: pair[0].percentile(50))
        every = ", ".join(f"{r.percentile(50):.2f}" for r, _ in results)
        rate, p50 = f"{result.requests_per_s:.0f}", f"{result.percentile(50):.2f}"
        rows.append([name, rate, p50, f"{cpu * 1000:.2f}", every])
    return "\n".join([
        "## Shared memory" + (" on a GPU machine" if cuda else ""),
        "",
        f"{report.machine()}. `python -m loadtest.bench_shared_memory --seconds {seconds:g} "
        f"--rounds {rounds}`: "
        f"FP32 {list(SHAPE)} ({images.nbytes / 1e6:.1f} MB) into a model that only averages it, one client, "
        f"{rounds} interleaved rounds of {seconds:g} s; server CPU is the server process's user + system "
        "time over a load divided by the requests it served.",
        "",
        report.table(["transport", "requests/s", "p50 ms", "server CPU ms / request", "p50 by round"], rows),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cuda = cuda_device_count() > 0
    section = run(args.seconds, args.rounds, cuda)
    report.write_section("shared memory on a GPU machine" if cuda else "shared memory", section)
    print(section)


if __name__ == "__main__":
    main()
