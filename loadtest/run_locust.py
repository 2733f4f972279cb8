"""`make loadtest`: locust headless for a bounded time and user count against a running server
(`--host`), or against one it starts on loopback from `--repository`; writes a summary (from locust's
own final statistics, so the counts are locust's) with locust's CSV and HTML report.

    python -m loadtest.run_locust --host http://127.0.0.1:8000 --grpc 127.0.0.1:8001 [--users 16]
    python -m loadtest.run_locust --repository model_repository [--seconds 30] [--results DIR]
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from loadtest.server_process import start_server, stop_server

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
PERCENTILES = {"p50 ms": 0.5, "p95 ms": 0.95, "p99 ms": 0.99}


def run_locust(
    http_url: str, grpc_url: str, users: int, seconds: int, prefix: Path, user_classes: tuple[str, ...] = ()
) -> list[dict]:
    """Runs locust headless; returns one row per request type of its final statistics: name,
    requests, failures, req/s and percentiles as locust computes them."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    host = http_url if "://" in http_url else f"http://{http_url}"
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
        "--users", str(users), "--spawn-rate", str(users), "--run-time", f"{seconds}s", "--stop-timeout", "5",
        "--csv", str(prefix), "--html", str(prefix.with_suffix(".html")),
        "--json-file", str(prefix.with_suffix("")), "--only-summary", "--exit-code-on-error", "0",
        *user_classes,
    ]
    subprocess.run(command, check=True, env={**os.environ, "ORTSERVE_GRPC": grpc_url}, timeout=seconds + 60)
    return [_row(entry) for entry in json.loads(prefix.with_suffix(".json").read_text())]


def _row(entry: dict) -> dict:
    times = {float(ms): count for ms, count in entry["response_times"].items()}
    seconds = max(entry["last_request_timestamp"] - entry["start_time"], 1e-9)
    row = {"type": entry["method"], "name": entry["name"], "requests": entry["num_requests"],
           "failures": entry["num_failures"], "req/s": entry["num_requests"] / seconds}
    for label, percent in PERCENTILES.items():
        row[label] = percentile(times, entry["num_requests"], percent)
    return row


def percentile(times: dict[float, int], total: int, percent: float) -> float:
    """Locust's own percentile over its histogram of rounded response times."""
    wanted, counted = int(total * percent), 0
    for ms in sorted(times, reverse=True):
        counted += times[ms]
        if total - counted <= wanted:
            return ms
    return 0.0


def summary(rows: list[dict]) -> str:
    lines = ["| request | requests | failures | req/s | p50 ms | p95 ms | p99 ms |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        times = " | ".join(f"{row[label]:.0f}" for label in PERCENTILES)
        lines.append(f"| {row['type']} {row['name']} | {row['requests']} | {row['failures']} | "
                     f"{row['req/s']:.1f} | {times} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", help="a running server's HTTP address (default: start one on loopback)")
    parser.add_argument("--grpc", default="127.0.0.1:8001", help="with --host: its gRPC address")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"),
                        help="without --host: the repository the started server serves")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--results", type=Path, default=Path("loadtest-results"))
    parser.add_argument("user_classes", nargs="*",
                        help="locust user classes (default all: HttpInferUser GrpcInferUser GenerationUser)")
    args = parser.parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    prefix = args.results / "locust"
    if args.host:
        rows = run_locust(args.host, args.grpc, args.users, args.seconds, prefix, tuple(args.user_classes))
    else:
        server = start_server(args.repository, args.results / "server.log", "--access-log", "false",
                              ready_model="simple")
        try:
            rows = run_locust(server.http_url, server.grpc_url, args.users, args.seconds, prefix,
                              tuple(args.user_classes))
        finally:
            stop_server(server)
    text = summary(rows)
    (args.results / "summary.md").write_text(text + "\n")
    print(text)
    print(f"\nlocust's report: {prefix.with_suffix('.html').resolve().as_uri()} (CSV beside it)")
    return 0 if all(row["failures"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
