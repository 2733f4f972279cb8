"""What the exporters print: one line per stage with the time since the command started, a bar with an
ETA for training and int8 calibration, a line at least every few seconds while a long step runs, and
third-party warnings held back unless asked for (`--verbose`)."""

import logging
import os
import sys
import threading
import time
import warnings
from contextlib import contextmanager

_STARTED = time.perf_counter()
_last_output = _STARTED
HEARTBEAT_SECONDS = 5.0


def say(text: str) -> None:
    global _last_output
    _last_output = time.perf_counter()
    print(f"[{_last_output - _STARTED:5.0f} s] {text}", file=sys.stderr, flush=True)


@contextmanager
def heartbeat(description: str, every: float = HEARTBEAT_SECONDS):
    """While the block runs, says that `description` is still going whenever nothing was printed for
    `every` seconds (a long export or quantization prints nothing of its own)."""
    done = threading.Event()
    started = time.perf_counter()

    def beat():
        while not done.wait(1.0):
            if time.perf_counter() - _last_output >= every:
                say(f"{description}: still working ({time.perf_counter() - started:.0f} s)")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def bar(total: int, description: str, unit: str = "step"):
    """A tqdm bar on stderr; where stderr is not a terminal (a log file, CI) it writes a line every
    few seconds instead of redrawing one."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=description, unit=unit, file=_Output(sys.stderr, tty),
                mininterval=0.5 if tty else 5.0, miniters=1, dynamic_ncols=tty, ncols=None if tty else 100)


class _Output:
    """stderr for tqdm, noting when it last wrote; off a terminal its carriage returns become lines."""

    def __init__(self, stream, tty: bool):
        self.stream, self.tty = stream, tty

    def write(self, text: str) -> None:
        global _last_output
        _last_output = time.perf_counter()
        if self.tty:
            self.stream.write(text)
            return
        text = text.replace("\r", "\n").replace("\x1b[A", "").strip("\n")
        if text.strip():
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def quiet_third_party() -> None:
    """Holds back what torch, transformers and ONNX Runtime print while exporting that a user cannot act
    on: tracer and deprecation warnings, `torchvision is not installed`, weight-loading bars, ONNX
    Runtime's quantization advice."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    try:
        from torch.jit import TracerWarning

        warnings.filterwarnings("ignore", category=TracerWarning)
    except ImportError:
        pass
    for name in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "transformers", None):
        logging.getLogger(name).setLevel(logging.ERROR)  # None: the root logger, ONNX Runtime's quantizer's
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    except ImportError:
        pass
