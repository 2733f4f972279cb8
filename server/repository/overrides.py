"""Triton's load request with overrides: a `config` JSON and `file:<path>` model files, which replace the
repository's files for that load in a private temporary directory."""

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from server.core.errors import InvalidArgument
from server.core.types import LOAD_FILE_PREFIX as FILE_PREFIX


@dataclass(frozen=True)
class Override:
    """What a load request replaced: the config (JSON) and, where files came with it, their directory."""

    config_json: str
    model_dir: Path | None = None  # <private temporary root>/<model name>

    def discard(self) -> None:
        if self.model_dir is not None:
            shutil.rmtree(self.model_dir.parent, ignore_errors=True)


def file_path(key: str) -> PurePosixPath:
    """`file:1/model.onnx` -> 1/model.onnx, refusing anything that could leave the model directory."""
    text = key.removeprefix(FILE_PREFIX)
    path = PurePosixPath(text)
    if not text or "\0" in text or "\\" in text or path.is_absolute() or ".." in path.parts:
        raise InvalidArgument(
            f"load parameter '{key}' must name a relative path inside the model directory "
            "(no '..', no absolute path, no NUL)"
        )
    return path


def write_files(name: str, files: dict[str, bytes]) -> Path:
    """The files of a load request in a fresh private directory; returns the model directory in it."""
    model_dir = Path(tempfile.mkdtemp(prefix=f"ortserve-{name}-")) / name
    model_dir.mkdir(mode=0o700)
    for key, data in files.items():
        target = model_dir / file_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return model_dir
