"""The generation pieces that need no model: scheduler, KV batch, sampling, text stream."""

import asyncio
import tracemalloc

import numpy as np
import pytest

from server.core.errors import InvalidArgument, Unavailable
from server.core.types import FinishReason, TokenEvent
from server.generation.decode_run import DecodeRun
from server.generation.device_cache import CacheKernels, DeviceKVBatch, DeviceRunner, append_graph
from server.generation.engine import Mailbox
from server.generation.kv_cache import GROWTH, KVBatch
from server.generation.prompt_lookup import PromptLookup
from server.generation.protocols import KVCache
from server.generation.sampling import Sampler, SamplingParams, sampling_params
from server.generation.scheduler import Scheduler, SchedulerLimits, Sequence
from server.generation.settings import GenerationSettings
from server.generation.text import TextStream


def sequence(i, prompt_len=4, max_tokens=8):
    return Sequence(i, list(range(prompt_len)), max_tokens)


def test_scheduler_admits_up_to_the_running_limit_and_decodes_the_rest():
    scheduler = Scheduler(SchedulerLimits(max_running=2, max_waiting=8))
    first, second, third = sequence(1), sequence(2), sequence(3)
    for s in (first, second, third):
        scheduler.add(s)
    plan = scheduler.schedule()
    assert plan.prefill == [first, second] and plan.decode == []
    plan = scheduler.schedule()
    assert plan.prefill == [] and plan.decode == [first, second]
    scheduler.finish(first, FinishReason.LENGTH)
    plan = scheduler.schedule()  # the finished one leaves, the waiting one joins at once
    assert plan.decode == [second] and plan.prefill == [third]


def test_prefill_budget_bounds_new_prompt_tokens_per_step_but_never_blocks_one():
    scheduler = Scheduler(SchedulerLimits(max_running=8, max_prefill_tokens=10))
    long, short, other = sequence(1, 30), sequence(2, 6), sequence(3, 6)
    for s in (long, short, other):
        scheduler.add(s)
    assert scheduler.schedule().prefill == [long]  # alone over budget: still admitted
    plan = scheduler.schedule()
    assert plan.prefill == [short] and plan.decode == [long]  # short + other would be 12 > 10
    assert scheduler.schedule().prefill == [other]


def test_cache_budget_holds_sequences_back_until_room_frees():
    scheduler = Scheduler(SchedulerLimits(max_running=8, max_cache_tokens=30))
    a, b = sequence(1, 10, 10), sequence(2, 10, 10)
    scheduler.add(a)
    scheduler.add(b)
    assert scheduler.schedule().prefill == [a]
    assert scheduler.schedule().prefill == []
    scheduler.finish(a, FinishReason.LENGTH)
    assert scheduler.schedule().prefill == [b]
    with pytest.raises(Unavailable, match="needs 40 cache tokens but the cache holds 30"):
        scheduler.add(sequence(3, 20, 20))


def test_a_full_waiting_queue_refuses_at_once():
    scheduler = Scheduler(SchedulerLimits(max_running=1, max_waiting=1))
    scheduler.add(sequence(1))
    with pytest.raises(Unavailable, match=r"too many sequences waiting \(1"):
        scheduler.add(sequence(2))


def test_abort_of_a_waiting_sequence_removes_it():
    scheduler = Scheduler(SchedulerLimits(max_running=1))
    a, b = sequence(1), sequence(2)
    scheduler.add(a)
    scheduler.add(b)
    scheduler.schedule()
    scheduler.finish(b, FinishReason.ABORT)
    assert not scheduler.waiting and b.finish_reason == FinishReason.ABORT
    scheduler.finish(a, FinishReason.ABORT)
    assert not scheduler.has_work


def test_kv_batch_filter_drops_rows_and_unneeded_padding_and_concatenate_left_pads():
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])
    past = [np.arange(2 * 4, dtype=np.float32).reshape(2, 1, 4, 1)]
    kept = KVBatch(past, mask).filter([0])
    assert kept.mask.tolist() == [[1, 1]] and kept.past[0][0, 0, :, 0].tolist() == [2, 3]
    short = KVBatch([np.ones((1, 1, 1, 1), np.float32)], np.array([[1]]))
    joined = KVBatch.concatenate([KVBatch(past, mask), short])
    assert joined.mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]]
    assert joined.past[0][2, 0, :, 0].tolist() == [0, 0, 0, 1]


