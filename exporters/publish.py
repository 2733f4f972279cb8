"""Writes exports into a Triton repository: <repo>/<name>/1/model.onnx and <repo>/<name>/config.pbtxt."""

import shutil
from pathlib import Path

from google.protobuf import text_format

from server.protocol import ModelConfig


def model_path(repository: Path, name: str, version: int = 1) -> Path:
    path = Path(repository) / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_config(repository: Path, name: str, config: ModelConfig, extra_files=()) -> Path:
    model_dir = Path(repository) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    config.name = name
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    for path in extra_files:
        shutil.copyfile(path, model_dir / Path(path).name)
    return model_dir


def set_parameters(config: ModelConfig, **values) -> ModelConfig:
    for key, value in values.items():
        config.parameters[key].string_value = str(value)
    return config
