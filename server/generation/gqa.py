"""Decoders built by onnxruntime-genai's model builder: GroupQueryAttention graphs with `input_ids`,
`attention_mask` and `past_key_values.{i}.key|value` in (no position ids: the operator places rotary
positions itself) and `logits` (every position) and `present.{i}.key|value` out. Graphs that `import-llm`
builds from GGUF files also take `logit_positions` [rows, k] (the positions whose logits are computed:
a prefill asks for each row's last).

GroupQueryAttention reads each row's length from its attention mask (its sum), so the cache is padded
on the right: a row's tokens sit at the start of its buffers. Each past input and its present output
are bound to the same buffer (the operator's shared past/present mode, as onnxruntime-genai runs it), so
a step writes only the new tokens' keys and values, at each row's own length. The buffers are reserved
up to the sequences' budgets and hold every running row (`RightPaddedKV`): a decode step copies
nothing, a joining row is prefilled into the free slots (copied only where they lack its columns) and
a leaving one copies only the rows behind it."""

import math
import mmap
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from server.generation.graph import ORT_FLOAT, DecoderGraphError, past_names
from server.generation.kv_cache import GROWTH

CACHE_TYPES = {**ORT_FLOAT, "tensor(int8)": np.int8}  # int8: a quantized cache, scales in the graph

PADDING_TOLERATED = 4 / 3  # padded tokens a batched prefill may compute per token the prompts hold


