"""One decoder graph with KV cache: `input_ids`, `attention_mask`, `position_ids`,
`past_key_values.{i}.key|value` in; `logits`, `present.{i}.key|value` out. The same graph runs the
prefill (zero-length past) and each decode step. Graphs with a `logit_positions` input (ortserve's exports)
also score prompts: the logits of every position, a chunk of the prompt per call.

`present` may hold only the new tokens' keys and values (ortserve's exports: the graph never copies the
past) or the past followed by them (Optimum's exports); either way its last columns are the new tokens,
which the server writes into its own cache buffers.

With IO binding (on by default where the graph runs on CUDA) the cache stays on the device: see
`device_cache`."""

import numpy as np

from server.generation.device_cache import CacheKernels, DeviceKVBatch, DeviceRunner
from server.generation.gqa import GqaDecoder
from server.generation.graph import ORT_FLOAT, DecoderGraphError, is_gqa_graph, past_names
from server.generation.kv_cache import KVBatch
from server.generation.protocols import TokenDecoder

KNOWN_INPUTS = ("input_ids", "attention_mask", "position_ids", "logit_positions", "use_cache_branch")


def make_decoder(session, io_binding: bool | None = None, head_dim: int | None = None,
                 rows: int = 1) -> TokenDecoder:
    """The decoder for the graph's layout: ortserve's and Optimum's (position ids, left padding), or
    onnxruntime-genai's GroupQueryAttention graphs (no position ids, right padding), whose cache has
    room for `rows` sequences."""
    return GqaDecoder(session, head_dim, rows) if is_gqa_graph(session) else Decoder(session, io_binding)


