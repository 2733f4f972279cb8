"""One encoder model's text service: texts in, token feeds through the model's batcher, vectors out.

Every text goes to the batcher as a request of its own, so texts of a request are packed with other
requests' texts of similar length (the padding buckets) up to the token budget per execution."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from server.core.errors import InvalidArgument, TooLarge
from server.core.stats import TextStats, Timing
from server.core.types import TensorSpec, TextRequest
from server.encoding import pooling
from server.encoding.settings import TextSettings
from server.text.tokenizer import Encoded, EncoderTokenizer

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TEXT_INPUTS = ("text_input", "text_pair")

Infer = Callable[[dict[str, np.ndarray], list[str]], Awaitable[tuple[dict[str, np.ndarray], Timing]]]


@dataclass
class Texts:
    """A request's texts once tokenized: what runs, and what its usage reports."""

    encoded: list[Encoded]

    @property
    def tokens(self) -> int:
        return sum(len(e.ids) for e in self.encoded)


class TextService:
    def __init__(self, model_name: str, settings: TextSettings, inputs: list[TensorSpec],
                 outputs: list[TensorSpec], stats: TextStats, labels: list[str] = ()):
        self.model_name = model_name
        self.settings = settings
        self.stats = stats
        self.tokenizer = EncoderTokenizer(settings.tokenizer, settings.max_length, settings.truncation_side)
        self.dtypes = {spec.name: _numpy_int(spec) for spec in inputs if spec.name in TOKEN_INPUTS}
        if "input_ids" not in self.dtypes:
            raise ValueError("a text model's graph needs an 'input_ids' input")
        output = next((spec for spec in outputs if spec.name == settings.output), None)
        if output is None:
            raise ValueError(f"text_output '{settings.output}' is not an output of the graph")
        self.width = output.shape[-1]
        self.labels = [labels[i] if i < len(labels) else f"LABEL_{i}" for i in range(self.labels_count)]

    @property
    def labels_count(self) -> int:
        return self.width if self.settings.task == "classify" else 0

    def check_task(self, task: str) -> None:
        if task != self.settings.task:
            does = {"embed": "embeds text (/v1/embeddings, /embed, /similarity)",
                    "classify": "classifies text (/predict, /rerank)"}
            raise InvalidArgument(
                f"model '{self.model_name}' {does[self.settings.task]}; it cannot answer this route"
            )

    async def tokenize(self, request: TextRequest) -> Texts:
        """Checks the request's size, then tokenizes off the event loop."""
        count = len(request.inputs)
        if count == 0:
            raise InvalidArgument("the request holds no input texts")
        if count > (request.max_inputs or self.settings.max_client_batch_size):
            rule = "" if request.max_inputs else " (max_client_batch_size)"
            raise TooLarge(
                f"the request holds {count} inputs; model '{self.model_name}' takes at most "
                f"{request.max_inputs or self.settings.max_client_batch_size} per request{rule}"
            )
        start = time.perf_counter_ns()
        texts = await asyncio.to_thread(self._encode, request)
        self.stats.record(len(texts.encoded), texts.tokens, sum(e.truncated for e in texts.encoded),
                          time.perf_counter_ns() - start)
        if texts.tokens > self.settings.max_batch_tokens and not request.max_inputs:
            raise TooLarge(
                f"the request holds {texts.tokens} tokens; model '{self.model_name}' takes at most "
                f"{self.settings.max_batch_tokens} per request (max_batch_tokens)"
            )
        return texts

    def _encode(self, request: TextRequest) -> Texts:
        if all(isinstance(item, str) for item in request.inputs):
            items = request.inputs if request.pairs is None else list(zip(request.inputs, request.pairs))
            return Texts(self.tokenizer.encode(items, request.truncate, request.truncation_side))
        return Texts([self._token_ids(index, ids) for index, ids in enumerate(request.inputs)])

    def _token_ids(self, index: int, ids) -> Encoded:
        if not isinstance(ids, list) or not ids or not all(type(i) is int for i in ids):
            raise InvalidArgument(
                f"input {index} must be a string or a non-empty list of integer token ids, got {ids!r}"
            )
        vocab = self.tokenizer.vocab_size
        if not all(0 <= i < vocab for i in ids):
            raise InvalidArgument(f"input {index} holds a token id outside 0..{vocab - 1}")
        if len(ids) > self.settings.max_length:
            raise InvalidArgument(
                f"input {index} has {len(ids)} tokens; this model takes at most {self.settings.max_length}"
            )
        return Encoded(list(ids), [0] * len(ids), False)

    def feeds(self, encoded: list[Encoded]) -> dict[str, np.ndarray]:
        """Token inputs for `encoded`, right-padded with 0 to the longest."""
        length = max(len(e.ids) for e in encoded)
        values = {
            "input_ids": [e.ids for e in encoded],
            "attention_mask": [[1] * len(e.ids) for e in encoded],
            "token_type_ids": [e.type_ids for e in encoded],
        }
        feeds = {}
        for name, dtype in self.dtypes.items():
            array = np.zeros((len(encoded), length), dtype)
            for row, value in enumerate(values[name]):
                array[row, : len(value)] = value
            feeds[name] = array
        return feeds

    async def run(self, request: TextRequest, texts: Texts, infer: Infer) -> tuple[list[np.ndarray], int]:
        """Each text through `infer` (the model's scheduler); its pooled vector or scores, and how long
        the request waited in the queue (each wave's longest wait). Texts go in waves of at most
        max_client_batch_size texts and max_batch_tokens tokens, one after another, so that a request of
        many (OpenAI's up to 2048) takes its turns instead of filling the model's queue."""
        results, queued = [], 0
        for wave in self._waves(texts.encoded):
            ran = await asyncio.gather(*(infer(self.feeds([e]), [self.settings.output]) for e in wave))
            queued += max(timing.queue_ns for _, timing in ran)
            results += ran
        return [self._result(request, outputs[self.settings.output][0]) for outputs, _ in results], queued

    def _waves(self, encoded: list[Encoded]) -> list[list[Encoded]]:
        waves, tokens = [[]], 0
        for item in encoded:
            full = len(waves[-1]) == self.settings.max_client_batch_size
            if waves[-1] and (full or tokens + len(item.ids) > self.settings.max_batch_tokens):
                waves.append([])
                tokens = 0
            waves[-1].append(item)
            tokens += len(item.ids)
        return waves

    def _result(self, request: TextRequest, output: np.ndarray) -> np.ndarray:
        if self.settings.task == "classify":
            return pooling.scores(output, request.raw_scores)
        if not request.pooled:
            return output.astype(np.float32, copy=False)
        normalize = self.settings.normalize if request.normalize is None else request.normalize
        return pooling.shaped(pooling.pool(output, self.settings.pooling), normalize, request.dimensions)


def _numpy_int(spec: TensorSpec):
    return {"INT32": np.int32, "INT64": np.int64}.get(spec.datatype, np.int64)
