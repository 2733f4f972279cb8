"""NVIDIA's aiperf, the OpenAI-protocol benchmark client, against the default chat model: a short streaming
chat profile that must finish with no error. aiperf pins versions of transformers, orjson and
prometheus-client of its own, so it runs from its own environment (.bench/aiperf-venv, installed on first
use). Writes the "clients" section of BENCHMARKS.md.

    python -m loadtest.bench_clients --repository model_repository [--requests 24] [--concurrency 4]
"""

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from loadtest import report
from loadtest.peer_servers import environment
from loadtest.server_process import start_server, stop_server

AIPERF = "aiperf==0.13.0"
MODEL = "chat"


def profile(aiperf: Path, url: str, tokenizer: Path, requests: int, concurrency: int, out: Path) -> dict:
    """aiperf's summary (its JSON export) of a streaming chat profile."""
    command = [str(aiperf), "profile", "--model", MODEL, "--url", url, "--endpoint-type", "chat",
               "--streaming", "--request-count", str(requests), "--concurrency", str(concurrency),
               "--tokenizer", str(tokenizer), "--prompt-input-tokens-mean", "64",
               "--prompt-output-tokens-mean", "64", "--random-seed", "0", "--ui-type", "none",
               "--output-artifact-dir", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise RuntimeError(f"aiperf exited {done.returncode}: {(done.stdout + done.stderr)[-2000:]}")
    return json.loads(next(out.rglob("profile_export_aiperf.json")).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    python, why = environment("aiperf", [AIPERF])
    if python is None:
        raise SystemExit(why)
    work = Path(tempfile.mkdtemp())
    server = start_server(args.repository, work / "server.log", "--model-control-mode", "explicit",
                          "--load-model", MODEL, ready_model=MODEL, timeout=300)
    try:
        summary = profile(python.with_name("aiperf"), f"http://{server.http_url}",
                          (args.repository / MODEL).resolve(), args.requests, args.concurrency,
                          work / "aiperf")
    finally:
        stop_server(server)
    completed = int(summary["request_count"]["avg"])
    ttft = f"{summary['time_to_first_token']['p50']:.1f}"
    throughput = f"{summary['output_token_throughput']['avg']:.0f}"
    failures = sum(entry.get("count", 1) for entry in summary.get("error_summary") or [])
    clean = not failures and completed == args.requests
    body = (
        f"{report.machine()}. `python -m loadtest.bench_clients --requests {args.requests} --concurrency "
        f"{args.concurrency}`: `{AIPERF}` (its own environment) profiling the default `chat` model over "
        f"`/v1/chat/completions`, streamed, 64-token prompts and answers.\n\n"
        + report.table(["requests completed", "errors", "TTFT p50 ms", "output tokens/s"],
                       [[completed, failures, ttft, throughput]])
        + f"\n\n{report.judged('aiperf finishes with no error', clean)}\n"
    )
    report.write_section("clients", "## Clients: aiperf\n\n" + body)
    print(body)


if __name__ == "__main__":
    main()
