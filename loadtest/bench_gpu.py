"""ONNX Runtime on a CUDA GPU, side by side in one run: ResNet-50 and a BERT-base encoder (random
weights, exported by ortserve's exporters in fp32 and fp16) in process on CPU and on CUDA, with and
without IO binding, and served by ortserve from a KIND_GPU instance over HTTP. Needs onnxruntime-gpu
and a GPU: elsewhere it says so and writes nothing. Writes the "gpu" section of BENCHMARKS.md."""

import argparse
import asyncio
import re
import shutil
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from loadtest import client, report
from loadtest.bench_exporters import median_ms
from loadtest.server_process import start_server, stop_server

CUDA = "CUDAExecutionProvider"
GPU_INSTANCE = "\ninstance_group [{ kind: KIND_GPU, count: 1 }]\n"
HEURISTIC = 'parameters { key: "cudnn_conv_algo_search" value: { string_value: "1" } }\n'
UNPADDED = 'parameters { key: "pad_batch" value: { string_value: "false" } }\n'
SERVED = {"resnet50": "", "resnet50_unpadded": UNPADDED, "resnet50_heuristic_unpadded": HEURISTIC + UNPADDED,
          "resnet50_fp16": ""}


def build(repository: Path) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """Exports both models (fp32 and fp16, each parity-checked by the exporter); their feeds by batch."""
    import torch
    from transformers import BertConfig, BertModel

    from exporters import bert, cnn, training

    cnn.export(training.resnet50(), repository, "resnet50", ("fp32", "fp16"), (3, 224, 224))
    torch.manual_seed(0)
    bert.export_encoder(BertModel(BertConfig()).eval(), repository, "bert_base", ("fp32", "fp16"))
    rng = np.random.default_rng(0)
    images = {b: {"pixel_values": rng.standard_normal((b, 3, 224, 224)).astype(np.float32)} for b in (1, 32)}
    tokens = {b: {"input_ids": rng.integers(1000, 30000, (b, 128)),
                  "attention_mask": np.ones((b, 128), np.int64),
                  "token_type_ids": np.zeros((b, 128), np.int64)} for b in (1, 32)}
    return {"resnet50": images, "bert_base": tokens}


def session(path: Path, provider: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=list(dict.fromkeys([provider, "CPUExecutionProvider"])))


def bound_runner(s: ort.InferenceSession, feeds: dict[str, np.ndarray]):
    """A run with its inputs already on the GPU and its outputs left there (IO binding)."""
    binding = s.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
    for output in s.get_outputs():
        binding.bind_output(output.name, "cuda", 0)

    def run():
        s.run_with_iobinding(binding)
        binding.synchronize_outputs()
    return run


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def in_process(repository: Path, feeds: dict, rounds: int) -> list[list]:
    rows = []
    for model, by_batch in feeds.items():
        reference = session(repository / model / "1" / "model.onnx", "CPUExecutionProvider")
        for variant in ("fp32", "fp16"):
            name = model if variant == "fp32" else f"{model}_{variant}"
            path = repository / name / "1" / "model.onnx"
            cpu, gpu = session(path, "CPUExecutionProvider"), session(path, CUDA)
            for batch, batch_feeds in by_batch.items():
                expected = reference.run(None, batch_feeds)[0]
                agreement = cosine(gpu.run(None, batch_feeds)[0], expected)
                runs = {"CPU": lambda s=cpu, f=batch_feeds: s.run(None, f),
                        "CUDA": lambda s=gpu, f=batch_feeds: s.run(None, f),
                        "CUDA, IO binding": bound_runner(gpu, batch_feeds)}
                medians = median_ms(runs, rounds)
                rows.append([model, variant, batch, *(f"{medians[k]:.2f}" for k in runs),
                             f"{medians['CPU'] / medians['CUDA']:.1f}x",
                             f"{batch * 1000 / medians['CUDA, IO binding']:.0f}", f"{agreement:.5f}"])
                print(rows[-1], flush=True)
    return rows


