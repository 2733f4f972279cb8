"""What an ensemble step and the response cache cost or save: `simple` called directly against the same
model behind a one-step ensemble, and a compute-bound MLP without and with the response cache (every
request the same, so all but the first hit), over HTTP binary at concurrency 1 and 16, interleaved rounds.
Writes the "pipelines" section of BENCHMARKS.md.

    python -m loadtest.bench_pipelines [--seconds 2] [--rounds 3]
"""

import argparse
import asyncio
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from exporters.demo import SIMPLE_CONFIG, publish, simple_model
from loadtest import client, report
from loadtest.server_process import start_server, stop_server

WIDTH, LAYERS = 1024, 6
CONCURRENCY = (1, 16)
ENSEMBLE = """
name: "simple_ensemble"
platform: "ensemble"
max_batch_size: 8
input [ { name: "A", data_type: TYPE_INT32, dims: [ 16 ] },
        { name: "B", data_type: TYPE_INT32, dims: [ 16 ] } ]
output [ { name: "SUM", data_type: TYPE_INT32, dims: [ 16 ] },
         { name: "DIFF", data_type: TYPE_INT32, dims: [ 16 ] } ]
ensemble_scheduling { step [ { model_name: "simple" model_version: -1
  input_map { key: "INPUT0" value: "A" } input_map { key: "INPUT1" value: "B" }
  output_map { key: "OUTPUT0" value: "SUM" } output_map { key: "OUTPUT1" value: "DIFF" } } ] }
"""
MLP_CONFIG = 'name: "{name}"\nmax_batch_size: 8\ndynamic_batching {{}}\n{extra}'
PAIRS = (  # (row, model, its baseline)
    ("one-step ensemble over `simple`", "simple_ensemble", "simple"),
    ("MLP with the response cache, the same request each time", "mlp_cached", "mlp"),
)


def mlp_model() -> onnx.ModelProto:
    """x FP32[batch, WIDTH] through LAYERS square MatMul + Relu layers: about 12 MFLOP a row."""
    rng = np.random.default_rng(0)
    nodes, weights, current = [], [], "x"
    for layer in range(LAYERS):
        weight = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
        weights.append(numpy_helper.from_array(weight, f"w{layer}"))
        nodes += [helper.make_node("MatMul", [current, f"w{layer}"], [f"m{layer}"]),
                  helper.make_node("Relu", [f"m{layer}"], [f"y{layer}" if layer < LAYERS - 1 else "y"])]
        current = f"y{layer}"
    shape = ["b", WIDTH]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def repository(root: Path) -> None:
    publish(root, "simple", simple_model(), SIMPLE_CONFIG)
    (root / "simple_ensemble" / "1").mkdir(parents=True)
    (root / "simple_ensemble" / "config.pbtxt").write_text(ENSEMBLE)
    publish(root, "mlp", mlp_model(), MLP_CONFIG.format(name="mlp", extra=""))
    publish(root, "mlp_cached", mlp_model(),
            MLP_CONFIG.format(name="mlp_cached", extra="response_cache { enable: true }"))


def bodies() -> dict[str, tuple[bytes, dict]]:
    rng = np.random.default_rng(1)
    pair = rng.integers(-100, 100, size=(2, 1, 16), dtype=np.int32)
    x = rng.standard_normal((1, WIDTH)).astype(np.float32)
    simple = client.binary_body({"INPUT0": pair[0], "INPUT1": pair[1]}, ["OUTPUT0", "OUTPUT1"])
    mlp = client.binary_body({"x": x}, ["y"])
    ensemble = client.binary_body({"A": pair[0], "B": pair[1]}, ["SUM", "DIFF"])
    return {"simple": simple, "simple_ensemble": ensemble, "mlp": mlp, "mlp_cached": mlp}


def run(seconds: float, rounds: int) -> tuple[list[list], str]:
    measured: dict[tuple[str, int], list[client.Result]] = {}
    with tempfile.TemporaryDirectory() as work:
        root = Path(work) / "repository"
        repository(root)
        server = start_server(root, Path(work) / "server.log", "--access-log", "false", "--cache-config",
                              "local,size=16777216", ready_model="mlp_cached")
        try:
            requests = bodies()
            for _ in range(rounds):
                for concurrency in CONCURRENCY:
                    for model, body in requests.items():
                        result = asyncio.run(client.http_load(server.http_port, f"/v2/models/{model}/infer",
                                                              [body], concurrency, seconds))
                        if result.failures:
                            raise RuntimeError(f"{model}: {result.failures} requests failed")
                        measured.setdefault((model, concurrency), []).append(result)
        finally:
            stop_server(server)
    rows = []
    for label, model, baseline in PAIRS:
        for concurrency in CONCURRENCY:
            mine, theirs = measured[model, concurrency], measured[baseline, concurrency]
            if concurrency == 1:
                deltas = [a.percentile(50) - b.percentile(50) for a, b in zip(mine, theirs)]
                figure = f"{sorted(deltas)[len(deltas) // 2]:+.3f} ms at p50"
                every = "; ".join(f"{a.percentile(50):.3f} vs {b.percentile(50):.3f} ms"
                                  for a, b in zip(mine, theirs))
            else:
                ratios = [a.requests_per_s / b.requests_per_s for a, b in zip(mine, theirs)]
                figure = f"{sorted(ratios)[len(ratios) // 2]:.2f}x requests/s"
                every = "; ".join(f"{a.requests_per_s:.0f} vs {b.requests_per_s:.0f}"
                                  for a, b in zip(mine, theirs))
            rows.append([label, f"`{model}` vs `{baseline}`", concurrency, figure, every])
    command = f"python -m loadtest.bench_pipelines --seconds {seconds:g} --rounds {rounds}"
    intro = (f"{report.machine()}. `{command}`: HTTP binary requests, a closed loop per concurrency; "
             f"{rounds} interleaved rounds, the median round's figure (p50 difference at concurrency 1, "
             "throughput ratio at 16) and every round's pair after it. The MLP is "
             f"{LAYERS} layers of {WIDTH} x {WIDTH} float MatMul + Relu; the cached one is the same model "
             "with `response_cache { enable: true }` behind `--cache-config local,size=16777216`, and every "
             "request is the same, so all but the first are hits. No targets: what the ensemble's "
             "indirection costs and what a hit saves.")
    return rows, intro


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows, intro = run(args.seconds, args.rounds)
    table = report.table(["row", "models", "concurrency", "median round", "each round"], rows)
    body = f"## Ensembles and the response cache\n\n{intro}\n\n{table}\n"
    report.write_section("pipelines", body)
    print(body)


if __name__ == "__main__":
    main()
