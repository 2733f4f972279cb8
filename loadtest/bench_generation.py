"""GPT generation side by side in one run: KV cache against recomputing, 16 concurrent streams against
one at a time, gRPC streams against HTTP ones, the server against transformers' generate, and streaming
latency under load.

Reads the default repository's `gpt` (and its PyTorch weights under `.checkpoints/gpt`) and, built by
`python -m exporters.demo REPOSITORY --benchmark-models`, `gpt2` (GPT-2 small's configuration); writes the
"generation" section of BENCHMARKS.md.
"""

import argparse
import asyncio
import json
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import uvloop

from loadtest import client, report
from loadtest.server_process import start_server, stop_server


def kv_against_recompute(model: Path, new_tokens: int) -> tuple[float, float]:
    """Tokens/s of greedy decoding with the KV cache, and recomputing the whole sequence each step."""
    from server.generation.decoder import Decoder

    decoder = Decoder(ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]))
    prompt = [464, 318, 257]

    start = time.perf_counter()
    logits, cache = decoder.prefill([prompt])
    for _ in range(new_tokens - 1):
        logits = decoder.decode([int(logits[0].argmax())], cache)
    cached = new_tokens / (time.perf_counter() - start)

    start = time.perf_counter()
    sequence = list(prompt)
    for _ in range(new_tokens):
        logits, _ = decoder.prefill([sequence])
        sequence.append(int(logits[0].argmax()))
    return cached, new_tokens / (time.perf_counter() - start)


def run_load(load):
    """A streaming load's coroutine run on uvloop: the client shares the server's cores, and uvloop reads
    an event for less CPU than asyncio's own loop."""
    return uvloop.run(load)


async def stream(address: tuple[str, int], model: str, prompt: list[int], tokens: int) -> list[tuple]:
    """(arrival time, tokens) of every event, (start, 0) first. A raw HTTP/1.1 reader: the load client
    must not cost more CPU than the server."""
    body = json.dumps(
        {"input_ids": prompt, "parameters": {"max_tokens": tokens, "temperature": 0, "ignore_eos": True}}
    ).encode()
    reader, writer = await asyncio.open_connection(*address)
    events = [(time.perf_counter(), 0)]
    writer.write(
        f"POST /v2/models/{model}/generate_stream HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode(errors="replace"))
    chunks = []  # parsed once the stream ends: the client's CPU competes with the server's on this machine
    while chunk := await reader.read(65536):
        chunks.append((time.perf_counter(), chunk))
    writer.close()
    pending = b""
    for now, chunk in chunks:
        *complete, pending = (pending + chunk).split(b"\n\n")
        for event in complete:  # each after its chunk-size line: the body is chunked
            data = event[event.index(b"data: ") + 6:]
            events.append((now, len(json.loads(data)["output_ids"])))
    return events


async def served(url: str, model: str, prompts: list[list[int]], tokens: int, concurrent: bool):
    host, port = url.removeprefix("http://").split(":")
    address = (host, int(port))
    await stream(address, model, prompts[0], 4)
    start = time.perf_counter()
    if concurrent:
        runs = await asyncio.gather(*[stream(address, model, p, tokens) for p in prompts])
    else:
        runs = [await stream(address, model, p, tokens) for p in prompts]
    elapsed = time.perf_counter() - start
    generated = sum(count for run in runs for _, count in run)
    return generated / elapsed, runs


async def grpc_stream(address: str, model: str, prompt: list[int], tokens: int) -> int:
    """Tokens of one generation streamed over gRPC `ModelStreamInfer` (decoupled: a response per step of
    new tokens, as tritonclient's stream_infer receives them), on a channel of its own."""
    from server.protocol import message

    request = client.grpc_message(model, {"input_ids": np.array(prompt, np.int64)},
                                  {"max_tokens": tokens, "temperature": 0, "ignore_eos": True})
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")(
            iter([request]))  # the stream ends after the request's last response
        received = [data async for data in call]  # parsed after the end, as `stream` parses its events
    count, parse = 0, message("ModelStreamInferResponse").FromString
    for data in received:
        answer = parse(data)
        if answer.error_message:
            raise RuntimeError(answer.error_message)
        count += next(o.shape[0] for o in answer.infer_response.outputs if o.name == "output_ids")
    return count


async def served_grpc(address: str, model: str, prompts: list[list[int]], tokens: int) -> float:
    """Aggregate tokens/s of all prompts streamed at once over gRPC."""
    start = time.perf_counter()
    counts = await asyncio.gather(*[grpc_stream(address, model, p, tokens) for p in prompts])
    return sum(counts) / (time.perf_counter() - start)


def grpc_against_http(url: str, address: str, model: str, prompts, tokens: int, rounds: int):
    """(gRPC, HTTP) aggregate tokens/s of all prompts streamed at once, the middle of `rounds`
    interleaved rounds by their ratio."""
    run_load(served_grpc(address, model, prompts[:2], 4))
    pairs = [(run_load(served_grpc(address, model, prompts, tokens)),
              run_load(served(url, model, prompts, tokens, True))[0]) for _ in range(rounds)]
    return report.middle(pairs, key=lambda pair: pair[0] / pair[1])


