"""Protocol-neutral requests and responses exchanged between front ends and the core."""

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.core.errors import InvalidArgument


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a variable dimension, batch dimension included when batching


@dataclass
class Tensor:
    name: str
    datatype: str
    data: np.ndarray  # object arrays of bytes for BYTES

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


@dataclass
class RequestedOutput:
    name: str
    class_count: int = 0  # Triton's classification extension: top-k as "value:index[:label]"
    binary: bool | None = None  # None: the front end's default
    parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_parameters(cls, name: str, parameters: dict[str, Any]) -> "RequestedOutput":
        class_count = parameters.get("classification", 0)
        if not isinstance(class_count, int) or isinstance(class_count, bool) or class_count < 0:
            raise InvalidArgument(
                f"output '{name}': 'classification' must be an integer >= 0, got {class_count!r}"
            )
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidArgument(f"output '{name}': 'binary_data' must be true or false, got {binary!r}")
        return cls(name, class_count, binary, parameters)


@dataclass
class InferRequest:
    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[RequestedOutput] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    protocol: str = ""  # the front end it came through, for per-protocol counts
    raw_input: bytes | memoryview | None = None  # a raw binary request: the one input's bytes, no header
    shm_inputs: list[tuple[str, str, list[int], Any]] = field(default_factory=list)  # (name, datatype,
    # shape, RegionUse): inputs whose data lie in a registered shared memory region


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]
    requested: dict[str, RequestedOutput]
    parameters: dict[str, Any] = field(default_factory=dict)
    shm_outputs: dict[str, dict] = field(default_factory=dict)  # output -> its shared memory parameters


@dataclass(frozen=True)
class ModelIndexEntry:
    name: str
    version: str
    state: str
    reason: str


@dataclass
class GenerateRequest:
    """A prompt as text or token ids, with sampling parameters, for a generation model."""

    model_name: str
    model_version: str = ""
    text: str | None = None
    input_ids: list[int] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    protocol: str = ""
    messages: list | None = None  # a chat: rendered with the model's chat template in place of `text`


@dataclass
class TextRequest:
    """Texts for an encoder model (embeddings, classification, reranking), from any text front end."""

    model_name: str
    task: str  # "embed" or "classify"
    inputs: list  # strings, or lists of token ids (embed)
    pairs: list[str] | None = None  # the second text of each input (cross-encoders)
    truncate: bool = False
    truncation_side: str = ""  # "": the model's
    normalize: bool | None = None  # None: the model's
    dimensions: int | None = None
    raw_scores: bool = False
    model_version: str = ""
    protocol: str = ""


@dataclass
class TextResult:
    model_name: str
    model_version: str
    vectors: list  # one np.ndarray per input: an embedding, or scores
    tokens: int