def test_kv_batch_appends_in_place_grows_when_full_and_masks_its_free_room():
    cache = KVBatch([np.full((2, 1, 1, 1), 7, np.float32)], np.array([[0], [1]]))
    cache.append([np.array([[[[1]]], [[[2]]]], np.float32)], 1)
    grown = cache.past[0]
    assert cache.capacity == GROWTH and cache.mask.tolist() == [[0, 1], [1, 1]]
    assert grown[:, 0, :3, 0].tolist() == [[7, 1, 0], [7, 2, 0]]
    cache.append([np.array([[[[5, 3]]], [[[6, 4]]]], np.float32).transpose(0, 1, 3, 2)], 1)
    assert cache.past[0] is grown and grown[:, 0, :3, 0].tolist() == [[7, 1, 3], [7, 2, 4]]
    assert cache.attention_mask(1).tolist() == [[0, 1, 1] + [0] * (GROWTH - 3) + [1],
                                                [1, 1, 1] + [0] * (GROWTH - 3) + [1]]
    joined = KVBatch.concatenate([cache, KVBatch([np.full((1, 1, 1, 1), 9, np.float32)], np.array([[1]]))])
    assert joined.past[0][:, 0, :, 0].tolist() == [[7, 1, 3], [7, 2, 4], [0, 0, 9]]
    assert joined.filter([2]).past[0][:, 0, :, 0].tolist() == [[9]]


def traced(make, change):
    """`change(make())`, and the bytes held before it, at its peak and after it (tracemalloc, started
    before `make` so that releasing what it made counts)."""
    tracemalloc.start()
    try:
        made = make()
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = change(made)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, before, peak, after


def filled_batch(tensors, shape, value=None):
    return KVBatch([np.full(shape, float(i if value is None else value), np.float32) for i in range(tensors)],
                   np.ones((shape[0], shape[2]), np.int64))


def test_a_full_kv_batch_grows_its_buffers_one_at_a_time():
    """Grown all at once, every old buffer stayed alive while all the new ones were made: twice the cache
    at the peak, and the new buffers in memory never touched before (a page fault each page)."""
    tensors, shape = 8, (2, 3, GROWTH, 16)
    new_token = [np.full(shape[:2] + (1, 16), -1.0, np.float32)] * tensors

    def grow(cache):
        cache.append(new_token, 1)
        return cache

    cache, _, peak, after = traced(lambda: filled_batch(tensors, shape), grow)
    one_old = np.zeros(shape, np.float32).nbytes
    assert cache.capacity == 2 * GROWTH and peak - after < 2 * one_old  # all at once: 8 old buffers
    for i, buffer in enumerate(cache.past):
        assert (buffer[:, :, :GROWTH] == i).all() and (buffer[:, :, GROWTH] == -1).all()
        assert (buffer[:, :, GROWTH + 1:] == 0).all()


def test_joining_kv_batches_releases_each_buffer_once_copied():
    """Joined all at once (while the caller still holds the batches), every joined buffer took new memory:
    the whole cache again at the peak."""
    tensors, shape, short = 8, (3, 2, 24, 16), (1, 2, 10, 16)
    joined, before, peak, _ = traced(
        lambda: [filled_batch(tensors, shape), filled_batch(tensors, short, value=-1)], KVBatch.concatenate)
    one_joined = np.zeros((4, *shape[1:]), np.float32).nbytes
    assert peak - before < 3 * one_joined  # all at once: 8 joined buffers
    assert joined.mask[3].tolist() == [0] * 14 + [1] * 10
    for i, buffer in enumerate(joined.past):
        assert (buffer[:3] == i).all() and (buffer[3, :, :14] == 0).all() and (buffer[3, :, 14:] == -1).all()