def streams_against_one(url: str, model: str, prompts: list[list[int]], tokens: int, alone: int, rounds: int):
    """Aggregate tokens/s of all prompts streamed at once and of the first `alone` streamed one after
    another, the middle of `rounds` interleaved rounds by their ratio: ((together, runs), (alone, runs))."""
    pairs = [(run_load(served(url, model, prompts, tokens, True)),
              run_load(served(url, model, prompts[:alone], tokens, False))) for _ in range(rounds)]
    return report.middle(pairs, key=lambda r: r[0][0] / r[1][0])


def transformers_tokens_per_second(checkpoint: Path, prompt: list[int], tokens: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(checkpoint)).eval()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                             min_new_tokens=tokens, do_sample=False, pad_token_id=0)
    return (out.shape[1] - len(prompt)) / (time.perf_counter() - start)


def percentiles(values: list[float]) -> str:
    ms = np.array(values) * 1000
    return f"p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--streams", type=int, default=16)
    args = parser.parse_args(argv)
    repository = args.repository.resolve()
    if not (repository / "gpt2" / "1" / "model.onnx").exists():
        parser.error(f"{repository} has no gpt2: build it with "
                     f"python -m exporters.demo {args.repository} --benchmark-models")
    cached, recomputed = kv_against_recompute(repository / "gpt" / "1" / "model.onnx", args.tokens)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 1000, int(n)).tolist() for n in rng.integers(4, 24, args.streams)]
    server = start_server(repository, Path("/tmp/ortserve-bench-generation.log"), "--model-control-mode",
                          "explicit", "--load-model", "gpt", "--load-model", "gpt2", "--access-log", "false",
                          ready_model="gpt2")
    try:
        url = f"http://{server.http_url}"
        # a round of 16 gpt streams lasts about half a second: more rounds than for gpt2
        (together, runs), (alone, _) = streams_against_one(url, "gpt", prompts, args.tokens, len(prompts), 7)
        # a GPT-2 step takes 10 ms or more: two streams one after another give its single-stream rate
        (large_together, _), (large_alone, _) = streams_against_one(url, "gpt2", prompts, args.tokens, 2, 3)
        single, _ = run_load(served(url, "gpt", prompts[:1], args.tokens, False))
        over_grpc, over_http = grpc_against_http(url, server.grpc_url, "gpt", prompts, args.tokens, 5)
    finally:
        stop_server(server)
    torch_rate = transformers_tokens_per_second(repository / ".checkpoints" / "gpt", prompts[0], args.tokens)
    first = [r[1][0] - r[0][0] for r in runs]
    gaps = [b[0] - a[0] for r in runs for a, b in zip(r[1:], r[2:])]
    per_token = [(r[-1][0] - r[1][0]) / (sum(c for _, c in r) - 1) for r in runs]
    rows = [
        [f"KV cache vs recomputing the sequence, {args.tokens} new tokens (in-process)",
         f"{cached:.0f} vs {recomputed:.0f}", f"{cached / recomputed:.1f}x",
         report.judged("5x", cached / recomputed >= 5)],
        [f"{args.streams} concurrent streams vs one at a time ({args.tokens} tokens each, served; "
         "the middle of 7 interleaved rounds)",
         f"{together:.0f} vs {alone:.0f}", f"{together / alone:.1f}x",
         report.judged("4x", together / alone >= 4)],
        ["the same with `gpt2` (GPT-2 small's configuration, 124M parameters, random weights; one at a "
         "time: two streams; the middle of 3 rounds)",
         f"{large_together:.0f} vs {large_alone:.0f}", f"{large_together / large_alone:.1f}x",
         report.judged("4x", large_together / large_alone >= 4)],
        [f"{args.streams} concurrent streams over gRPC (`ModelStreamInfer`, decoupled) vs HTTP server-sent "
         "events (the middle of 5 interleaved rounds)",
         f"{over_grpc:.0f} vs {over_http:.0f}", f"{over_grpc / over_http:.2f}x", ""],
        [f"one stream served vs transformers generate, {args.tokens} tokens",
         f"{single:.0f} vs {torch_rate:.0f}", f"{single / torch_rate:.1f}x",
         report.judged("2x", single / torch_rate >= 2)],
    ]
    body = "\n".join([
        "## Generation (default `gpt`, trained here; `gpt2` for the weight-bound case)",
        "",
        f"`python -m loadtest.bench_generation` ({report.machine()}); greedy, eos ignored, served over "
        "HTTP server-sent events (over gRPC where a row says so).",
        "",
        report.table(["comparison", "tokens/s", "ratio", "target"], rows),
        "",
        f"Under {args.streams} concurrent streams: time to first token {percentiles(first)}; "
        f"inter-token latency (between events) {percentiles(gaps)}; time per output token after the "
        f"first {percentiles(per_token)}. Tokens that pile up while a client is being written to go "
        "out together in one event.",
    ])
    report.write_section("generation", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
