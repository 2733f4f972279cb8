"""ortserve against onnxruntime-genai (ONNX Runtime's own C++ generation loop) on the same files: a
Llama-architecture decoder of GPT-2 small's size (random weights) built by onnxruntime-genai's model
builder in fp32 and int4, served by ortserve (`import-llm`) over HTTP and run by onnxruntime-genai in
process, side by side in one run: one stream, 16 streams at once, 16 requests arriving 100 ms apart
(continuous batching against a batch that new arrivals wait for), and time to first token with a shared
512-token system prompt, prefix cache on and off (ortserve's own export of the same checkpoint).
Writes the "genai" section of BENCHMARKS.md.

    python -m loadtest.bench_genai [--tokens 256] [--rounds 3]
"""

import argparse
import asyncio
import hashlib
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtest import report
from loadtest.bench_generation import run_load, served, stream
from loadtest.peer_servers import VENVS
from loadtest.server_process import start_server, stop_server

STREAMS, PROMPT_TOKENS, GAP_SECONDS = 16, 32, 0.1
BUILDS = VENVS / "genai-builds"


def checkpoint(target: Path) -> Path:
    """GPT-2 small's size in Llama's architecture (random weights) with a byte-level BPE tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from server.text import corpus

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus.paragraphs(), trainer)
    config = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    LlamaForCausalLM(config).eval().save_pretrained(str(target))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(str(target))
    return target


def genai_build(source: Path, target: Path, precision: str) -> Path:
    """onnxruntime-genai's model builder on the checkpoint `source`, for CPU; its output's tail on failure."""
    done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(source),
                           "-o", str(target), "-p", precision, "-e", "cpu", "-c", str(target) + "-cache"],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the genai builder failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return target


def genai_builds(threads: int, precisions=("fp32", "int4")) -> dict[str, Path]:
    """The builder's outputs, kept under .bench/ (about half a minute to build; rebuilt when the
    builder's version or `checkpoint` changes), their sessions set to `threads` intra-op threads
    (ortserve's models get the same: one ONNX Runtime setting for both engines)."""
    import onnxruntime_genai

    key = hashlib.sha256((onnxruntime_genai.__version__ + inspect.getsource(checkpoint)).encode())
    root = BUILDS / key.hexdigest()[:16]
    if not (root / ".built").exists():
        shutil.rmtree(root, ignore_errors=True)
        source = checkpoint(root / "checkpoint")
        for precision in precisions:
            genai_build(source, root / precision, precision)
        (root / ".built").touch()
    for precision in precisions:
        config = root / precision / "genai_config.json"
        settings = json.loads(config.read_text())
        settings["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
        config.write_text(json.dumps(settings, indent=4))
    return {precision: root / precision for precision in precisions}


def with_threads(config: Path, threads: int) -> None:
    text = config.read_text()
    parameter = f'parameters {{ key: "intra_op_thread_count" value {{ string_value: "{threads}" }} }}\n'
    config.write_text(text + parameter)


def with_prefix_cache(config: Path, name: str, tokens: int) -> None:
    """The model config named `name`, with a prefix cache of `tokens`."""
    from google.protobuf import text_format

    from server.protocol import ModelConfig

    parsed = text_format.Parse(config.read_text(), ModelConfig())
    parsed.name = name
    parsed.parameters["prefix_cache_tokens"].string_value = str(tokens)
    config.write_text(text_format.MessageToString(parsed))


class Genai:
    """onnxruntime-genai in this process: greedy, eos ignored (min_length = max_length)."""

    def __init__(self, path: Path):
        import onnxruntime_genai as og

        self.og, self.model = og, og.Model(str(path))

    def run(self, prompts: list[list[int]], tokens: int) -> tuple[float, float]:
        """A batch of equal-length prompts to the end: (seconds to the first new token, total seconds)."""
        params = self.og.GeneratorParams(self.model)
        length = len(prompts[0]) + tokens
        params.set_search_options(do_sample=False, max_length=length, min_length=length,
                                  batch_size=len(prompts))
        start = time.perf_counter()
        generator = self.og.Generator(self.model, params)
        generator.append_tokens(np.asarray(prompts, np.int32))
        generator.generate_next_token()
        first = time.perf_counter() - start
        while not generator.is_done():
            generator.generate_next_token()
        return first, time.perf_counter() - start


def genai_arrivals(genai: Genai, prompts: list[list[int]], tokens: int) -> tuple[float, list[float]]:
    """As a server could run onnxruntime-genai: a batch of whatever has arrived runs to its end while new
    arrivals wait for the next. Aggregate tokens/s and each request's time to first token."""
    arrivals = [index * GAP_SECONDS for index in range(len(prompts))]
    clock, served_count, first_tokens = 0.0, 0, []
    while served_count < len(prompts):
        clock = max(clock, arrivals[served_count])
        batch = [i for i in range(served_count, len(prompts)) if arrivals[i] <= clock]
        first, total = genai.run([prompts[i] for i in batch], tokens)
        first_tokens += [clock + first - arrivals[i] for i in batch]
        clock += total
        served_count += len(batch)
    return len(prompts) * tokens / clock, first_tokens


async def served_arrivals(url: str, model: str, prompts: list[list[int]], tokens: int):
    """Requests sent `GAP_SECONDS` apart: aggregate tokens/s and each one's time to first token."""
    host, port = url.removeprefix("http://").split(":")

    async def later(index):
        await asyncio.sleep(index * GAP_SECONDS)
        return await stream((host, int(port)), model, prompts[index], tokens)

    await stream((host, int(port)), model, prompts[0], 2)
    start = time.perf_counter()
    runs = await asyncio.gather(*[later(i) for i in range(len(prompts))])
    elapsed = max(run[-1][0] for run in runs) - start
    return sum(c for run in runs for _, c in run) / elapsed, [run[1][0] - run[0][0] for run in runs]


async def first_token_times(url: str, model: str, prompts: list[list[int]]) -> list[float]:
    host, port = url.removeprefix("http://").split(":")
    times = []
    for prompt in prompts:  # one after another: each prefill alone
        run = await stream((host, int(port)), model, prompt, 2)
        times.append(run[1][0] - run[0][0])
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    from server.generation.importer import import_llm

    rng = np.random.default_rng(0)
    prompts = [rng.integers(2, 4096, PROMPT_TOKENS).tolist() for _ in range(STREAMS)]
    system = rng.integers(2, 4096, 512).tolist()
    questions = [system + rng.integers(2, 4096, 16).tolist() for _ in range(STREAMS)]
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        threads = os.cpu_count() or 1
        built = genai_builds(threads)
        repository = work / "repository"
        for precision, path in built.items():
            with_threads(import_llm(path, repository, f"genai_{precision}") / "config.pbtxt", threads)
        for name in ("cached", "uncached"):
            shutil.copytree(repository / "genai_int4", repository / name)
            with_prefix_cache(repository / name / "config.pbtxt", name, 4096 if name == "cached" else 0)
        for precision in built:  # the throughput rows' prompts repeat each round, unlike genai's work
            with_prefix_cache(repository / f"genai_{precision}" / "config.pbtxt", f"genai_{precision}", 0)
        engines = {p: Genai(path) for p, path in built.items()}
        server = start_server(repository, work / "server.log", "--access-log", "false",
                              ready_model="genai_int4", timeout=300)
        try:
            rows = measure(f"http://{server.http_url}", engines, prompts, questions, args)
        finally:
            stop_server(server)
    body = "\n".join([
        "## Generation against onnxruntime-genai",
        "",
        f"`python -m loadtest.bench_genai --tokens {args.tokens} --rounds {args.rounds}` "
        f"({report.machine()}): "
        "a Llama-architecture decoder of GPT-2 small's size (768 wide, 12 layers, 12 heads, vocabulary "
        "32000, random weights) built by onnxruntime-genai's model builder in fp32 and int4 (both engines' "
        f"sessions with {os.cpu_count()} intra-op threads); ortserve serves "
        f"those files (`import-llm`) over HTTP (server-sent events), onnxruntime-genai runs them in this "
        f"process; {PROMPT_TOKENS}-token prompts, {args.tokens} new tokens, greedy, eos ignored. Each ratio "
        "is the middle of interleaved rounds.",
        "",
        report.table(["comparison", "ortserve", "onnxruntime-genai", "ratio", "target", "by round"], rows),
    ])
    report.write_section("genai", body)
    print(body)
    return 0


def measure(url: str, engines: dict, prompts, questions, args) -> list[list]:
    rows = []
    for precision, genai in engines.items():
        model = f"genai_{precision}"
        rounds = []
        for _ in range(args.rounds):
            ours, _ = run_load(served(url, model, prompts[:1], args.tokens, False))
            _, total = genai.run(prompts[:1], args.tokens)
            rounds.append((ours, args.tokens / total))
        ours, theirs = report.middle(rounds, key=lambda r: r[0] / r[1])
        rows.append(_row(f"one stream, {precision} (tokens/s)", ours, theirs, 1.0, rounds))
    genai = engines["int4"]
    rounds = []
    for _ in range(args.rounds):
        ours, _ = run_load(served(url, "genai_int4", prompts, args.tokens, True))
        _, total = genai.run(prompts, args.tokens)
        rounds.append((ours, len(prompts) * args.tokens / total))
    ours, theirs = report.middle(rounds, key=lambda r: r[0] / r[1])
    rows.append(_row(f"{STREAMS} streams at once, int4 (aggregate tokens/s)", ours, theirs, 1.0, rounds))
    rounds = []
    for _ in range(args.rounds):
        ours, our_first = run_load(served_arrivals(url, "genai_int4", prompts, args.tokens))
        theirs, their_first = genai_arrivals(genai, prompts, args.tokens)
        rounds.append((ours, theirs, statistics.mean(our_first), statistics.mean(their_first)))
    ours, theirs, our_first, their_first = report.middle(rounds, key=lambda r: r[0] / r[1])
    rows.append(_row(f"{STREAMS} requests {GAP_SECONDS * 1000:.0f} ms apart, int4: continuous batching vs a "
                     "batch new arrivals wait for (aggregate tokens/s)", ours, theirs, 1.5, rounds))
    rows.append(["the same: mean time to first token (ms)", f"{our_first * 1000:.0f}",
                 f"{their_first * 1000:.0f}", f"{their_first / our_first:.2f}x lower",
                 report.judged("lower", our_first < their_first), ""])
    rounds = []
    for _ in range(args.rounds):
        cached = statistics.median(run_load(first_token_times(url, "cached", questions)))
        uncached = statistics.median(run_load(first_token_times(url, "uncached", questions)))
        rounds.append((uncached / cached, cached, uncached))
    ratio, cached, uncached = report.middle(rounds, key=lambda r: r[0])
    rows.append([f"{STREAMS} requests sharing a 512-token system prompt (+16 tokens each): time to first "
                 "token p50, int4, prefix cache on vs off (ms)", f"{cached * 1000:.0f}",
                 f"{uncached * 1000:.0f} (cache off)", f"{ratio:.1f}x lower",
                 report.judged(">= 4x", ratio >= 4),
                 ", ".join(f"{r[0]:.1f}" for r in rounds)])
    return rows


def _row(what: str, ours: float, theirs: float, target: float, rounds: list) -> list:
    ratio = ours / theirs
    return [what, f"{ours:.1f}", f"{theirs:.1f}", f"{ratio:.2f}x",
            report.judged(f">= {target:g}x", ratio >= target),
            ", ".join(f"{r[0] / r[1]:.2f}" for r in rounds)]


if __name__ == "__main__":
    sys.exit(main())