class Decoder:
    """The `TokenDecoder` of graphs with position ids: the cache left-padded (`KVBatch`), or kept on the
    device (`DeviceKVBatch`)."""

    def __init__(self, session, io_binding: bool | None = None):
        """`session`: an onnxruntime.InferenceSession of the decoder graph. `io_binding` keeps the cache
        on the graph's device; None: only where that device is a GPU."""
        self.session = session
        inputs = {node.name: node for node in session.get_inputs()}
        missing = [n for n in ("input_ids", "attention_mask", "position_ids") if n not in inputs]
        self.past_names = past_names(inputs)
        if missing or not self.past_names:
            raise DecoderGraphError(
                "a generation model needs inputs input_ids, attention_mask, position_ids and "
                f"past_key_values.<i>.key|value; the graph's inputs are {', '.join(inputs)}"
            )
        unknown = sorted(set(inputs) - {*KNOWN_INPUTS, *self.past_names})
        if unknown:
            raise DecoderGraphError(f"the decoder graph's input {', '.join(unknown)} is not understood; a "
                                    f"generation model takes {', '.join(KNOWN_INPUTS)} and "
                                    "past_key_values.<i>.key|value")
        self.cache_branch = "use_cache_branch" in inputs  # Optimum's merged decoders
        self.present_names = [n.replace("past_key_values", "present") for n in self.past_names]
        first = inputs[self.past_names[0]]
        self.heads, self.head_dim = first.shape[1], first.shape[3]
        self.past_dtype = ORT_FLOAT.get(first.type, np.float32)
        self.id_dtype = np.int64 if inputs["input_ids"].type == "tensor(int64)" else np.int32
        self.scores_prompts = "logit_positions" in inputs
        logits = next((n for n in session.get_outputs() if n.name == "logits"), None)
        vocab = logits.shape[-1] if logits is not None and logits.shape else None
        self.vocab_size = vocab if isinstance(vocab, int) else None
        runner = DeviceRunner(session)
        if io_binding is None:
            io_binding = runner.device != "cpu"
        self.kernels = CacheKernels(runner, len(self.past_names), self.past_dtype) if io_binding else None
        self.checks_drafts = self.kernels is None  # `check` runs on the host cache

    def empty(self, rows: int) -> KVBatch:
        shape = (rows, self.heads, 0, self.head_dim)
        return KVBatch([np.zeros(shape, self.past_dtype) for _ in self.past_names],
                       np.zeros((rows, 0), np.int64))

    def prefill(self, prompts: list[list[int]], cached: list[tuple[int, list | None]] | None = None,
                reach: int = 0, beside: KVBatch | None = None) -> tuple[np.ndarray, KVBatch]:
        """Left-padded prompts in one call: each row's next-token logits and the batch's cache.
        `cached`: per row, how many of its first tokens already have keys and values (a prefix cache's
        [heads, length, head_dim] tensors), which are fed as its past so that only the rest runs.
        `reach` is not reserved here: this graph attends over every column of its past, used or not;
        `beside` is not used: left-padded rows join by a copy to a common width."""
        cached = cached or [(0, None)] * len(prompts)
        held = max(length for length, _ in cached)
        if held and self.kernels:
            raise DecoderGraphError("prefix caching keeps the cache on the host; it is off with IO binding")
        new = [prompt[length:] for prompt, (length, _) in zip(prompts, cached)]
        width = max(len(tokens) for tokens in new)
        ids = np.zeros((len(prompts), width), self.id_dtype)
        mask = np.zeros((len(prompts), held + width), np.int64)
        shape = (len(prompts), self.heads, held, self.head_dim)
        past = [np.zeros(shape, self.past_dtype) for _ in self.past_names]
        for row, (tokens, (length, tensors)) in enumerate(zip(new, cached)):
            ids[row, width - len(tokens):] = tokens
            mask[row, held + width - len(tokens):] = 1
            mask[row, held - length:held] = 1
            for buffer, tensor in zip(past, tensors or ()):
                buffer[row, :, held - length:] = tensor
        positions = np.maximum(mask.cumsum(axis=1) - 1, 0)[:, held:]
        logits, present = self._run(ids, mask, positions, past)
        if self.kernels:
            return logits, DeviceKVBatch(present, mask, self.kernels)
        if not held:  # the graph's present outputs are the cache as they are
            return logits, KVBatch(present, mask)
        cache = KVBatch(past, mask[:, :held])
        cache.append(present, width)
        cache.mask = mask  # new columns of shorter rows are padding, not tokens
        return logits, cache

    @staticmethod
    def row_past(cache: KVBatch, row: int) -> list[np.ndarray]:
        """One row's keys and values of its real tokens: [heads, tokens, head_dim] per past input."""
        columns = np.flatnonzero(cache.mask[row])
        return [buffer[row][:, columns] for buffer in cache.past]

    def decode(self, last_tokens: list[int], cache: KVBatch | DeviceKVBatch, starting=None) -> np.ndarray:
        """One new token per row: next-token logits; the cache grows by the token's column. `starting`:
        called as the graph starts to run."""
        ids = np.asarray(last_tokens, self.id_dtype)[:, None]
        positions = cache.mask.sum(axis=1, keepdims=True)
        logits, present = self._run(ids, cache.attention_mask(1), positions, cache.past, starting=starting)
        cache.append(present, 1)
        return logits

    def check(self, tokens: list[int], cache: KVBatch, starting=None) -> np.ndarray:
        """[len(tokens), vocab]: one row's tokens after its past in one run (its last token and drafted
        ones), each position's next-token logits. The cache then holds them all (`KVBatch.rewind`)."""
        ids = np.asarray([tokens], self.id_dtype)
        every = np.arange(len(tokens))
        positions = cache.mask.sum(axis=1, keepdims=True) + every
        logits, present = self._run(ids, cache.attention_mask(len(tokens)), positions, cache.past, every,
                                    use_kernels=False, starting=starting)
        cache.append(present, len(tokens))
        return logits[0]

    def score(self, prompt: list[int], chunk: int | None = None) -> np.ndarray:
        """[len(prompt) - 1, vocab]: the logits that predicted each prompt token after the first, from
        one row of the host cache, `chunk` positions per call (bounded memory for long prompts)."""
        if not self.scores_prompts:
            raise DecoderGraphError("this model's graph returns the last position's logits only, so it "
                                    "cannot score prompts; export it again with ortserve")
        chunk = chunk or max(1, (1 << 24) // (self.vocab_size or 1 << 16))
        cache, scored = self.empty(1), []
        context = prompt[:-1]  # the last token predicts nothing in the prompt
        for start in range(0, len(context), chunk):
            ids = np.asarray([context[start:start + chunk]], self.id_dtype)
            positions = np.arange(start, start + ids.shape[1])[None]
            logits, present = self._run(ids, cache.attention_mask(ids.shape[1]), positions, cache.past,
                                        np.arange(ids.shape[1]), use_kernels=False)
            cache.append(present, ids.shape[1])
            scored.append(logits[0])
        return np.concatenate(scored) if scored else np.zeros((0, self.vocab_size or 0), np.float32)

    def _run(self, ids, mask, positions, past, keep=None, use_kernels=True, starting=None
             ) -> tuple[np.ndarray, list]:
        """The logits (on the host) of the last position, or of the `keep` positions as [rows, n, vocab],
        and the graph's `present` outputs."""
        feeds = {"input_ids": ids, "attention_mask": mask.astype(self.id_dtype),
                 "position_ids": positions.astype(self.id_dtype)}
        if self.cache_branch:
            feeds["use_cache_branch"] = np.array([past[0].shape[2] > 0])
        if self.scores_prompts:
            feeds["logit_positions"] = np.asarray([ids.shape[1] - 1] if keep is None else keep, np.int64)
        feeds.update(zip(self.past_names, past))
        outputs = ["logits", *self.present_names]
        if starting is not None:
            starting()
        if self.kernels and use_kernels:
            logits, *present = self.kernels.runner.run(self.session, feeds, outputs, host=("logits",))
            logits = logits.numpy()
        else:
            logits, *present = self.session.run(outputs, feeds)
        return (logits[:, -1, :] if keep is None else logits).astype(np.float32), present
