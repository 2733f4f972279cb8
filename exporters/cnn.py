"""Image classifiers (transformers' ResNet family or plain modules) to ONNX; int8 is static, calibrated."""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from exporters.module import ExportReport, check_model_type, export_module

SUPPORTED = ("resnet", "convnext", "regnet")


class Logits(nn.Module):
    """A transformers image classifier returning its logits tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


def load(checkpoint: str | Path, model_class: str | None = None) -> nn.Module:
    """A transformers checkpoint directory (or hub id), or a torch.save file: a whole module, or a
    state_dict loaded into `model_class` ("module:Class")."""
    if Path(checkpoint).suffix in (".pt", ".pth"):
        from exporters.torch_files import load_module

        return load_module(checkpoint, model_class)
    from transformers import AutoModelForImageClassification

    check_model_type(checkpoint, "cnn", SUPPORTED, " checkpoints or a module saved with torch.save")
    return Logits(AutoModelForImageClassification.from_pretrained(str(checkpoint)).eval())


def image_shape(model: nn.Module, size: int | None) -> tuple[int, int, int]:
    config = getattr(getattr(model, "model", model), "config", None)
    channels = getattr(config, "num_channels", 3)
    return channels, size or 224, size or 224


def export(
    model: nn.Module,
    repository: Path,
    name: str,
    variants=("fp32",),
    shape: tuple[int, int, int] = (3, 224, 224),
    calibration: np.ndarray | None = None,
    cases: list[dict] | None = None,
    progress=None,
) -> list[ExportReport]:
    """`calibration`: representative images [n, *shape] for static int8 (default: random ones); the
    parity cases default to some of them, so each variant is checked on the inputs it was made for."""
    rng = np.random.default_rng(0)
    if calibration is None:
        calibration = rng.standard_normal((16, *shape)).astype(np.float32)
    feeds = [{"pixel_values": calibration[i:i + 4]} for i in range(0, len(calibration), 4)]
    cases = cases or [{"pixel_values": calibration[:1]}, {"pixel_values": calibration[1:4]}]
    return export_module(
        model.eval(), {"pixel_values": torch.from_numpy(cases[0]["pixel_values"])}, repository, name,
        output_names=["logits"], variants=variants, cases=cases, classifier=True,
        int8="static", calibration=feeds, progress=progress,
    )
