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

    gpus = "".join(f", {name}" for name in gpu_names())
    return (
        f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs{gpus}, onnxruntime {onnxruntime.__version__}"
    )


def gpu_names() -> list[str]:
    """The NVIDIA GPUs that NVML (nvidia-ml-py, in the gpu extra) sees; none without it."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    handles = [pynvml.nvmlDeviceGetHandleByIndex(index) for index in range(pynvml.nvmlDeviceGetCount())]
    names = [pynvml.nvmlDeviceGetName(handle) for handle in handles]
    return [name.decode() if isinstance(name, bytes) else name for name in names]


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
