"""BENCHMARKS.md is written by the benchmark scripts: each one replaces its own section."""

import platform
import re
import time
from pathlib import Path

import onnxruntime

PATH = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nWritten by `make bench` (scripts under `loadtest/`); do not edit by hand.\n"


def machine() -> str:
    import os

    return (
        f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, onnxruntime {onnxruntime.__version__}"
    )


def write_section(name: str, body: str) -> None:
    text = PATH.read_text() if PATH.exists() else HEADER
    block = f"<!-- {name}:start -->\n{body.rstrip()}\n<!-- {name}:end -->"
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    text = (
        pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    )
    PATH.write_text(text)


def judged(target: str, met: bool) -> str:
    """A target with its verdict, so a missed one stands out in the table."""
    return f"{target}: {'met' if met else '**MISSED**'}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def middle(rounds: list, key) -> object:
    """The round whose `key` is the median: the figure taken from interleaved rounds on a machine whose
    speed drifts."""
    return sorted(rounds, key=key)[len(rounds) // 2]
