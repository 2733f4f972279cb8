"""`make bench`: every benchmark in turn, one at a time (they measure the same two cores), each step timed.

A step that fails is reported and the rest still run; the exit status is non-zero when any failed. The
steps' wall times go to their own section of BENCHMARKS.md, so the time `make bench` takes is on record.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

from loadtest import report

TARGET_MINUTES = 30
SOAK_SECONDS = 120  # `make soak` runs the full ten minutes


def steps(repository: Path, soak_seconds: float) -> list[list[str]]:
    return [
        ["exporters.demo", str(repository), "--benchmark-models"],
        ["loadtest.bench_batching"],
        ["loadtest.bench_exporters", "--repository", str(repository)],
        ["loadtest.bench_generation", "--repository", str(repository)],
        ["loadtest.bench_structured", "--repository", str(repository)],
        ["loadtest.bench_clients", "--repository", str(repository)],
        ["loadtest.bench_sequences"],
        ["loadtest.bench_shared_memory"],
        ["loadtest.bench_bytes"],
        ["loadtest.bench_pipelines"],
        ["loadtest.bench_gpu"],
        ["loadtest.bench_text"],
        ["loadtest.bench_llm"],
        ["loadtest.bench_genai"],
        ["loadtest.bench_gguf"],  # builds llama.cpp once (about 10 minutes), cached under .bench/
        ["loadtest.bench_gguf_step", "--rounds", "3"],
        ["loadtest.bench_peers"],
        ["loadtest.soak", "--repository", str(repository), "--seconds", f"{soak_seconds:g}"],
    ]


def run_step(step: list[str]) -> tuple[float, int]:
    print(f"== python -m {' '.join(step)}", flush=True)
    started = time.monotonic()
    code = subprocess.call([sys.executable, "-m", *step])
    minutes = (time.monotonic() - started) / 60
    print(f"== {step[0]}: {minutes:.1f} min, exit {code}", flush=True)
    return minutes, code


def run_all(steps: list[list[str]]) -> list[tuple[list[str], float, int]]:
    return [(step, *run_step(step)) for step in steps]


def timing_section(results: list[tuple[list[str], float, int]]) -> str:
    total = sum(minutes for _, minutes, _ in results)
    rows = [[f"`python -m {' '.join(step)}`", f"{minutes:.1f}", "ok" if code == 0 else f"**failed** ({code})"]
            for step, minutes, code in results]
    rows.append(["all", f"{total:.1f}", report.judged(f"< {TARGET_MINUTES} min", total < TARGET_MINUTES)])
    return (
        f"## How long `make bench` takes\n\n`make bench` ({report.machine()}): each step's wall time, "
        "including what it builds or installs on first use (demo models, the peers' environments).\n\n"
        + report.table(["step", "minutes", "status"], rows)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--soak-seconds", type=float, default=SOAK_SECONDS)
    args = parser.parse_args()
    results = run_all(steps(args.repository, args.soak_seconds))
    section = timing_section(results)
    report.write_section("bench-time", section)
    print(section)
    return int(any(code for _, _, code in results))


if __name__ == "__main__":
    sys.exit(main())