def served(repository: Path, feeds: dict, seconds: float, work: Path) -> list[list]:
    """ResNet-50 on a KIND_GPU instance, dynamic batching, 16 clients sending one image each: the first
    load (each new batch size meets cuDNN's algorithm search) and the one after it, per configuration."""
    for name in SERVED:
        if not (repository / name).exists():
            shutil.copytree(repository / "resnet50", repository / name)
    for name, extra in SERVED.items():
        config = repository / name / "config.pbtxt"
        text = re.sub(r'^name: ".*"$', f'name: "{name}"', config.read_text(), flags=re.M)
        config.write_text(text + GPU_INSTANCE + extra)
    server = start_server(repository, work / "server.log", "--access-log", "false",
                          ready_model="resnet50_fp16", timeout=300)
    rows = []
    try:
        image = feeds["resnet50"][1]
        reference = session(repository / "resnet50" / "1" / "model.onnx", "CPUExecutionProvider")
        expected = reference.run(None, image)[0]
        body = client.binary_body(image, ["logits"])
        for name in SERVED:
            agreement = cosine(served_logits(server.http_url, name, image["pixel_values"]), expected)
            for load in ("first", "second"):
                before = executions(server.http_url, name)
                result = asyncio.run(
                    client.http_load(server.http_port, f"/v2/models/{name}/infer", [body], 16, seconds))
                after = executions(server.http_url, name)
                batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
                latency = [f"{result.percentile(q):.1f}" for q in (50, 99)]
                rows.append([name, load, f"{result.requests_per_s:.0f}", *latency, f"{batch:.1f}",
                             result.failures, f"{agreement:.5f}"])
                print(rows[-1], flush=True)
    finally:
        stop_server(server)
    return rows


def executions(url: str, model: str) -> tuple[int, int]:
    """(inferences, executions) so far, from the statistics extension."""
    stats = httpx.get(f"http://{url}/v2/models/{model}/stats", timeout=30).json()["model_stats"][0]
    return stats["inference_count"], stats["execution_count"]


def served_logits(url: str, model: str, pixels: np.ndarray) -> np.ndarray:
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("pixel_values", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    return httpclient.InferenceServerClient(url).infer(model, [tensor]).as_numpy("logits")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if CUDA not in ort.get_available_providers():
        print(f"bench_gpu: needs onnxruntime-gpu and a GPU (providers here: {ort.get_available_providers()})")
        return
    with tempfile.TemporaryDirectory() as work:
        repository = Path(work) / "repository"
        feeds = build(repository)
        rows = in_process(repository, feeds, args.rounds)
        serving = served(repository, feeds, args.seconds, Path(work))
    device = ort.get_device()
    section = "\n".join([
        "## GPU",
        "",
        f"{report.machine()}, ONNX Runtime device {device}. `python -m loadtest.bench_gpu "
        f"--rounds {args.rounds} --seconds {args.seconds:g}`: ResNet-50 and BERT-base (sequence 128) with "
        "random weights, exported by ortserve's exporters (fp16: weights and arithmetic in fp16, inputs and "
        f"outputs fp32). In process: median ms per batch over {args.rounds} interleaved runs; 'CUDA' feeds "
        "numpy arrays (host to device and back each run), 'IO binding' keeps inputs and outputs on the GPU; "
        "agreement is the cosine of the CUDA output with fp32 on CPU.",
        "",
        report.table(["model", "variant", "batch", "CPU ms", "CUDA ms", "CUDA + IO binding ms",
                      "CUDA / CPU speed", "items/s (IO binding)", "cosine to CPU fp32"], rows),
        "",
        "Served by ortserve on one KIND_GPU instance (dynamic batching), 16 HTTP clients each sending one "
        f"image with the binary extension, two loads of {args.seconds:g} s one after the other per model. "
        "resnet50 and resnet50_fp16 as exported (each execution padded to the batch size of 8: `pad_batch` "
        "auto); resnet50_unpadded with `pad_batch` false (each execution as many rows as it has requests); "
        "resnet50_heuristic_unpadded also with `cudnn_conv_algo_search` 1 (heuristic) instead of 0 "
        "(exhaustive, ONNX Runtime's and Triton's default):",
        "",
        report.table(["model", "load", "requests/s", "p50 ms", "p99 ms", "mean batch", "failures",
                      "cosine to CPU fp32"], serving),
    ])
    report.write_section("gpu", section)
    print(section)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
