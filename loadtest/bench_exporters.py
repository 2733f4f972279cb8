"""Exported variants side by side in one run: size, latency at batch 1 and 8, accuracy against fp32.

Reads the default repository (`python -m exporters.demo REPO --benchmark-models` builds it) and writes
the "exporters" section of BENCHMARKS.md.
"""

import argparse
import ast
import statistics
import sysconfig
import time
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort

from loadtest import report

VARIANTS = ("fp32", "fp16", "int8")


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def median_ms(runs: dict, rounds: int) -> dict[str, float]:
    """Median ms of each callable, the variants' runs interleaved so drift hits all alike."""
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def latency_ms(sessions: dict, batches: list[dict], rounds: int) -> dict[str, float]:
    """Median ms per batch of running every batch in turn (a pass over the data set)."""
    def one_pass(s):
        for feeds in batches:
            s.run(None, feeds)

    passes = median_ms({name: partial(one_pass, s) for name, s in sessions.items()}, rounds)
    return {name: ms / len(batches) for name, ms in passes.items()}


def in_batches(feeds: dict, size: int = 8) -> list[dict]:
    rows = len(next(iter(feeds.values())))
    return [{k: v[start:start + size] for k, v in feeds.items()} for start in range(0, rows - size + 1, size)]


def real_sentences(count: int = 96) -> list[str]:
    """First sentences of the standard library's docstrings: real English on every machine."""
    found = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Module):
                doc = ast.get_docstring(node)
                sentence = doc.split(".")[0].replace("\n", " ").strip() if doc else ""
                if 6 <= len(sentence.split()) <= 30:
                    found.append(sentence)
        if len(found) >= count:
            return found[:count]
    return found


def names(base: str, variants=VARIANTS) -> dict[str, str]:
    return {v: base if v == "fp32" else f"{base}_{v}" for v in variants}


def model_file(repository: Path, name: str) -> Path:
    return repository / name / "1" / "model.onnx"


def measure(repository: Path, base: str, batch1: dict, batches8: list[dict], rounds: int, variants=VARIANTS):
    chosen = {v: n for v, n in names(base, variants).items() if model_file(repository, n).exists()}
    sessions = {v: session(model_file(repository, n)) for v, n in chosen.items()}
    one, eight = latency_ms(sessions, [batch1], rounds), latency_ms(sessions, batches8, rounds)
    sizes = {v: model_file(repository, n).stat().st_size / 1e6 for v, n in chosen.items()}
    return sessions, one, eight, sizes


def minilm(repository: Path, rounds: int):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(repository / "minilm" / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0)
    sentences = real_sentences()
    encoded = tokenizer.encode_batch(sentences)

    def feeds(rows):
        ids = np.array([e.ids for e in rows], np.int64)
        mask = np.array([e.attention_mask for e in rows], np.int64)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}

    tokenizer.enable_truncation(128)
    eights = [feeds(tokenizer.encode_batch(sentences[i:i + 8])) for i in range(0, len(sentences), 8)]
    sessions, one, eight, sizes = measure(repository, "minilm", feeds(encoded[:1]), eights, rounds)
    everything = feeds(encoded)
    embeddings = {v: s.run(["sentence_embedding"], everything)[0] for v, s in sessions.items()}
    quality = {v: float(np.mean(np.sum(embeddings["fp32"] * e, axis=1))) for v, e in embeddings.items()}
    return rows("minilm", one, eight, sizes, {v: f"cosine {q:.4f}" for v, q in quality.items()},
                f"mean cosine of {len(sentences)} real sentences' embeddings"), one, eight, quality


def digits_model(repository: Path, base: str, field: str, pictures: bool, rounds: int):
    from exporters import training

    _, _, x_test, y_test = training.digits()
    x = training.as_pictures(x_test) if pictures else x_test
    sessions, one, eight, sizes = measure(repository, base, {field: x[:1]}, in_batches({field: x}), rounds)
    predictions = {v: s.run(None, {field: x})[0].argmax(-1) for v, s in sessions.items()}
    agreement = {v: float((p == predictions["fp32"]).mean()) for v, p in predictions.items()}
    accuracy = {v: float((p == y_test).mean()) for v, p in predictions.items()}
    notes = {v: f"top-1 agreement {agreement[v]:.4f}, accuracy {accuracy[v]:.4f}" for v in sessions}
    return rows(base, one, eight, sizes, notes, f"{len(y_test)} digits test images"), agreement