def test_device_kv_batch_keeps_the_same_keys_and_values_as_the_host_batch():
    import onnxruntime as ort
    from onnx import TensorProto

    rng = np.random.default_rng(0)
    runner = DeviceRunner(ort.InferenceSession(append_graph(1, TensorProto.FLOAT)))
    kernels = CacheKernels(runner, 2, np.float32)

    def both(rows, length, padding):
        past = [rng.standard_normal((rows, 2, length, 3)).astype(np.float32) for _ in range(2)]
        mask = np.ones((rows, length), np.int64)
        mask[0, :padding] = 0
        device = DeviceKVBatch([ort.OrtValue.ortvalue_from_numpy(p) for p in past], mask, kernels)
        return KVBatch([p.copy() for p in past], mask), device

    def on_host(batch):
        return [value.numpy() for value in batch.past]

    host, device = both(3, 5, 2)
    assert isinstance(host, KVCache) and isinstance(device, KVCache)
    for step in range(4):  # the graph's present: the new column alone, or the past followed by it
        present = [rng.standard_normal((3, 2, 1, 3)).astype(np.float32) for _ in range(2)]
        if step % 2:
            present = [np.concatenate([p, n], axis=2) for p, n in zip(on_host(device), present)]
        host.append(present, 1)
        device.append([ort.OrtValue.ortvalue_from_numpy(p) for p in present], 1)
    other_host, other_device = both(2, 12, 4)
    host = KVBatch.concatenate([host.filter([0, 2]), other_host])
    device = DeviceKVBatch.concatenate([device.filter([0, 2]), other_device])
    assert device.mask.tolist() == host.mask.tolist() and device.rows == 4 and device.length == 12
    assert device.attention_mask(1).tolist() == np.concatenate([host.mask, np.ones((4, 1))], 1).tolist()
    for kept, expected in zip(on_host(device), host.past):
        np.testing.assert_array_equal(kept, expected[:, :, :host.length])


def test_io_binding_parameter_takes_auto_true_or_false_and_names_itself_otherwise(tmp_path):
    settings = {value: GenerationSettings.from_parameters({"max_sequence_length": "8", "io_binding": value},
                                                          tmp_path).io_binding
                for value in ("auto", "true", "0")}
    assert settings == {"auto": None, "true": True, "0": False}
    with pytest.raises(ValueError, match="'io_binding' must be auto, true or false, got 'gpu'"):
        GenerationSettings.from_parameters({"max_sequence_length": "8", "io_binding": "gpu"}, tmp_path)


@pytest.mark.parametrize(
    "parameters, name",
    [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_k": 1.5}, "top_k"),
     ({"max_tokens": 0}, "max_tokens"), ({"seed": "x"}, "seed"), ({"stop": [1]}, "stop"),
     ({"repetition_penalty": 0}, "repetition_penalty"), ({"stop_token_ids": [-1]}, "stop_token_ids")],
)
def test_bad_sampling_values_name_the_parameter(parameters, name):
    with pytest.raises(InvalidArgument, match=f"parameter '{name}'"):
        sampling_params(parameters, 16, 100)


def test_seeded_sampling_repeats_and_top_k_one_is_greedy():
    logits = np.random.default_rng(0).standard_normal(50)
    params = SamplingParams(temperature=1.0, seed=7)
    sampler_a, sampler_b = Sampler(params), Sampler(params)
    assert [sampler_a(logits, [], []) for _ in range(20)] == [sampler_b(logits, [], []) for _ in range(20)]
    assert len({sampler_a(logits, [], []) for _ in range(50)}) > 1  # it samples, it is not greedy
    assert Sampler(SamplingParams(temperature=2.0, top_k=1, seed=1))(logits, [], []) == int(np.argmax(logits))
    assert Sampler(SamplingParams(temperature=0))(logits, [], []) == int(np.argmax(logits))


def test_min_p_drops_tokens_far_below_the_likeliest_after_the_temperature():
    logits = np.array([2.0, 1.9, -1.0])  # token 2 is e^-3 (0.05) times as likely as token 0

    def chosen(**parameters):
        sampler = Sampler(sampling_params({"seed": 3, **parameters}, 8, 8))
        return {sampler(logits, [], []) for _ in range(400)}

    assert chosen() == {0, 1, 2}
    assert chosen(min_p=0.5) == {0, 1}
    assert chosen(min_p=0.5, temperature=10.0) == {0, 1, 2}  # e^-0.3 of the likeliest: kept
    assert chosen(min_p=1.0) == {0}


