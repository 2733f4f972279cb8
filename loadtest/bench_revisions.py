"""ortserve at another revision beside this tree, on the same small-request loads, interleaved rounds:
the check that a change of structure costs no speed.

python -m loadtest.bench_revisions --baseline REV [--seconds 4] [--rounds 5]

The baseline is checked out with `git worktree` under .bench/ and served from there, with this tree's
environment. Each round runs every load against both servers back to back, in alternating order;
the table shows requests/s and p50 per load, the ratio (this tree / baseline) of every round, and the
median round's.
"""

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from exporters.demo import SIMPLE_CONFIG, publish, simple_model
from loadtest import client, report
from loadtest.server_process import ServerProcess, free_ports, stop_server, wait_ready

ROOT = Path(__file__).resolve().parent.parent
LOADS = [(protocol, concurrency) for protocol in ("HTTP binary", "gRPC") for concurrency in (1, 32)]


def checkout(revision: str) -> Path:
    tree = ROOT / ".bench" / f"revision-{revision}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), revision], cwd=ROOT, check=True,
                       capture_output=True)
    return tree


def serve(tree: Path, repository: Path, log: Path) -> ServerProcess:
    """`python -m server` with `tree` first on the path (its own `server` package, this environment)."""
    ports = free_ports(3)
    command = [sys.executable, "-m", "server", "--model-repository", str(repository), "--host", "127.0.0.1",
               "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
               "--access-log", "false"]
    process = subprocess.Popen(command, cwd=tree, stdout=log.open("w"), stderr=subprocess.STDOUT)
    server = ServerProcess(process, *ports, log)
    wait_ready(process, f"http://{server.http_url}/v2/models/simple/ready", log, 60)
    return server


def load(server: ServerProcess, protocol: str, concurrency: int, seconds: float) -> client.Result:
    arrays = {"INPUT0": np.arange(16, dtype=np.int32)[None], "INPUT1": np.ones((1, 16), np.int32)}
    if protocol == "gRPC":
        messages = [client.grpc_message("simple", arrays)]
        return asyncio.run(client.grpc_load(server.grpc_url, messages, concurrency, seconds))
    body = client.binary_body(arrays, ["OUTPUT0", "OUTPUT1"])
    return asyncio.run(client.http_load(server.http_port, "/v2/models/simple/infer", [body], concurrency,
                                        seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", required=True, help="a git revision of ortserve")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    baseline = checkout(args.baseline)
    with tempfile.TemporaryDirectory() as scratch:
        repository = Path(scratch) / "models"
        publish(repository, "simple", simple_model(), SIMPLE_CONFIG)
        servers = {"this tree": serve(ROOT, repository, Path(scratch) / "this.log"),
                   args.baseline: serve(baseline, repository, Path(scratch) / "baseline.log")}
        try:
            rounds = {key: [] for key in LOADS}
            for index in range(args.rounds):
                order = list(servers) if index % 2 == 0 else list(servers)[::-1]
                for protocol, concurrency in LOADS:
                    results = {name: load(servers[name], protocol, concurrency, args.seconds)
                               for name in order}
                    ours, theirs = results["this tree"], results[args.baseline]
                    rounds[(protocol, concurrency)].append(
                        (ours.requests_per_s / theirs.requests_per_s, ours, theirs))
        finally:
            for server in servers.values():
                stop_server(server)
    print(f"| load (`simple`) | this tree vs {args.baseline}, req/s | p50 ms | ratio (median round) "
          "| rounds |")
    print("|---|---|---|---|---|")
    for (protocol, concurrency), measured in rounds.items():
        ratio, ours, theirs = report.middle(measured, key=lambda r: r[0])
        every = ", ".join(f"{r[0]:.3f}" for r in measured)
        print(f"| {protocol}, concurrency {concurrency} | {ours.requests_per_s:.0f} vs "
              f"{theirs.requests_per_s:.0f} | {ours.percentile(50):.3f} vs {theirs.percentile(50):.3f} | "
              f"{ratio:.3f}x | {every} |")


if __name__ == "__main__":
    main()
