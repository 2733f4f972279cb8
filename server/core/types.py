"""Protocol-neutral requests and responses exchanged between front ends and the core."""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from server.core.fields import boolean, integer


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a variable dimension, batch dimension included when batching
    optional: bool = False  # an input a request may leave out (config `optional: true`)


@dataclass(frozen=True)
class GraphTensor:
    """An input or output as the ONNX graph declares it (None for a dynamic dimension)."""

    name: str
    datatype: str | None
    shape: tuple[int | None, ...]
    optional: bool = False  # an input with a default: an initializer the graph lets a request override


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
        what = f"output '{name}': "
        class_count = integer(parameters.get("classification"), what + "'classification'", default=0)
        binary = boolean(parameters.get("binary_data"), what + "'binary_data'")
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
    traceparent: str = ""  # W3C trace context the client sent, continued by the request's trace


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]
    requested: dict[str, RequestedOutput]
    parameters: dict[str, Any] = field(default_factory=dict)
    shm_outputs: dict[str, dict] = field(default_factory=dict)  # output -> its shared memory parameters


# request parameters that constrain a generation's output, as vLLM's (generation/structured.py)
STRUCTURED_OUTPUT_KEYS = ("structured_outputs", "guided_json", "guided_regex", "guided_choice",
                          "guided_grammar")
CONTROL_MODES = ("none", "explicit", "poll")  # tritonserver's --model-control-mode
LOAD_FILE_PREFIX = "file:"  # Triton's load parameters `file:<path>`: a model file sent with the load


@dataclass(frozen=True)
class ModelIndexEntry:
    name: str
    version: str
    state: str
    reason: str


@dataclass(frozen=True)
class ChatOptions:
    """How a chat is rendered (vLLM's chat extras): with the generation prompt after it, or with its last
    (assistant) message left open for the model to continue; `template_kwargs`: more variables for the
    template (such as Qwen 3's `enable_thinking`)."""

    add_generation_prompt: bool = True
    continue_final_message: bool = False
    template_kwargs: dict = field(default_factory=dict)


PLAIN_CHAT = ChatOptions()  # the generation prompt after the messages, no more variables


@dataclass(frozen=True)
class ToolUse:
    """A chat's tools, OpenAI's function definitions, and how it may use them."""

    tools: list[dict]  # [{"type": "function", "function": {"name", "description", "parameters"}}]
    choice: str = "auto"  # "auto", "required" (some call), or the name of the one function to call
    parallel: bool = True  # several calls in one answer

    @property
    def functions(self) -> list[dict]:
        return [tool["function"] for tool in self.tools]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as OpenAI's API carries it


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
    tools: ToolUse | None = None  # tools the chat may call (rendered by the template with it)
    chat_options: ChatOptions = PLAIN_CHAT
    traceparent: str = ""  # W3C trace context the client sent, continued by the request's trace


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
    max_inputs: int = 0  # more texts than the model takes at once (OpenAI's 2048), run in waves; 0: refused
    pooled: bool = True  # False: each token's vector, not pooled nor normalized (TEI's /embed_all)


@dataclass
class TextResult:
    model_name: str
    model_version: str
    vectors: list  # one np.ndarray per input: an embedding (or a row per token), or scores
    tokens: int


class FinishReason(str, Enum):
    """Why a generated sequence ended, in the words of the OpenAI API and Triton's generate extension."""

    STOP = "stop"  # an end-of-sequence token, a stop token or a stop string
    LENGTH = "length"  # max_tokens, or the model's context
    ABORT = "abort"  # the client left, or the model was unloaded

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TokenLogprob:
    """A token as text (`token_id:N` without a tokenizer), its log-probability, and the most likely
    tokens at its place (None for a prompt's first token: nothing predicts it)."""

    token: str
    logprob: float | None
    top: list[tuple[str, float]] | None


@dataclass
class TokenEvent:
    """New tokens of one sequence (and their text), the last one with its finish reason."""

    token_ids: list[int]
    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)  # per token, when the request asked
    cached_tokens: int = 0  # prompt tokens whose keys and values came from the prefix cache

    def then(self, later: "TokenEvent") -> "TokenEvent":
        """This event followed by a later one of the same sequence, as one."""
        return TokenEvent(self.token_ids + later.token_ids, self.text + later.text, later.finish_reason,
                          later.prompt_tokens, later.generated_tokens, self.logprobs + later.logprobs,
                          later.cached_tokens)


@dataclass(frozen=True)
class TextModelInfo:
    """What the text front ends show of an encoder model (TEI's /info, route selection)."""

    name: str
    task: str  # "embed" or "classify"
    labels: list[str]
    pooling: str
    normalize: bool
    max_length: int
    max_batch_tokens: int
    max_client_batch_size: int

    @property
    def reranker(self) -> bool:
        return self.task == "classify" and len(self.labels) == 1