def resnet50(repository: Path, rounds: int):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((8, 3, 224, 224)).astype(np.float32)
    _, one, eight, sizes = measure(repository, "resnet50", {"pixel_values": images[:1]},
                                   [{"pixel_values": images}], rounds, ("fp32", "int8"))
    return rows("resnet50", one, eight, sizes, {}, "ResNet-50 configuration, random weights"), eight


def gpt(repository: Path, rounds: int):
    from server.generation.decoder import Decoder

    rng = np.random.default_rng(0)
    chosen = {v: n for v, n in names("gpt").items() if model_file(repository, n).exists()}
    decoders = {v: Decoder(session(model_file(repository, n))) for v, n in chosen.items()}
    prompts = [rng.integers(1, 1000, 32).tolist() for _ in range(8)]
    one, eight = (median_ms({v: partial(d.prefill, batch) for v, d in decoders.items()}, rounds)
                  for batch in (prompts[:1], prompts))
    logits = {v: d.prefill(prompts)[0] for v, d in decoders.items()}
    agree = {v: float((lg.argmax(-1) == logits["fp32"].argmax(-1)).mean()) for v, lg in logits.items()}
    sizes = {v: model_file(repository, n).stat().st_size / 1e6 for v, n in chosen.items()}
    notes = {v: f"next-token agreement {agree[v]:.3f}" for v in decoders}
    return rows("gpt", one, eight, sizes, notes, "prefill of 32-token prompts")


def rows(base, one, eight, sizes, notes, what):
    return [
        [f"{base}" + ("" if v == "fp32" else f"_{v}"), f"{sizes[v]:.1f}", f"{one[v]:.2f}", f"{eight[v]:.2f}",
         f"{8000 / eight[v]:.0f}", f"{eight['fp32'] / eight[v]:.2f}x", notes.get(v, ""), what]
        for v in one
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    repo = args.repository
    table_rows, findings = [], []
    minilm_rows, _, minilm_eight, quality = minilm(repo, args.rounds)
    table_rows += minilm_rows
    speedup = minilm_eight["fp32"] / minilm_eight["int8"]
    findings.append(f"- MiniLM int8: {speedup:.2f}x fp32 throughput in batches of 8 over the real sentences "
                    f"({report.judged('target 1.8x', speedup >= 1.8)}), mean cosine {quality['int8']:.4f} "
                    f"on real sentences ({report.judged('target 0.99', quality['int8'] >= 0.99)})")
    resnet_rows, agreement = digits_model(repo, "resnet", "pixel_values", True, args.rounds)
    lstm_rows, lstm_agreement = digits_model(repo, "lstm", "sequence", False, args.rounds)
    table_rows += resnet_rows + lstm_rows
    if model_file(repo, "resnet50").exists():
        big_rows, big = resnet50(repo, max(5, args.rounds // 4))
        table_rows += big_rows
        faster = big['fp32'] / big['int8']
        findings.append(f"- ResNet-50-sized CNN int8 (static, QOperator U8S8 per-channel): "
                        f"{faster:.2f}x fp32 throughput at batch 8 "
                        f"({report.judged('target 2x', faster >= 2)})")
    agreed = min(agreement["int8"], lstm_agreement["int8"])
    findings.append(f"- trained CNN int8: top-1 agreement {agreement['int8']:.4f} with fp32 on the real "
                    f"digits test set; LSTM int8 {lstm_agreement['int8']:.4f} "
                    f"({report.judged('target 0.99', agreed >= 0.99)})")
    table_rows += gpt(repo, args.rounds)
    header = ["model", "MB", "batch 1 ms", "batch 8 ms", "items/s (b8)", "speed vs fp32", "accuracy vs fp32",
              "data"]
    body = "\n".join([
        "## Exporters: fp32, fp16 and int8 variants",
        "",
        f"`python -m loadtest.bench_exporters` ({report.machine()}); in-process ONNX Runtime, CPU, "
        "median of interleaved runs. Batch 8 is the mean per batch of a pass over the data set in "
        "batches of 8 (real sentences have their own lengths); items/s follows from it.",
        "",
        *findings,
        "",
        report.table(header, table_rows),
        "",
        "fp16 runs on CPU through casts and is not faster there; it is for GPUs.",
    ])
    report.write_section("exporters", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
