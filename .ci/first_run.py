"""CI: `make run` on a fresh clone, as a new user runs it. Times the install, the first ready model and
the whole default repository, and fails when building goes more than 10 seconds without a line of
output, when the server is not serving within the time limit, or when a default model does not answer.

python3 .ci/first_run.py [--limit-minutes 40]   (stdlib only: it runs before any virtual environment)
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["simple", "minilm", "minilm_fp16", "minilm_int8", "reranker", "resnet", "resnet_fp16",
          "resnet_int8", "lstm", "lstm_fp16", "lstm_int8", "lstm_stream", "chat",
          "gpt", "gpt_fp16", "gpt_int8"]
MAX_SILENCE = 10.0
DEMO_LINE = re.compile(r"^\[\s*\d+ s\] ")
SERVER_LINE = re.compile(r"^\d{4}-\d\d-\d\d ")  # the server's log, polled below: not build progress


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Output:
    """The command's output, split on new lines and carriage returns, each piece timed on arrival."""

    def __init__(self, stream, started: float):
        self.lines: list[tuple[float, str]] = []
        self.started = started
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        pending = b""
        while chunk := os.read(stream.fileno(), 65536):
            pending += chunk
            *complete, pending = re.split(rb"[\r\n]", pending)
            for raw in complete:
                text = raw.decode(errors="replace")
                if text.strip():
                    self.lines.append((time.monotonic() - self.started, text))
                    print(f"  | {text}", flush=True)

    def first(self, pattern: re.Pattern) -> float | None:
        return next((t for t, line in self.lines if pattern.search(line)), None)


def get(url: str, body: dict | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def ready_models(http: str) -> set[str]:
    status, body = get(f"{http}/v2/repository/index", {})
    if status != 200:
        return set()
    return {entry["name"] for entry in json.loads(body) if entry.get("state") == "READY"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit-minutes", type=float, default=40.0)
    limit = parser.parse_args().limit_minutes * 60
    work = Path(tempfile.mkdtemp(prefix="ortserve-first-run-"))
    clone = work / "ortserve"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    ports = {name: free_port() for name in ("HTTP_PORT", "GRPC_PORT", "METRICS_PORT")}
    http = f"http://127.0.0.1:{ports['HTTP_PORT']}"
    started = time.monotonic()
    make = subprocess.Popen(["make", "run", *(f"{k}={v}" for k, v in ports.items())], cwd=clone,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    output = Output(make.stdout, started)
    first_ready = full = None
    try:
        while time.monotonic() - started < limit and make.poll() is None:
            ready = ready_models(http)
            if first_ready is None and ready:
                first_ready = time.monotonic() - started
            if set(MODELS) <= ready:
                full = time.monotonic() - started
                break
            time.sleep(1.0)
        answers = check_answers(http) if full is not None else {}
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        make.wait(60)
        shutil.rmtree(work, ignore_errors=True)  # the clone with its environment and models: about 2 GB
    return report(output, first_ready, full, answers)


def check_answers(http: str) -> dict[str, int]:
    """One call to each kind of default model, as the README shows them."""
    question = "What is the capital of France? Answer in one sentence."
    chat = {"model": "chat", "messages": [{"role": "user", "content": question}],
            "max_tokens": 24, "temperature": 0}
    calls = {
        "simple": ("/v2/models/simple/infer", {"inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16}]}),
        "embeddings": ("/v1/embeddings", {"model": "minilm", "input": "hello"}),
        "chat": ("/v1/chat/completions", chat),
        "gpt": ("/v1/completions", {"model": "gpt", "prompt": "def ", "max_tokens": 8}),
    }
    answers = {}
    for name, (path, body) in calls.items():
        status, text = get(http + path, body)
        answers[name] = status
        print(f"{name}: {status} {text[:300].decode(errors='replace')}", flush=True)
    return answers


def report(output: Output, first_ready: float | None, full: float | None, answers: dict) -> int:
    building = [(t, line) for t, line in output.lines
                if t >= (output.first(DEMO_LINE) or 0) and not SERVER_LINE.match(line)]
    if full is not None:
        building = [(t, line) for t, line in building if t <= full]
    gaps = [(later[0] - earlier[0], earlier[1]) for earlier, later in zip(building, building[1:])]
    longest = max(gaps, default=(0.0, ""))
    installed = output.first(DEMO_LINE)
    print(f"make run from a fresh clone: installed in {installed or float('nan'):.0f} s, first model ready "
          f"at {first_ready or float('nan'):.0f} s, all {len(MODELS)} default models ready at "
          f"{full or float('nan'):.0f} s; longest silence while building {longest[0]:.1f} s "
          f"(after '{longest[1][:80]}')", flush=True)
    failures = []
    if first_ready is None or full is None:
        failures.append("the default repository was not served within the time limit")
    if longest[0] > MAX_SILENCE:
        failures.append(f"building went {longest[0]:.1f} s without a line of output (at most {MAX_SILENCE})")
    failures += [f"{name} answered {status}" for name, status in answers.items() if status != 200]
    for failure in failures:
        print(f"FAILED: {failure}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