@dataclass
class RightPaddedKV:
    """The rows' keys and values in the first `rows` slots of `slab[i]`: [slots, kv_heads, capacity,
    head_dim], each row's tokens from column 0 (`lengths`). Slots and columns the rows do not use are
    free room, never read (the attention mask gives each row's length): rows join, leave and grow in the
    same buffers, and a step writes only its new tokens. Room reserved up to the sequences' budgets
    costs memory only once used (`_zeros`)."""

    slab: list[np.ndarray]
    lengths: np.ndarray
    room: int = 1  # the slots a slab gets when rows join and it has too few: the sequences that may run

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def slots(self) -> int:
        return self.slab[0].shape[0]

    @property
    def length(self) -> int:
        return int(self.lengths.max()) if self.rows else 0

    @property
    def capacity(self) -> int:
        return self.slab[0].shape[2]

    @property
    def past(self) -> list[np.ndarray]:
        """[rows, kv_heads, capacity, head_dim] per past input: views of the slab, no copy."""
        return [buffer[:self.rows] for buffer in self.slab]

    def reserve(self, new: int) -> None:
        """Room for `new` more tokens in every row (a copy only when the budget given at prefill was
        too small)."""
        if self.length + new > self.capacity:
            self.slab = _moved([self], self.slots, -(-(self.length + new) // GROWTH) * GROWTH)

    def filter(self, keep: list[int]) -> "RightPaddedKV":
        """The rows in `keep` (increasing) moved down to the first slots, in place: only rows behind a
        leaving one are copied, and only their used columns. This cache is consumed."""
        for slot, row in enumerate(keep):
            if slot != row:
                used = self.lengths[row]
                for buffer in self.slab:
                    buffer[slot, :, :used] = buffer[row, :, :used]
        return RightPaddedKV(self.slab, self.lengths[keep], self.room)

    @staticmethod
    def concatenate(batches: list["RightPaddedKV"]) -> "RightPaddedKV":
        """The rows of all batches in the first one's slab where it has the slots and columns (only the
        joining rows are copied), else in a new slab large enough for all."""
        batches = [b for b in batches if b.rows]
        if len(batches) == 1:
            return batches[0]
        first, rows = batches[0], sum(b.rows for b in batches)
        capacity = max(b.capacity for b in batches)
        if first.slots >= rows and first.capacity >= capacity:
            _copy_rows(batches[1:], first.slab, first.rows)
            slab = first.slab
        else:
            slab = _moved(batches, max(rows, first.room), capacity)
        return RightPaddedKV(slab, np.concatenate([b.lengths for b in batches]), first.room)

    def attention_mask(self, new: int) -> np.ndarray:
        """[rows, length + new]: ones over each row's tokens and its new ones, from the start."""
        return _right(self.lengths + new, self.length + new)

    def rewind(self, tokens: int) -> None:
        """Every row's last `tokens` dropped (drafts that did not hold): their columns are free room again."""
        self.lengths = self.lengths - tokens


def _moved(batches: list[RightPaddedKV], slots: int, capacity: int) -> list[np.ndarray]:
    """A new slab of `slots` x `capacity` holding the batches' rows one after another."""
    _, heads, _, dim = batches[0].slab[0].shape
    slab = [_zeros((slots, heads, capacity, dim), buffer.dtype) for buffer in batches[0].slab]
    _copy_rows(batches, slab, 0)
    return slab


def _zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Zeros in fresh pages that the OS maps on first touch: room reserved costs memory only once used.
    (np.zeros of a size the allocator has held before gets that memory cleared, all of it, at once.)"""
    size = math.prod(shape) * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, size), dtype).reshape(shape) if size else np.zeros(shape, dtype)


def _copy_rows(batches: list[RightPaddedKV], slab: list[np.ndarray], start: int) -> None:
    """Each batch's rows into `slab` from slot `start` on; a batch already there (prefilled into the
    slab's free slots, `GqaDecoder.prefill`'s `beside`) is not copied."""
    for batch in batches:
        if _address(batch.slab[0]) != _address(slab[0][start:]):
            used = batch.length
            for target, source in zip(slab, batch.slab):
                target[start:start + batch.rows, :, :used] = source[:batch.rows, :, :used]
        start += batch.rows


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


class GqaDecoder:
    """The `TokenDecoder` of onnxruntime-genai's graphs: the cache right-padded (`RightPaddedKV`)."""

    kernels = None  # the cache stays on the host
    scores_prompts = True  # the graph returns every position's logits
    checks_drafts = True

    def __init__(self, session, head_dim: int | None = None, slots: int = 1):
        """`head_dim`: the key/value head size, where the graph leaves it symbolic (the builder's
        `kv_cache_dim`; genai_config.json's `head_size`, which `import-llm` writes to the config).
        `slots`: the rows a cache makes room for once rows join it (the sequences that may run at once)."""
        self.session = session
        self.slots = slots
        inputs = {node.name: node for node in session.get_inputs()}
        self.past_names = past_names(inputs)
        unknown = sorted(set(inputs) - {"input_ids", "attention_mask", "logit_positions", *self.past_names})
        if unknown or not self.past_names or "attention_mask" not in inputs:
            raise DecoderGraphError(
                f"a GroupQueryAttention decoder takes input_ids, attention_mask and "
                f"past_key_values.<i>.key|value; not understood: {', '.join(unknown) or 'no past inputs'}"
            )
        self.present_names = [n.replace("past_key_values", "present") for n in self.past_names]
        first = inputs[self.past_names[0]]
        self.heads, self.head_dim = first.shape[1], first.shape[3]
        if not isinstance(self.head_dim, int):
            if head_dim is None:
                raise DecoderGraphError("the graph's past inputs leave the head size symbolic; set the "
                                        "config parameter 'kv_head_dim' (genai_config.json's head_size)")
            self.head_dim = head_dim
        self.past_dtype = CACHE_TYPES.get(first.type, np.float32)
        self.id_dtype = np.int64 if inputs["input_ids"].type == "tensor(int64)" else np.int32
        self.positioned = "logit_positions" in inputs
        logits = next(o for o in session.get_outputs() if o.name == "logits")
        self.vocab_size = logits.shape[-1] if isinstance(logits.shape[-1], int) else None
        self.logits_dtype = ORT_FLOAT.get(logits.type, np.float32)
        self._bound = None  # (the cache's slab, its rows, the binding that holds them)
        self._decode_logits = None  # the buffer bound to the logits of the cached binding

    def empty(self, rows: int, capacity: int = 0) -> RightPaddedKV:
        """Room for every slot from the start: a batch that becomes the running one takes joining rows
        in place (slots never used cost no memory, `_zeros`)."""
        shape = (max(rows, self.slots), self.heads, capacity, self.head_dim)
        return RightPaddedKV([_zeros(shape, self.past_dtype) for _ in self.past_names],
                             np.zeros(rows, np.int64), self.slots)

    def prefill(self, prompts: list[list[int]], cached=None, reach: int = 0,
                beside: RightPaddedKV | None = None) -> tuple[np.ndarray, RightPaddedKV]:
        """Right-padded prompts: each row's next-token logits and the batch's cache. `cached`: per row,
        how many of its first tokens already have keys and values (a prefix cache's [kv_heads, length,
        head_dim] tensors), written into the row's first columns so that only the rest runs; then the
        rows run one at a time (the operator takes several new tokens after a past for one row only).
        Rows run one at a time too where padding them to the longest would compute a third more tokens
        than they hold (the padded tokens cost more than the separate runs).
        `reach`: the most positions any of these rows will hold (prompt and generated tokens), the
        columns reserved now (rounded up to a power of two) so that decoding never copies the cache,
        and rows whose budgets differ a little join the running ones' buffers without a move.
        `beside`: the running rows' cache; where its slab has free slots with the columns these rows
        need, they are written there, so that joining them to it copies nothing."""
        cached = cached or [(0, None)] * len(prompts)
        held = np.array([length for length, _ in cached], np.int64)
        lengths = np.array([len(p) for p in prompts], np.int64)
        cache = self._room_for(len(prompts), max(reach, int(lengths.max()) + 1), beside)
        padded = len(prompts) * int(lengths.max()) > PADDING_TOLERATED * int(lengths.sum())
        if not held.any() and not padded:
            logits = self._fill(prompts, held, cache)
        else:
            rows = []
            for row, (prompt, (length, past)) in enumerate(zip(prompts, cached)):
                alone = RightPaddedKV([buffer[row:row + 1] for buffer in cache.slab], lengths[row:row + 1])
                for buffer, part in zip(alone.slab, past if length else ()):
                    buffer[0, :, :length] = part
                rows.append(self._fill([prompt], held[row:row + 1], alone))
            logits = np.concatenate(rows)
        cache.lengths = lengths
        return logits, cache

    def _room_for(self, rows: int, columns: int, beside: RightPaddedKV | None) -> RightPaddedKV:
        """An empty cache for `rows` new rows of up to `columns` tokens: the free slots after `beside`'s
        rows (views of its slab) where it has them, else a new slab."""
        if beside is None or beside.slots - beside.rows < rows or beside.capacity < columns:
            return self.empty(rows, _room(columns))
        return RightPaddedKV([buffer[beside.rows:] for buffer in beside.slab], np.zeros(rows, np.int64),
                             beside.room)

    def _fill(self, prompts: list[list[int]], held: np.ndarray, cache: RightPaddedKV) -> np.ndarray:
        """Runs each prompt's tokens after its first `held` (already in the cache): the logits of each
        one's last token."""
        lengths = np.array([len(p) for p in prompts], np.int64)
        ids = np.zeros((len(prompts), int((lengths - held).max())), self.id_dtype)
        for row, (prompt, start) in enumerate(zip(prompts, held)):
            ids[row, :len(prompt) - start] = prompt[start:]
        last = (lengths - held - 1)[:, None]
        logits = self._run(ids, _right(lengths, int(lengths.max())), cache, positions=last)
        return logits[:, 0] if self.positioned else logits[np.arange(len(prompts)), last[:, 0]]

    @staticmethod
    def row_past(cache: RightPaddedKV, row: int) -> list[np.ndarray]:
        """One row's keys and values of its tokens: [kv_heads, tokens, head_dim] per past input."""
        used = cache.lengths[row]
        return [buffer[row, :, :used] for buffer in cache.slab]

    def decode(self, last_tokens: list[int], cache: RightPaddedKV, starting=None) -> np.ndarray:
        """`starting`: called as the graph starts to run (without the GIL, so other threads' Python
        overlaps the run instead of delaying it)."""
        cache.reserve(1)
        ids, mask = np.asarray(last_tokens, self.id_dtype)[:, None], cache.attention_mask(1)
        logits = self._run(ids, mask, cache, starting, np.zeros_like(ids, dtype=np.int64))
        cache.lengths = cache.lengths + 1
        return logits[:, -1]

    def check(self, tokens: list[int], cache: RightPaddedKV, starting=None) -> np.ndarray:
        """[len(tokens), vocab]: one row's tokens after its past in one run (its last token and drafted
        ones), each position's next-token logits. The cache then holds them all (`RightPaddedKV.rewind`)."""
        cache.reserve(len(tokens))
        ids = np.asarray([tokens], self.id_dtype)
        every = np.arange(len(tokens), dtype=np.int64)[None]
        logits = self._run(ids, cache.attention_mask(len(tokens)), cache, starting, every)
        cache.lengths = cache.lengths + len(tokens)
        return logits[0]

    def score(self, prompt: list[int]) -> np.ndarray:
        """[len(prompt) - 1, vocab]: the logits that predicted each prompt token after the first."""
        ids = np.asarray([prompt], self.id_dtype)
        every = np.arange(ids.shape[1], dtype=np.int64)[None]
        return self._run(ids, np.ones_like(ids, dtype=np.int64), self.empty(1, ids.shape[1]),
                         positions=every)[0, :-1]

    def _run(self, ids, mask, cache: RightPaddedKV, starting=None, positions=None) -> np.ndarray:
        """One run with each past input and its present output bound to the cache's buffer: the new
        tokens' keys and values are written in place. Returns the logits (of `positions` [rows, k]
        where the graph takes them); a decode step's are in a buffer the next decode step of the same
        rows writes again."""
        binding = self._binding(cache)
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask.astype(self.id_dtype))
        if self.positioned:
            binding.bind_cpu_input("logit_positions", positions)
        logits = self._logits_bound(binding, ids.shape)
        if starting is not None:
            starting()
        self.session.run_with_iobinding(binding)
        if logits is None:
            logits = binding.get_outputs()[0].numpy()  # the logits alone
        return logits.astype(np.float32, copy=False)

    def _logits_bound(self, binding, shape: tuple[int, int]) -> np.ndarray | None:
        """The buffer the logits of one new token per row go to, bound once for the cached binding
        (binding it and copying ORT's output out cost more than the rest of a step's Python); None
        where ORT allocates them (a prefill)."""
        if self._decode_logits is not None and self._decode_logits.shape[:2] == shape:
            return self._decode_logits
        if shape[1] != 1 or self.vocab_size is None:
            binding.bind_output("logits")  # unallocated again: the last run's logits had their own shape
            self._decode_logits = None
            return None
        logits = np.empty((shape[0], 1, self.vocab_size), self.logits_dtype)
        binding.bind_output("logits", "cpu", 0, logits.dtype, logits.shape, logits.ctypes.data)
        self._decode_logits = logits
        return logits

    def _binding(self, cache: RightPaddedKV):
        """The cache's buffers bound as past and present; kept while the buffers stay the same (each
        step of a decode), since binding every layer's buffers costs as much as a small model's step."""
        if self._bound is not None and self._bound[0] is cache.slab and self._bound[1] == cache.rows:
            return self._bound[2]
        binding = self.session.io_binding()
        binding.bind_output("logits")  # first: get_outputs() lists outputs in the order they were bound
        for past, present, buffer in zip(self.past_names, self.present_names, cache.past):
            value = ort.OrtValue.ortvalue_from_numpy(buffer)  # the buffer's own memory, no copy
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)
        self._bound, self._decode_logits = (cache.slab, cache.rows, binding), None
        return binding


def _room(columns: int) -> int:
    """The columns a new cache reserves for `columns`: the next power of two (at least GROWTH). The
    pages of columns never used are never touched (`_zeros`)."""
    return max(GROWTH, 1 << (columns - 1).bit_length())


def _right(lengths: np.ndarray, width: int) -> np.ndarray:
    """[rows, width]: 1 over each row's first `length` columns."""
    return (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)

