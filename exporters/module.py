"""Any torch.nn.Module to verified ONNX variants published in a Triton repository.

`export_module` traces the module once to fp32 ONNX, derives the fp16 and int8 variants from it, checks
each against the module on every parity case, and publishes only when all pass: `<name>` (fp32),
`<name>_fp16`, `<name>_int8`, each with its config.pbtxt completed from the exported graph.
"""

import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from exporters import parity, precision
from exporters.publish import model_path, write_config
from server.protocol import ModelConfig
from server.repository.config import complete
from server.runtime.session import OrtSession, SessionSettings

VARIANTS = ("fp32", "fp16", "int8")
Feeds = dict[str, np.ndarray]


class ExportError(Exception):
    """The model cannot be exported as asked; the message says why."""


@dataclass
class ExportReport:
    name: str
    variant: str
    path: Path
    size_bytes: int
    parity: parity.ParityReport

    def summary(self) -> str:
        return f"{self.name} ({self.size_bytes / 1e6:.1f} MB) {self.parity.summary()}"


@dataclass
class ImportReport:
    """A model imported as it is (a GGUF file): no parity to report."""

    path: Path  # the graph, <repository>/<name>/1/model.onnx, as an ExportReport's

    def summary(self) -> str:
        return "imported from GGUF as it is: ready to serve"


@contextmanager
def step(message: str, progress: Callable[[str], None] | None):
    """Reports a long step with its duration."""
    report = reporter(progress)
    report(f"{message} ...")
    started = time.perf_counter()
    yield
    report(f"{message}: done in {time.perf_counter() - started:.1f} s")


def check_model_type(checkpoint, family: str, supported: tuple[str, ...], alternative: str = "") -> None:
    """Refuses a transformers checkpoint of a model type the family's exporter does not handle."""
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(str(checkpoint)).model_type
    if model_type not in supported:
        raise ExportError(
            f"checkpoint '{checkpoint}' is a '{model_type}' model; the {family} exporter supports "
            f"{', '.join(supported)}{alternative}"
        )


def reporter(progress: Callable[[str], None] | None) -> Callable[[str], None]:
    from exporters import console

    return progress or console.say


def variant_name(name: str, variant: str) -> str:
    return name if variant == "fp32" else f"{name}_{variant}"


def check_variants(variants: Iterable[str], allowed: tuple[str, ...] = VARIANTS) -> list[str]:
    chosen = list(variants)
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen:
        raise ExportError(f"unknown variants {unknown or chosen}; choose from {', '.join(allowed)}")
    return chosen


def torch_to_onnx(
    module: nn.Module,
    example: dict[str, torch.Tensor],
    path: Path,
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int = 17,
) -> Path:
    """Traces the module (inputs in `example`'s order) into an fp32 ONNX graph."""
    module = module.eval()
    try:
        with torch.no_grad():
            torch.onnx.export(
                module, tuple(example.values()), str(path),
                input_names=list(example), output_names=output_names, dynamic_axes=dynamic_axes,
                opset_version=opset, dynamo=False,
            )
    except Exception as error:  # torch raises many types; all mean the same thing to the caller
        raise ExportError(f"{type(module).__name__} could not be exported to ONNX: {error}") from error
    return path


def batch_axes(names: Iterable[str]) -> dict[str, dict[int, str]]:
    return {name: {0: "batch"} for name in names}


def run_module(module: nn.Module, cases: list[Feeds]) -> list[list[np.ndarray]]:
    results = []
    with torch.no_grad():
        for feeds in cases:
            outputs = module(*(torch.from_numpy(array) for array in feeds.values()))
            outputs = outputs if isinstance(outputs, tuple | list) else (outputs,)
            results.append([output.detach().numpy() for output in outputs])
    return results


def run_onnx(path: Path, cases: list[Feeds]) -> list[list[np.ndarray]]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [session.run(None, feeds) for feeds in cases]