def test_min_tokens_holds_the_end_tokens_back_until_that_many_were_generated():
    logits = np.array([0.0, 1.0, 3.0, 2.0])  # the likeliest, 2, ends the sequence
    sampler = Sampler(sampling_params({"temperature": 0, "min_tokens": 2}, 8, 8), ends=(2, 3))
    assert [sampler(logits, [], generated) for generated in ([], [1], [1, 1])] == [1, 1, 2]
    seeded = Sampler(sampling_params({"min_tokens": 1, "seed": 0}, 8, 8), ends=(2, 3))
    assert {seeded(logits, [], []) for _ in range(200)} == {0, 1}
    only_ends = np.array([-np.inf, -np.inf, 3.0, 2.0])  # a grammar that allows nothing but its end
    assert sampler(only_ends, [], []) == 2
    with pytest.raises(InvalidArgument, match="'min_tokens' \\(9\\) must not exceed 'max_tokens' \\(8\\)"):
        sampling_params({"min_tokens": 9}, 8, 8)


def test_repetition_penalty_turns_greedy_away_from_seen_tokens():
    logits = np.array([3.0, 2.9, 0.0])
    assert Sampler(SamplingParams(temperature=0, repetition_penalty=2.0))(logits, [0], []) == 1


class Letters:
    """A codec where token i is the i-th letter of the text."""

    def __init__(self, text):
        self.text = text

    def stream(self, skip_special_tokens=True):
        return lambda token: self.text[token]


def test_text_stream_holds_back_a_possible_stop_and_cuts_before_it_across_tokens():
    text = "abcSTOPdef"
    stream = TextStream(Letters(text), ("STOP",))
    pieces = [stream.push(list(range(n)), final=False) for n in range(1, len(text) + 1)]
    assert "".join(pieces) == "abc" and stream.stopped
    assert pieces[3:6] == ["", "", ""]  # "S", "ST", "STO" are held, not sent


def test_text_stream_releases_held_text_that_did_not_become_a_stop():
    stream = TextStream(Letters("abSTx"), ("STOP",))
    pieces = [stream.push(list(range(n)), final=n == 5) for n in range(1, 6)]
    assert pieces == ["a", "b", "", "", "STx"] and not stream.stopped


@pytest.mark.parametrize("include_stop, min_tokens, expected", [
    (False, 0, ""), (True, 0, "STOP"), (False, 3, ""), (False, 4, "STOPx"), (True, 4, "STOPxSTOP"),
    (False, 9, "STOPxSTOPy"),
])
def test_text_stream_stops_where_min_tokens_allow_and_keeps_the_stop_if_asked(include_stop, min_tokens,
                                                                             expected):
    """One letter per token: a stop string counts where it ends in a token after the first min_tokens
    (vLLM's rule), so with 4 the STOP ending at the fourth letter does not."""
    text = "STOPxSTOPy"
    stream = TextStream(Letters(text), ("STOP",), include_stop, min_tokens)
    pieces = [stream.push(list(range(n)), final=n == len(text)) for n in range(1, len(text) + 1)]
    assert "".join(pieces) == expected
    assert stream.stopped == (expected != text)


def test_mailbox_gives_waiting_events_as_one_and_an_error_after_them():
    async def scenario():
        box = Mailbox()
        box.put(TokenEvent([5], "a", None, 3, 1))
        box.put(TokenEvent([6], "b", None, 3, 2))
        first = await box.get()
        box.put(TokenEvent([7], "c", "length", 3, 3))
        second = await box.get()
        waiting = asyncio.ensure_future(box.get())
        await asyncio.sleep(0)
        assert not waiting.done()  # nothing produced: the client waits
        box.put(TokenEvent([8], "d", None, 3, 1))
        box.fail(Unavailable("unloaded"))
        return first, second, await waiting, await box.get()

    first, second, before_error, error = asyncio.run(scenario())
    assert (first.token_ids, first.text, first.generated_tokens) == ([5, 6], "ab", 2)
    assert first.finish_reason is None
    assert (second.token_ids, second.finish_reason, second.prompt_tokens) == ([7], "length", 3)
    assert before_error.token_ids == [8]
    assert isinstance(error, Unavailable)


