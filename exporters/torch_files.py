"""PyTorch files as users bring them: a whole module saved with `torch.save`, or a state_dict with the
class that builds it (`--model-class module:Class`), the class importable from the user's own file
(`--module path.py`); and calibration images for static int8 (`--calibration DIR|file.npy`)."""

import importlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exporters.module import ExportError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def import_user_file(path: str | Path) -> object:
    """Imports the user's Python file; its classes also answer for `__main__`, where a script that
    saved a model with `torch.save` defined them."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"--module '{path}' is not a file; pass the Python file defining the model class")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    sys.path.insert(0, str(path.parent.resolve()))
    spec.loader.exec_module(module)
    main = sys.modules["__main__"]
    for name, value in vars(module).items():
        if isinstance(value, type) and not hasattr(main, name):
            setattr(main, name, value)
    return module


def model_class(spec: str) -> type:
    """`module:Class` (a dotted module on the path, or the stem of a `--module` file)."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ExportError(f"--model-class must be module:Class, got '{spec}'")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ExportError(f"--model-class '{spec}' cannot be imported ({error}); if the class is in your own "
                          "file, pass it with --module path/to/file.py") from None
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ExportError(f"--model-class '{spec}' is not a torch.nn.Module class")
    return found


def load_module(path: str | Path, class_spec: str | None = None) -> nn.Module:
    """The module in a `torch.save` file: a whole module, or a state_dict loaded into `class_spec`."""
    if not Path(path).is_file():
        raise ExportError(f"checkpoint '{path}' is not a file")
    try:
        saved = torch.load(path, weights_only=False, map_location="cpu")
    except AttributeError as error:  # pickle could not find the class the module was saved with
        raise ExportError(
            f"'{path}' holds a module whose class cannot be imported ({error}); pass the file that defines "
            "it with --module path/to/file.py"
        ) from None
    if isinstance(saved, nn.Module):
        return saved.eval()
    if isinstance(saved, dict) and saved and all(isinstance(v, torch.Tensor) for v in saved.values()):
        return _from_state_dict(path, saved, class_spec)
    raise ExportError(f"'{path}' holds a {type(saved).__name__}; expected a module saved with torch.save "
                      "or a state_dict with --model-class module:Class")


def _from_state_dict(path, state: dict, class_spec: str | None) -> nn.Module:
    if class_spec is None:
        raise ExportError(f"'{path}' holds a state_dict (weights only); pass --model-class module:Class, a "
                          "class built without arguments, and --module path.py if it is in your own file")
    cls = model_class(class_spec)
    try:
        module = cls()
    except TypeError as error:
        raise ExportError(f"--model-class '{class_spec}' cannot be built without arguments ({error}); "
                          "save the whole module with torch.save(model, path) instead") from None
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        first = " ".join(str(error).strip().splitlines()[:2])
        raise ExportError(f"the state_dict in '{path}' does not fit {cls.__name__}: {first}") from None
    return module.eval()


def calibration_images(source: str | Path, shape: tuple[int, int, int], normalize=None,
                       limit: int = 512) -> np.ndarray:
    """[n, channels, height, width] float32: a `.npy` array of that shape as it is, or the images of a
    directory resized to the model's size (gray or RGB, as it has channels), scaled to [0, 1] and, with
    `normalize` (mean, std per channel: a checkpoint's preprocessor_config.json), normalized."""
    source = Path(source)
    if source.suffix == ".npy":
        images = np.load(source).astype(np.float32)
        if images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape):
            raise ExportError(f"--calibration '{source}' has shape {list(images.shape)}; expected "
                              f"[n, {', '.join(map(str, shape))}]")
        return images[:limit]
    if not source.is_dir():
        raise ExportError(f"--calibration '{source}' is neither a directory of images nor a .npy file")
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise ExportError(f"--calibration '{source}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
    from PIL import Image

    channels, height, width = shape
    mode = "L" if channels == 1 else "RGB"
    pictures = []
    for file in files:
        with Image.open(file) as image:
            picture = np.asarray(image.convert(mode).resize((width, height)), np.float32) / 255.0
        pictures.append(picture[None] if channels == 1 else picture.transpose(2, 0, 1))
    images = np.stack(pictures)
    if normalize is not None:
        mean, std = (np.asarray(v, np.float32).reshape(-1, 1, 1) for v in normalize)
        images = (images - mean) / std
    return images
