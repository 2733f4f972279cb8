"""A GGUF file read with ggml-org's `gguf` package: its metadata as a dict, its tensors by name, and the
decoder settings its architecture's keys give."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFReader

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3")


class GgufError(ValueError):
    """The file cannot be imported; the message says what is wrong and what is supported."""


@dataclass
class Tensor:
    kind: object  # gguf.GGMLQuantizationType
    data: np.ndarray  # as the reader maps it: [rows, bytes of a row] for quantized types


@dataclass
class DecoderSettings:
    architecture: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    epsilon: float
    context: int
    rope_base: float
    rope_dim: int
    rope_scale: float  # linear position scaling: positions / rope_scale
    local_rope_base: float | None = None  # gemma3's sliding-window layers
    sliding_window: int | None = None
    sliding_pattern: int | None = None  # gemma3: every n-th layer attends globally


@dataclass
class GgufModel:
    path: Path
    metadata: dict
    tensors: dict[str, Tensor]

    def settings(self) -> DecoderSettings:
        arch = self.metadata.get("general.architecture")
        if arch not in ARCHITECTURES:
            raise GgufError(f"architecture '{arch}' is not supported; supported: {', '.join(ARCHITECTURES)}")

        def key(name, default=None):
            value = self.metadata.get(f"{arch}.{name}", default)
            if value is None:
                raise GgufError(f"the file has no '{arch}.{name}', which a {arch} decoder needs")
            return value

        heads, hidden = int(key("attention.head_count")), int(key("embedding_length"))
        head_dim = int(key("attention.key_length", hidden // heads))
        settings = DecoderSettings(
            architecture=arch, layers=int(key("block_count")), hidden=hidden, heads=heads,
            kv_heads=int(key("attention.head_count_kv", heads)), head_dim=head_dim,
            epsilon=float(key("attention.layer_norm_rms_epsilon")), context=int(key("context_length")),
            rope_base=float(key("rope.freq_base", 10000.0)),
            rope_dim=int(key("rope.dimension_count", head_dim)),
            rope_scale=float(key("rope.scaling.factor", 1.0)) if key("rope.scaling.type", "none") == "linear"
            else 1.0,
        )
        if arch == "gemma3":  # llama.cpp's defaults where the file is silent
            settings.sliding_window = int(key("attention.sliding_window"))
            settings.sliding_pattern = int(key("attention.sliding_window_pattern", 6))
            settings.local_rope_base = float(key("rope.freq_base_swa", 10000.0))
        return settings

    def tensor(self, name: str) -> Tensor:
        if name not in self.tensors:
            raise GgufError(f"the file has no tensor '{name}', which its architecture needs")
        return self.tensors[name]


class MappedReader(GGUFReader):
    """The gguf package's reader over a plain array view of its file map. It slices the map once per
    value it reads, and numpy.memmap's bookkeeping on every slice made a large vocabulary (Gemma 3's
    262,144 tokens) several times slower to read. The data stay mapped, not read."""

    @property
    def data(self) -> np.ndarray:
        return self._mapped

    @data.setter
    def data(self, mapped: np.memmap) -> None:
        self._mapped = mapped.view(np.ndarray)


def read(path: Path) -> GgufModel:
    """The file's metadata and tensors (memory-mapped, not read yet), or GgufError for a file that is
    not GGUF or is cut short."""
    path = Path(path)
    if not path.is_file():
        raise GgufError(f"'{path}' is not a file")
    try:
        reader = MappedReader(str(path))
    except Exception as error:  # the reader raises ValueError, IndexError... on a bad file
        raise GgufError(f"'{path.name}' is not a GGUF file or is truncated ({type(error).__name__}: "
                        f"{error})") from None
    metadata = {name: _value(field) for name, field in reader.fields.items()}
    tensors = {t.name: Tensor(t.tensor_type, t.data) for t in reader.tensors}
    return GgufModel(path, metadata, tensors)


def _value(field):
    try:
        return field.contents()
    except Exception:  # a type this reader cannot turn into Python values: not one the import reads
        return None