def byte_fallback_codec(tmp_path):
    """A SentencePiece-style tokenizer (Llama 2, TinyLlama): "▁" for spaces, and characters outside its
    vocabulary as one <0xNN> token per UTF-8 byte, fused back by the decoder."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    from server.generation.text import TextCodec

    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}}
    for piece in ["▁", *"abcdefghijklmnopqrstuvwxyz.,!?", "▁the", "▁is"]:
        vocab.setdefault(piece, len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                           decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return TextCodec(path)


def test_streamed_pieces_of_multibyte_text_concatenate_to_the_full_decode(tmp_path):
    codec = byte_fallback_codec(tmp_path)
    text = "the 東京 is 🙂🎉 big, ça va? 日本語のテキスト ok"
    ids = codec.encode(text, special_tokens=False)
    assert any(codec.tokenizer.id_to_token(i).startswith("<0x") for i in ids)
    stream, pieces = TextStream(codec, ()), []
    for end in range(1, len(ids) + 1):
        pieces.append(stream.push(ids[:end], final=end == len(ids)))
    assert "".join(pieces) == codec.decode(ids) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert sum(1 for piece in pieces if piece) > 10  # it streamed, not all at the end


def test_openai_penalties_and_logit_bias_move_greedy_choices():
    logits = np.array([0.0, 1.0, 2.0])

    def greedy(generated=(), **parameters):
        params = sampling_params({"temperature": 0, **parameters}, 8, 8)
        return Sampler(params)(logits, [1], list(generated))

    assert greedy() == 2
    assert greedy(logit_bias={"0": 10}) == 0
    assert greedy([2], presence_penalty=1.5) == 1  # 2 - 1.5 < 1
    assert greedy([2, 2], frequency_penalty=0.6) == 1  # 2 - 2 * 0.6 < 1
    assert greedy([2, 2], frequency_penalty=0.4) == 2  # 2 - 0.8 > 1
    assert greedy([], presence_penalty=2.0) == 2  # nothing generated yet: the prompt is not penalized
    for bad, name in (({"presence_penalty": 3}, "presence_penalty"), ({"logit_bias": {"x": 1}}, "logit_bias"),
                      ({"logit_bias": {"1": 101}}, "logit_bias"), ({"logit_bias": [1]}, "logit_bias")):
        with pytest.raises(InvalidArgument, match=name):
            sampling_params(bad, 8, 8)


class _CountingDecoder:
    """Logits whose argmax is the last token + 1; `starting` called as a real graph would call it."""

    def __init__(self, on_step=None):
        self.steps, self.on_step = 0, on_step

    def decode(self, last_tokens, cache, starting=None):
        if starting is not None:
            starting()
        self.steps += 1
        if self.on_step is not None:
            self.on_step(self.steps)
        logits = np.zeros((len(last_tokens), 100), np.float32)
        logits[np.arange(len(last_tokens)), np.asarray(last_tokens) + 1] = 1
        return logits


class _Row:
    logprobs = False

    def __init__(self, ends_after: int):
        self.ends_after = ends_after

    def sample(self, logits, generated, masked=False):
        return int(np.argmax(logits))

    def may_end(self, token, generated):
        return generated >= self.ends_after


def _run_decode(decoder, rows, generated, turn_at=None, cache=None, lookup=None):
    """Runs a DecodeRun on a worker thread as the engine does; the steps it delivered, in order."""
    delivered = []

    async def main():
        run = DecodeRun(decoder, cache or object(), rows, generated, delivered.append, lookup)
        if turn_at is not None:
            decoder.on_step = lambda step: run.yield_turn() if step == turn_at else None
        await asyncio.get_running_loop().run_in_executor(None, run, None)
        await asyncio.sleep(0)

    asyncio.run(main())
    return delivered


def test_decode_run_hands_over_every_step_in_order_and_returns_where_a_row_may_end():
    generated = [[5], [10, 11]]
    delivered = _run_decode(_CountingDecoder(), [_Row(ends_after=4), _Row(ends_after=9)], generated)
    assert [step.tokens for step in delivered] == [[6, 12], [7, 13], [8, 14]]  # the first row's 4th token
    assert all(step.logits is None and step.elapsed_ns > 0 for step in delivered)
    assert generated == [[5], [10, 11]]  # the loop's own lists are the loop's to extend


def test_decode_run_returns_after_the_step_during_which_the_loop_asked_for_its_turn():
    decoder = _CountingDecoder()
    delivered = _run_decode(decoder, [_Row(ends_after=1000)], [[0]], turn_at=3)
    assert decoder.steps == 3 and [step.tokens for step in delivered] == [[1], [2], [3]]


def test_prompt_lookup_drafts_what_followed_the_latest_occurrence_of_the_longest_ending():
    prompt = [1, 2, 3, 4, 0, 2, 3, 9]
    assert PromptLookup(prompt, tokens=3, budget=100).draft([1, 2, 3]) == [4, 0, 2]  # (1, 2, 3) over (2, 3)
    assert PromptLookup(prompt, tokens=3, budget=100).draft([5, 2, 3]) == [9, 5, 2]  # (2, 3)'s latest
    assert PromptLookup(prompt, tokens=3, budget=5).draft([1, 2, 3]) == [4]  # 3 generated, 1 left after
    assert PromptLookup(prompt, tokens=3, budget=100).draft([8]) == []  # (9, 8) unseen
    lookup, generated = PromptLookup(prompt, tokens=2, budget=100), [3]
    for token in [9, 1, 2, 3, 4, 0, 2]:  # called as a sequence grows, it indexes only what is new
        assert lookup.draft(generated) == PromptLookup(prompt, tokens=2, budget=100).draft(generated)
        generated.append(token)


class _Oracle:
    """A model that predicts `truth`'s token after the position it reads, whatever it is fed, over a cache
    that is only a length: a run that reads or writes at the wrong position shows in the tokens."""

    checks_drafts = True

    def __init__(self, truth):
        self.truth, self.runs = truth, 0

    def decode(self, last_tokens, cache, starting=None):
        return self.check(last_tokens, cache, starting)

    def check(self, tokens, cache, starting=None):
        if starting is not None:
            starting()
        self.runs += 1
        logits = np.zeros((len(tokens), 100), np.float32)
        logits[np.arange(len(tokens)), self.truth[cache.length + 1:cache.length + 1 + len(tokens)]] = 1
        cache.length += len(tokens)
        return logits


class _LengthCache:
    def __init__(self, length):
        self.length = length

    def rewind(self, tokens):
        self.length -= tokens


@pytest.mark.parametrize("ends_after", [30, 13])
def test_a_row_running_alone_checks_drafts_and_delivers_its_tokens_in_fewer_runs(ends_after):
    truth = [1, 2, 3, 4, 5, 6] * 3 + [7, 8, 9] + [1, 2, 3, 4, 5, 6] * 3 + [40 + i for i in range(20)]
    prompt, generated = truth[:8], [[truth[8]]]
    decoder, cache = _Oracle(truth), _LengthCache(len(prompt))  # the prompt's keys; not the first token's
    lookup = PromptLookup(prompt, tokens=3, budget=ends_after)
    delivered = _run_decode(decoder, [_Row(ends_after)], generated, cache=cache, lookup=lookup)
    tokens = [step.tokens[0] for step in delivered]
    assert tokens == truth[9:8 + ends_after]  # the row's `ends_after`-th token is its last
    assert decoder.runs < len(tokens)
    assert cache.length == len(prompt) + len(tokens)  # every token's keys but the last one's
    firsts = [step for step in delivered if step.elapsed_ns]
    assert len(firsts) == decoder.runs and sum(step.drafted for step in delivered) > 0
    assert 0 < sum(step.accepted for step in delivered) < sum(step.drafted for step in delivered)  # (7, 8, 9)


@pytest.mark.parametrize("text, opened, expected", [
    ("<think>\nI think.\n</think>\n\nAnswer.", False, ("\nI think.\n", "Answer.")),
    ("I think.\n</think>\n\nAnswer.", True, ("I think.\n", "Answer.")),
    ("Plain answer.", False, (None, "Plain answer.")),
    ("Plain </think> answer.", False, (None, "Plain </think> answer.")),  # no <think> opened it
    ("  <think>unfinished", False, ("unfinished", "")),
    ("  <thi", False, (None, "  <thi")),
    ("\n<think>a</thin</think>b", False, ("a</thin", "b")),
])
def test_reasoning_is_cut_from_the_answer_the_same_whole_or_piece_by_piece(text, opened, expected):
    from server.text.reasoning import ReasoningStream, split

    assert split(text, opened) == expected
    for size in (1, 2, 3, 7):
        stream, reasoning, answer = ReasoningStream(opened), "", ""
        pieces = [text[i:i + size] for i in range(0, len(text), size)]
        for n, piece in enumerate(pieces):
            more, rest = stream.push(piece, final=n == len(pieces) - 1)
            reasoning, answer = reasoning + more, answer + rest
        assert (reasoning, answer) == (expected[0] or "", expected[1]), size
