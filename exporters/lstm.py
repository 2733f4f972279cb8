"""nn.LSTM models to ONNX with dynamic batch and sequence axes; int8 is dynamic per-channel.

The streaming form takes one chunk of a sequence with the LSTM's hidden and cell state as inputs and
outputs, declared as implicit state of a `sequence_batching` config: the server keeps the state between
a sequence's chunks, so a client sends only the chunks (with sequence_id/start/end).
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from exporters.module import ExportError, ExportReport, export_module
from server.protocol import ModelConfig, enum

FP32 = enum("DataType").values_by_name["TYPE_FP32"].number
STREAM_STATES = (("hidden_in", "hidden_out"), ("cell_in", "cell_out"))


class SequenceClassifier(nn.Module):
    """An LSTM over [batch, time, features] whose last hidden state feeds a linear classifier."""

    def __init__(self, features: int, hidden: int, classes: int, layers: int = 1):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, sequence):
        _, (hidden, _) = self.lstm(sequence)
        return self.head(hidden[-1])


class StreamingClassifier(nn.Module):
    """One chunk [batch, time, features] and the state [batch, layers, hidden] in; the classifier's
    output after the chunk's last step and the state after it out."""

    def __init__(self, lstm: nn.LSTM, head: nn.Module):
        super().__init__()
        self.lstm, self.head = lstm, head

    def forward(self, sequence, hidden_in, cell_in):
        state = (hidden_in.transpose(0, 1).contiguous(), cell_in.transpose(0, 1).contiguous())
        _, (hidden, cell) = self.lstm(sequence, state)
        return self.head(hidden[-1]), hidden.transpose(0, 1), cell.transpose(0, 1)


def load(checkpoint: str | Path, model_class: str | None = None) -> nn.Module:
    """A torch.save file: a whole module (its class importable), or a state_dict loaded into
    `model_class` ("module:Class")."""
    from exporters.torch_files import load_module

    module = load_module(checkpoint, model_class)
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


def streaming(model: nn.Module) -> StreamingClassifier:
    """The streaming form of a model whose forward is `head(last hidden state of its nn.LSTM)`."""
    lstm = next(m for m in model.modules() if isinstance(m, nn.LSTM))
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module) or not lstm.batch_first or lstm.bidirectional:
        raise ExportError(
            f"{type(model).__name__} cannot stream: the streaming form needs a batch_first, "
            "unidirectional nn.LSTM and a `head` module over its last hidden state"
        )
    return StreamingClassifier(lstm, head).eval()


def stream_config(lstm: nn.LSTM, max_batch_size: int = 32, candidates: int = 256) -> ModelConfig:
    """Oldest-first sequence batching with the hidden and cell state kept by the server."""
    config = ModelConfig(max_batch_size=max_batch_size)
    batching = config.sequence_batching
    batching.max_sequence_idle_microseconds = 60_000_000
    batching.oldest.max_candidate_sequences = candidates
    for input_name, output_name in STREAM_STATES:
        state = batching.state.add(input_name=input_name, output_name=output_name, data_type=FP32)
        state.dims.extend([lstm.num_layers, lstm.hidden_size])
        state.initial_state.add(data_type=FP32, dims=[lstm.num_layers, lstm.hidden_size], zero_data=True,
                                name="zeros")
    return config


def export_streaming(
    model: nn.Module,
    repository: Path,
    name: str,
    variants=("fp32",),
    sequences: np.ndarray | None = None,
    progress=None,
) -> list[ExportReport]:
    """Exports the streaming form; parity is checked chunk by chunk against the module."""
    stream = streaming(model)
    lstm = stream.lstm
    rng = np.random.default_rng(0)
    if sequences is None:
        sequences = rng.standard_normal((3, 12, lstm.input_size)).astype(np.float32)
    zeros = np.zeros((len(sequences), lstm.num_layers, lstm.hidden_size), np.float32)
    cases = [
        {"sequence": sequences[:, :5], "hidden_in": zeros, "cell_in": zeros},
        {"sequence": sequences[:1, :1], "hidden_in": zeros[:1] + 0.5, "cell_in": zeros[:1] - 0.5},
    ]
    example = {key: torch.from_numpy(value) for key, value in cases[0].items()}
    names = ["output", "hidden_out", "cell_out"]
    axes = {n: {0: "batch"} for n in [*names, "hidden_in", "cell_in"]}
    axes["sequence"] = {0: "batch", 1: "time"}
    return export_module(
        stream, example, repository, name, output_names=names, dynamic_axes=axes, variants=variants,
        cases=cases, int8="dynamic", config=stream_config(lstm), progress=progress,
    )
