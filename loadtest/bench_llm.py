"""A Llama-architecture decoder of about 100M parameters (random weights; grouped-query attention, 4
key/value heads for 12 query heads) exported by `exporters/llama.py` and served, side by side in one run:
one stream served against `transformers` `generate` on the same weights, 16 concurrent streams against
one, time to first token and inter-token latency under 16 streams, and the KV cache's bytes per token
against what the checkpoint's key/value heads imply. Writes the "llama generation" section of
BENCHMARKS.md."""

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from loadtest import report
from loadtest.bench_generation import (
    percentiles,
    run_load,
    served,
    streams_against_one,
    transformers_tokens_per_second,
)
from loadtest.server_process import start_server, stop_server


def llama_100m():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048,
                         tie_word_embeddings=True, eos_token_id=None, bos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def cache_bytes_per_token(model_file: Path, tokens: int = 64) -> float:
    """Bytes of the present keys and values a prefill of `tokens` returns, per token."""
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    ids = np.arange(1, tokens + 1, dtype=np.int64)[None]
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": ids - 1,
             "logit_positions": np.array([tokens - 1])}
    for graph_input in session.get_inputs():
        if graph_input.name.startswith("past_key_values"):
            heads, size = graph_input.shape[1], graph_input.shape[3]
            feeds[graph_input.name] = np.zeros((1, heads, 0, size), np.float32)
    names = [o.name for o in session.get_outputs() if o.name.startswith("present")]
    return sum(array.nbytes for array in session.run(names, feeds)) / tokens


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    from exporters import gpt, llama

    model = llama_100m()
    parameters = sum(p.numel() for p in model.parameters())
    heads, kv_heads, size = llama.cache_shape(model.config)
    implied = 2 * model.config.num_hidden_layers * kv_heads * size * 4
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 32000, int(n)).tolist() for n in rng.integers(8, 32, args.streams)]
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        model.save_pretrained(str(work / "checkpoint"))
        gpt.export(model, work / "repository", "llama100m", new_tokens=4)
        measured_bytes = cache_bytes_per_token(work / "repository" / "llama100m" / "1" / "model.onnx")
        server = start_server(work / "repository", work / "server.log", "--access-log", "false",
                              ready_model="llama100m")
        try:
            url = f"http://{server.http_url}"
            single_rounds = []
            for _ in range(args.rounds):
                one, _ = run_load(served(url, "llama100m", prompts[:1], args.tokens, False))
                torch_rate = transformers_tokens_per_second(work / "checkpoint", prompts[0], args.tokens)
                single_rounds.append((one, torch_rate))
            (together, runs), (alone, _) = streams_against_one(url, "llama100m", prompts, args.tokens, 2,
                                                               args.rounds)
        finally:
            stop_server(server)
    ratios = [one / torch_rate for one, torch_rate in single_rounds]
    one, torch_rate = report.middle(single_rounds, key=lambda pair: pair[0] / pair[1])
    first = [r[1][0] - r[0][0] for r in runs]
    gaps = [b[0] - a[0] for r in runs for a, b in zip(r[1:], r[2:])]
    rows = [
        [f"one stream served vs transformers generate ({args.tokens} tokens; {args.rounds} interleaved "
         "rounds)", f"{one:.0f} vs {torch_rate:.0f}", f"{statistics.median(ratios):.2f}x", "2x",
         "met" if statistics.median(ratios) >= 2 else "MISSED", ", ".join(f"{r:.2f}" for r in ratios)],
        [f"{args.streams} concurrent streams vs one at a time (two streams one after another; the middle "
         f"of {args.rounds} rounds)", f"{together:.0f} vs {alone:.0f}", f"{together / alone:.2f}x", "4x",
         "met" if together / alone >= 4 else "MISSED", ""],
        ["KV cache bytes per token: measured from the graph's present outputs vs implied by "
         f"{kv_heads} key/value heads x {size} x {model.config.num_hidden_layers} layers x 2 x fp32",
         f"{measured_bytes:.0f} vs {implied}", f"{measured_bytes / implied:.2f}x", "1.00x",
         "met" if measured_bytes == implied else "MISSED",
         f"{heads} query heads would imply {implied * heads // kv_heads}"],
    ]
    body = "\n".join([
        "## Llama generation (a Llama-architecture decoder of about 100M parameters)",
        "",
        f"`python -m loadtest.bench_llm --tokens {args.tokens} --rounds {args.rounds}` "
        f"({report.machine()}): "
        f"{parameters / 1e6:.0f}M parameters, random weights, fp32, {heads} query and {kv_heads} key/value "
        "heads; greedy, eos ignored, served over HTTP server-sent events; transformers in the same "
        "process as the benchmark, the server alone in its own.",
        "",
        report.table(["comparison", "tokens/s", "ratio", "target", "", "by round"], rows),
        "",
        f"Under {args.streams} concurrent streams: time to first token {percentiles(first)}; inter-token "
        f"latency (between events) {percentiles(gaps)}.",
    ])
    report.write_section("llama generation", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