def build_variant(fp32: Path, variant: str, work: Path, int8: str, calibration) -> Path:
    target = work / f"{variant}.onnx"
    if variant == "fp32":
        return fp32
    if variant == "fp16":
        return precision.to_fp16(fp32, target)
    if variant == "int4":
        return precision.to_int4(fp32, target)
    if int8 == "static":
        if calibration is None:
            raise ExportError("static int8 needs calibration inputs")
        return precision.to_int8_static(fp32, target, calibration)
    if int8 == "blocks":
        return precision.to_int8_blocks(fp32, target)
    if int8 != "dynamic":
        raise ExportError(f"unknown int8 method '{int8}'; choose from {', '.join(precision.INT8_METHODS)}")
    return precision.to_int8_dynamic(fp32, target)


def graph_config(path: Path, base: ModelConfig) -> ModelConfig:
    """`base` completed from the exported graph, as the server will see it."""
    config = ModelConfig()
    config.CopyFrom(base)
    session = OrtSession(path, SessionSettings())
    complete(config, session.graph_inputs(), session.graph_outputs())
    return config


def default_config(batched: bool = True, max_batch_size: int = 8) -> ModelConfig:
    """Dynamic batching that waits up to 1 ms for a batch, but sends a lone request at once (the
    ortserve extension `dispatch_lone_requests`): no added latency at low load."""
    config = ModelConfig(max_batch_size=max_batch_size if batched else 0)
    if batched:
        config.dynamic_batching.max_queue_delay_microseconds = 1000
        config.parameters["dispatch_lone_requests"].string_value = "true"
    return config


def publish(path: Path, repository: Path, name: str, config: ModelConfig, extra_files=()) -> Path:
    shutil.copyfile(path, model_path(repository, name))
    return write_config(repository, name, graph_config(path, config), extra_files)


def export_module(
    module: nn.Module,
    example: dict[str, torch.Tensor],
    repository: Path,
    name: str,
    *,
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    variants: Iterable[str] = ("fp32",),
    cases: list[Feeds] | None = None,
    classifier: bool = False,
    int8: str = "dynamic",
    calibration: Iterable[Feeds] | None = None,
    config: ModelConfig | None = None,
    extra_files: Iterable[Path] = (),
    tolerances: dict[str, parity.Tolerance] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[ExportReport]:
    """Exports `module` called with `example` (name -> tensor, in argument order).

    `cases`: inputs for the parity check (several shapes; default the example); `dynamic_axes`: default
    axis 0 of every input and output is the batch; `int8`: "dynamic" (transformers, LSTMs) or "static"
    (CNNs, with `calibration` feeds); `config`: the config.pbtxt to complete from the graph (default:
    dynamic batching up to 8 when the batch axis is dynamic).
    """
    chosen = check_variants(variants)
    axes = batch_axes([*example, *output_names]) if dynamic_axes is None else dynamic_axes
    cases = cases or [{k: v.numpy() for k, v in example.items()}]
    base = config or default_config(all(0 in axes.get(n, {}) for n in [*example, *output_names]))
    tolerances = {**parity.TOLERANCES, **(tolerances or {})}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        with step(f"{name}: exporting fp32 ONNX", progress):
            fp32 = torch_to_onnx(module, example, work / "fp32.onnx", output_names, axes)
        expected = run_module(module, cases)
        built = []
        for variant in chosen:
            with step(f"{name}: building and checking {variant}", progress):
                path = build_variant(fp32, variant, work, int8, calibration)
                report = parity.compare(variant, expected, run_onnx(path, cases), classifier)
                parity.check(report, expected, tolerances[variant])
            built.append((variant, path, report))
        reports = []
        for variant, path, report in built:
            published = variant_name(name, variant)
            publish(path, repository, published, base, extra_files)
            target = model_path(repository, published)
            reports.append(ExportReport(published, variant, target, target.stat().st_size, report))
            reporter(progress)(reports[-1].summary())
    return reports
