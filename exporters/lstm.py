"""nn.LSTM models to ONNX with dynamic batch and sequence axes; int8 is dynamic per-channel."""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from exporters.module import ExportError, ExportReport, export_module


class SequenceClassifier(nn.Module):
    """An LSTM over [batch, time, features] whose last hidden state feeds a linear classifier."""

    def __init__(self, features: int, hidden: int, classes: int, layers: int = 1):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, sequence):
        _, (hidden, _) = self.lstm(sequence)
        return self.head(hidden[-1])


def load(checkpoint: str | Path) -> nn.Module:
    """A whole module saved with torch.save (its class importable)."""
    module = torch.load(checkpoint, weights_only=False)
    if not any(isinstance(m, nn.LSTM) for m in module.modules()):
        raise ExportError(f"'{checkpoint}' holds a {type(module).__name__} with no nn.LSTM in it")
    return module.eval()


def features_of(module: nn.Module) -> int:
    return next(m for m in module.modules() if isinstance(m, nn.LSTM)).input_size


def export(
    model: nn.Module,
    repository: Path,
    name: str,
    variants=("fp32",),
    cases: list[dict] | None = None,
    progress=None,
) -> list[ExportReport]:
    features = features_of(model)
    rng = np.random.default_rng(0)
    cases = cases or [
        {"sequence": rng.standard_normal((batch, steps, features)).astype(np.float32)}
        for batch, steps in ((1, 5), (3, 8), (2, 13))
    ]
    axes = {"sequence": {0: "batch", 1: "time"}, "output": {0: "batch"}}
    output = model(torch.from_numpy(cases[0]["sequence"]))
    return export_module(
        model.eval(), {"sequence": torch.from_numpy(cases[0]["sequence"])}, repository, name,
        output_names=["output"], dynamic_axes=axes, variants=variants, cases=cases,
        classifier=output.ndim == 2, int8="dynamic", progress=progress,
    )
