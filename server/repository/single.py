"""A directory that holds one model instead of a repository of them, as KServe mounts an
InferenceService's storage at /mnt/models: a lone `model.onnx` (with the files beside it), or one Triton
model directory (`config.pbtxt`, `1/model.onnx`). Either is served as a repository of that one model,
under the name given (KServe passes the InferenceService's, `{{.Name}}`)."""

import atexit
import shutil
import tempfile
from pathlib import Path

from server.repository.config import CONFIG_FILE
from server.repository.config import DEFAULT_MODEL_FILENAME as MODEL_FILE


def layout(path: Path) -> str:
    """"file" (a lone model.onnx), "model" (one model directory) or "repository"."""
    if (path / MODEL_FILE).is_file():
        return "file"
    versions = [child for child in path.iterdir() if child.name.isdigit() and (child / MODEL_FILE).exists()]
    if (path / CONFIG_FILE).is_file() or versions:
        return "model"
    return "repository"


def as_repository(path: Path, name: str | None) -> Path:
    """`path` itself when it is a repository; else a repository of links to its one model, `name` (the
    directory's own name by default), in a temporary directory removed at exit."""
    path = Path(path)
    kind = layout(path) if path.is_dir() else "repository"
    if kind == "repository":
        return path
    root = Path(tempfile.mkdtemp(prefix="ortserve-repository-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    model = root / (name or path.resolve().name)
    if kind == "model":
        model.symlink_to(path.resolve(), target_is_directory=True)
        return root
    version = model / "1"
    version.mkdir(parents=True)
    for entry in path.resolve().iterdir():
        if entry.name.startswith("."):
            continue
        (model / entry.name).symlink_to(entry)  # config.pbtxt, tokenizer.json, labels: the model's
        if entry.name != CONFIG_FILE:
            (version / entry.name).symlink_to(entry)  # model.onnx and its external data: the version's
    return root
