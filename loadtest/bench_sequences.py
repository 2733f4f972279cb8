"""Streaming sequences through the sequence batcher, side by side in one run: 64 concurrent sequences
with the oldest strategy, with the direct strategy, and one sequence at a time.

A streaming LSTM (40 features a step, as speech frames; 2 layers of 256, random weights) exported by
`exporters.lstm.export_streaming`; each sequence sends 20 chunks of 16 steps over HTTP (binary tensors),
with its sequence_id, sequence_start and sequence_end, and the server keeps its state between chunks.
Rounds are interleaved; the ratio is the middle round's. Writes the "sequences" section of BENCHMARKS.md.
"""

import argparse
import asyncio
import itertools
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtest import client, report
from loadtest.server_process import start_server, stop_server

FEATURES, HIDDEN, LAYERS = 40, 256, 2
CHUNK_STEPS, CHUNKS = 16, 20
MAX_BATCH = 64
TARGET = 3.0  # oldest strategy, 64 sequences, against one sequence at a time


def build_repository(root: Path) -> None:
    import torch

    from exporters import lstm

    torch.manual_seed(0)
    model = lstm.SequenceClassifier(FEATURES, HIDDEN, 10, layers=LAYERS).eval()
    lstm.export_streaming(model, root, "stream_oldest", progress=lambda _: None)
    config = root / "stream_oldest" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 32", f"max_batch_size: {MAX_BATCH}"))
    shutil.copytree(root / "stream_oldest", root / "stream_direct")
    direct = root / "stream_direct" / "config.pbtxt"
    text = direct.read_text().replace('name: "stream_oldest"', 'name: "stream_direct"')
    direct.write_text(text.replace("oldest {\n    max_candidate_sequences: 256\n  }", "direct {\n  }"))


def chunk_request(chunk: np.ndarray, sequence_id: int, start: bool, end: bool) -> tuple[bytes, dict]:
    header = json.dumps({
        "inputs": [{"name": "sequence", "shape": list(chunk.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": chunk.nbytes}}],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        "parameters": {"sequence_id": sequence_id, "sequence_start": start, "sequence_end": end},
    }).encode()
    return header + chunk.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


async def stream_load(port: int, model: str, concurrency: int, seconds: float) -> client.Result:
    """`concurrency` workers each stream sequences one after another, a chunk per request; chunks that
    complete inside the measurement window count."""
    rng = np.random.default_rng(0)
    chunks = rng.standard_normal((CHUNKS, 1, CHUNK_STEPS, FEATURES)).astype(np.float32)
    ids = itertools.count(1 + int(time.time() * 1000) % 1_000_000 * 1000)
    result = client.Result(seconds=seconds)
    window_start = time.perf_counter() + client.WARMUP
    stop_at = window_start + seconds

    async def worker():
        connection = client.HttpConnection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                sequence_id = next(ids)
                for index, chunk in enumerate(chunks):
                    body, headers = chunk_request(chunk, sequence_id, index == 0, index == CHUNKS - 1)
                    begin = time.perf_counter()
                    status, _ = await connection.post(f"/v2/models/{model}/infer", body, headers)
                    end = time.perf_counter()
                    if status != 200:
                        result.failures += 1
                    elif window_start <= end <= stop_at:
                        result.latencies.append(end - begin)
        finally:
            connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result


def run(seconds: float, rounds: int) -> str:
    loads = [("oldest, 64 sequences", "stream_oldest", 64), ("direct, 64 sequences", "stream_direct", 64),
             ("one sequence at a time", "stream_oldest", 1)]
    with tempfile.TemporaryDirectory() as work:
        root = Path(work) / "repository"
        build_repository(root)
        server = start_server(root, Path(work) / "server.log", "--access-log", "false",
                              ready_model="stream_direct")
        try:
            measured = {label: [] for label, _, _ in loads}
            for _ in range(rounds):
                for label, model, concurrency in loads:
                    result = asyncio.run(stream_load(server.http_port, model, concurrency, seconds))
                    if result.failures:
                        log = server.output()[-2000:]
                        raise RuntimeError(f"{label}: {result.failures} chunks failed\n{log}")
                    measured[label].append(result)
        finally:
            stop_server(server)
    serial = measured["one sequence at a time"]
    rows = []
    for label, results in measured.items():
        ratios = [r.requests_per_s / s.requests_per_s for r, s in zip(results, serial)]
        middle = report.middle(list(zip(ratios, results)), key=lambda pair: pair[0])
        rows.append([
            label, f"{middle[1].requests_per_s:.0f}", f"{middle[1].percentile(50):.1f}",
            f"{middle[1].percentile(99):.1f}", f"{middle[0]:.2f}x", ", ".join(f"{r:.2f}" for r in ratios),
        ])
    oldest_ratio = float(rows[0][4].rstrip("x"))
    verdict = "met" if oldest_ratio >= TARGET else "missed"
    return "\n".join([
        "## Sequences (stateful streaming)",
        "",
        f"{report.machine()}. `python -m loadtest.bench_sequences --seconds {seconds} --rounds {rounds}`: "
        f"a streaming LSTM ({FEATURES} features, {LAYERS} x {HIDDEN}, state kept by the server), "
        f"{CHUNKS} chunks of {CHUNK_STEPS} steps a sequence over HTTP binary, max_batch_size {MAX_BATCH}; "
        f"{rounds} interleaved rounds of {seconds:g} s each, the middle round's figures.",
        "",
        report.table(["load", "chunks/s", "p50 ms", "p99 ms", "vs one at a time", "every round"], rows),
        "",
        f"Target: oldest strategy with 64 sequences at least {TARGET:g}x one sequence at a time: "
        f"{oldest_ratio:.2f}x, **{verdict}**.",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    section = run(args.seconds, args.rounds)
    report.write_section("sequences", section)
    print(section)


if __name__ == "__main__":
    main()
