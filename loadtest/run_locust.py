"""`make loadtest`: serve the default repository on loopback, run locust headless for a bounded time
and user count, and write a summary plus locust's CSV and HTML report under loadtest/results/.

    python -m loadtest.run_locust [--users 16] [--seconds 30] [--repository model_repository]
"""

import argparse
import csv
import subprocess
import sys
from pathlib import Path

from tests.conftest import start_server, stop_server

RESULTS = Path(__file__).resolve().parent / "results"


def run_locust(
    http_url: str, grpc_url: str, users: int, seconds: int, prefix: Path, user_classes: tuple[str, ...] = ()
) -> list[dict]:
    """Runs locust headless and returns its per-request-type statistics rows."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(Path(__file__).with_name("locustfile.py")),
        "--headless",
        "--host",
        f"http://{http_url}",
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{seconds}s",
        "--stop-timeout",
        "5",
        "--csv",
        str(prefix),
        "--html",
        str(prefix.with_suffix(".html")),
        "--only-summary",
        "--exit-code-on-error",
        "0",
        *user_classes,
    ]
    subprocess.run(
        command, check=True, env={**__import__("os").environ, "ORTSERVE_GRPC": grpc_url}, timeout=seconds + 60
    )
    with open(f"{prefix}_stats.csv") as stats:
        return [row for row in csv.DictReader(stats) if row["Name"] != "Aggregated"]


def summary(rows: list[dict]) -> str:
    lines = [
        "| request | requests | failures | req/s | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['Type']} {row['Name']} | {row['Request Count']} | {row['Failure Count']} | "
            f"{float(row['Requests/s']):.1f} | {row['50%']} | {row['95%']} | {row['99%']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    server = start_server(
        args.repository, RESULTS / "server.log", "--access-log", "false", ready_model="simple"
    )
    try:
        rows = run_locust(server.http_url, server.grpc_url, args.users, args.seconds, RESULTS / "locust")
    finally:
        stop_server(server)
    text = summary(rows)
    (RESULTS / "summary.md").write_text(text + "\n")
    print(text)
    print(f"\nCSV and HTML report under {RESULTS}")
    return 0 if all(row["Failure Count"] == "0" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
