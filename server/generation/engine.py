"""The asyncio generation loop of one decoder model: it runs the scheduler's plan on the KV-cache batch
each iteration and feeds every request its own stream of tokens."""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count

import numpy as np

from server.core.errors import Internal, InvalidArgument, Unavailable, failure_reason
from server.core.stats import ModelStats
from server.core.types import FinishReason, TokenEvent, TokenLogprob
from server.generation.decode_run import DecodedStep, DecodeRun
from server.generation.decoder import make_decoder
from server.generation.prefix_cache import BLOCK as PREFIX_BLOCK
from server.generation.prefix_cache import PrefixCache
from server.generation.prompt_lookup import PromptLookup
from server.generation.prompting import Prompting
from server.generation.protocols import KVCache
from server.generation.sampling import Sampler, SamplingParams, logprobs
from server.generation.scheduler import Plan, Scheduler, Sequence
from server.generation.settings import GenerationSettings
from server.generation.structured import Grammars, RowConstraint
from server.generation.text import TextCodec, TextStream
from server.runtime.executor import InstancePool

log = logging.getLogger(__name__)


class Mailbox:
    """What the engine produced for one request and its client has not taken yet. Events that pile up
    while the client is slower than the engine are taken as one: under load each client gets fewer,
    larger writes, and nothing waits that could have gone out."""

    def __init__(self):
        self._event: TokenEvent | None = None
        self._error: Exception | None = None
        self._ready = asyncio.Event()

    def put(self, event: TokenEvent) -> None:
        self._event = event if self._event is None else self._event.then(event)
        self._ready.set()

    def fail(self, error: Exception) -> None:
        self._error = error
        self._ready.set()

    async def get(self) -> TokenEvent | Exception:
        """The waiting events as one, or else the error; an error comes after the events before it."""
        await self._ready.wait()
        event, self._event = self._event, None
        if self._error is None:
            self._ready.clear()
        return event if event is not None else self._error


@dataclass
class _Request:
    sequence: Sequence
    params: SamplingParams
    sampler: Sampler
    text: TextStream
    settings: GenerationSettings
    events: Mailbox = field(default_factory=Mailbox)
    submitted: float = field(default_factory=time.perf_counter)
    admitted: float | None = None  # when its prompt first ran: the end of its wait in the queue
    last_token: float = 0.0
    constraint: RowConstraint | None = None  # the grammar its output follows (structured outputs)
    lookup: PromptLookup | None = None  # its drafts, where it may check them (running alone)
    cached_tokens: int = 0  # its prompt's tokens found in the prefix cache, not prefilled

    @property
    def logprobs(self) -> bool:
        return self.params.logprobs is not None

    def sample(self, logits: np.ndarray, generated: list[int], masked: bool = False) -> int:
        """The next token; a constrained row's `logits` masked here unless they already are (`masked`: a
        decode run masks its rows at once)."""
        if self.constraint is None:
            return self.sampler(logits, self.sequence.prompt, generated)
        token = self.sampler(logits if masked else self.constraint.mask(logits), self.sequence.prompt,
                             generated)
        self.constraint.accept(token)
        return token

    def ends_by_token(self, token: int) -> bool:
        """An eos or stop token: it ends the sequence and is not part of the output."""
        eos = token in self.settings.eos_token_ids and not self.params.ignore_eos
        return eos or token in self.params.stop_token_ids

    def finish_reason(self, token: int, generated: int) -> FinishReason | None:
        """Why the sequence ends at `token`, its `generated`-th (stop strings aside: its text decides)."""
        if self.ends_by_token(token):
            return FinishReason.STOP
        if self.constraint is not None and self.constraint.completes_at(generated):
            return FinishReason.STOP  # the grammar's last token, part of the output
        if generated >= self.sequence.max_tokens:
            return FinishReason.LENGTH
        if len(self.sequence.prompt) + generated >= self.settings.max_sequence_length:
            return FinishReason.LENGTH
        return None

    def may_end(self, token: int, generated: int) -> bool:
        return self.finish_reason(token, generated) is not None


class TokenStream:
    """One request's events; `on_close` hears once how it ended ("success", "CANCELED": closed
    early, the sequence aborted, or the failure reason of the error it raised) and the stream itself."""

    def __init__(self, engine: "GenerationEngine", request: _Request, on_close=None):
        self._engine, self._request, self._on_close = engine, request, on_close
        self._outcome: str | None = None
        self.model_version = ""  # the serving model version, for answers that name it
        self.reasoning: bool | None = None  # a reasoning model's chat: whether its answer starts in <think>
        self.first_token_ns: int | None = None  # when the first token reached the reader (perf_counter)
        self.last: TokenEvent | None = None

    @property
    def queued(self) -> tuple[int, int] | None:
        """When the sequence was queued and when it started (perf_counter ns); None until it starts."""
        request = self._request
        if request.admitted is None:
            return None
        return int(request.submitted * 1e9), int(request.admitted * 1e9)

    def __aiter__(self) -> "TokenStream":
        return self

    async def __anext__(self) -> TokenEvent:
        if self._outcome is not None:
            raise StopAsyncIteration
        event = await self._request.events.get()
        if isinstance(event, Exception):
            self._close(failure_reason(event))
            raise event
        if self.first_token_ns is None:
            self.first_token_ns = time.perf_counter_ns()
        self.last = event
        if event.finish_reason is not None:
            self._close("success")
        return event

    async def aclose(self) -> None:
        self._close("CANCELED")

    async def collect(self) -> TokenEvent:
        """The whole generation as one event: all text and tokens, the last event's finish and counts."""
        whole = TokenEvent([], "")
        try:
            async for event in self:
                whole = whole.then(event)
        finally:
            await self.aclose()
        return whole

    def _close(self, outcome: str) -> None:
        if self._outcome is None:
            self._outcome = outcome
            self._engine.abort(self._request)
            if self._on_close is not None:
                self._on_close(outcome, self)


class GenerationEngine:
    def __init__(self, pool: InstancePool, settings: GenerationSettings, model_stats: ModelStats):
        self.pool = pool
        self.settings = settings
        self.model_stats = model_stats
        self.stats = model_stats.generation
        self.stats.token_capacity = min(settings.limits.max_cache_tokens,
                                        settings.limits.max_running * settings.max_sequence_length)
        self.stats.block_size = PREFIX_BLOCK
        self.decoder = make_decoder(pool.sessions[0].session, settings.io_binding, settings.kv_head_dim,
                                    settings.limits.max_running)
        if settings.prompt_lookup_num_tokens and not self.decoder.checks_drafts:
            log.warning("prompt_lookup_num_tokens is set, but drafts are checked on a cache on the host and "
                        "this model keeps it on its device (io_binding): decoding goes a token per step")
        self.codec = TextCodec(settings.tokenizer_file) if settings.tokenizer_file else None
        self.prompting = Prompting(settings, self.codec, self.decoder.vocab_size)
        self.grammars = Grammars(settings.tokenizer_file, settings.eos_token_ids,
                                 settings.chat.special_tokens.get("eos_token") if settings.chat else None)
        self.scheduler = Scheduler(settings.limits)
        # reused blocks are fed from the host: not where the cache lives on a GPU
        self.prefix_cache = PrefixCache(settings.prefix_cache_tokens, self.stats) if (
            settings.prefix_cache_tokens and not self.decoder.kernels) else None
        self.cache: KVCache | None = None
        self.rows: list[_Request] = []  # aligned with the cache's rows
        self._requests: dict[int, _Request] = {}
        self._ids = count(1)
        self._wake = asyncio.Event()
        self._decoding: DecodeRun | None = None  # the decode steps running back to back on a worker
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        self._take_turn()
        for sequence in self.scheduler.abort_all():
            request = self._requests.pop(sequence.id, None)
            if request is not None:
                request.events.fail(Unavailable("the model was unloaded while generating"))
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def submit(
        self, prompt: list[int], params: SamplingParams,
        on_close: Callable[[str, "TokenStream"], None] | None = None,
    ) -> "TokenStream":
        """Queues the sequence (or refuses it at once when too many wait) and returns its tokens as
        they come; closing the stream before the end (a client gone) aborts the sequence."""
        structured, ignore_eos = params.structured, params.ignore_eos
        constraint = self.grammars.constraint(structured, ignore_eos, params.thinking) if structured else None
        sequence = Sequence(next(self._ids), prompt, params.max_tokens)
        text = TextStream(self.codec, params.stop, params.include_stop_str_in_output, params.min_tokens,
                          params.skip_special_tokens)
        ends = (() if ignore_eos else tuple(self.settings.eos_token_ids)) + params.stop_token_ids
        request = _Request(sequence, params, Sampler(params, ends), text, self.settings,
                           constraint=constraint, lookup=self._lookup(prompt, params.max_tokens, constraint))
        self.scheduler.add(sequence)
        self._requests[sequence.id] = request
        self.stats.prompt_tokens += len(prompt)
        self._take_turn()
        self._wake.set()
        return TokenStream(self, request, on_close)

    def _lookup(self, prompt: list[int], max_tokens: int, constraint) -> PromptLookup | None:
        """The sequence's drafts where it may check them: prompt lookup on, a decoder that `checks_drafts`,
        and no grammar (a grammar masks each step's logits by the tokens before)."""
        drafts = self.settings.prompt_lookup_num_tokens
        if not drafts or not self.decoder.checks_drafts or constraint is not None:
            return None
        return PromptLookup(prompt, drafts, min(max_tokens, self.settings.max_sequence_length - len(prompt)))

    async def score(self, prompt: list[int], count: int) -> list[TokenLogprob]:
        """Each prompt token after the first with its log-probability given the tokens before it, and the
        `count` most likely tokens at its place (OpenAI's `echo` with `logprobs`)."""
        if not self.decoder.scores_prompts:
            raise InvalidArgument("this model's graph returns the last position's logits only, so it cannot "
                                  "score prompts (echo with logprobs); export it again with ortserve")
        if len(prompt) > self.settings.max_sequence_length:
            raise InvalidArgument(f"the prompt has {len(prompt)} tokens; this model's context is "
                                  f"{self.settings.max_sequence_length}")
        logits = await self.pool.call(lambda _session: self.decoder.score(prompt))
        return [self._logprob(row, token, count) for row, token in zip(logits, prompt[1:])]

    def token_text(self, ids: list[int]) -> str:
        return self.codec.decode(ids) if self.codec is not None else ""

    def abort(self, request: _Request) -> None:
        if not request.sequence.finished:
            self._take_turn()
            self.scheduler.finish(request.sequence, FinishReason.ABORT)
            self._count_finished(FinishReason.ABORT)
        self._requests.pop(request.sequence.id, None)

    def _take_turn(self) -> None:
        """The loop has work: decode steps running back to back return after the current one."""
        if self._decoding is not None:
            self._decoding.yield_turn()

    def _count_finished(self, reason: FinishReason) -> None:
        self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1

    @property
    def cache_tokens(self) -> int:
        return 0 if self.cache is None else self.cache.rows * self.cache.length

    async def _loop(self) -> None:
        while True:
            if not self.scheduler.has_work:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._drop_finished_rows()
            plan = self.scheduler.schedule()
            if plan.empty:
                await asyncio.sleep(0)
                continue
            try:
                await self._iterate(plan)
            except Exception as error:  # a failed step fails its sequences, never the loop
                log.exception("generation step failed")
                self._fail([*plan.decode, *plan.prefill], Internal(f"generation failed: {error}"))
            self.stats.running = len(self.rows)
            self.stats.waiting = len(self.scheduler.waiting)
            self.stats.cache_tokens = self.cache_tokens
            self.stats.context_tokens = sum(len(r.sequence.prompt) + len(r.sequence.generated)
                                            for r in self.rows if not r.sequence.finished)

    async def _iterate(self, plan: Plan) -> None:
        if plan.prefill:
            await self._step(plan)
        else:
            await self._decode_run([self._requests[s.id] for s in plan.decode])
        self._drop_finished_rows()

    async def _decode_run(self, rows: list[_Request]) -> None:
        """Decode steps back to back on the worker thread (`DecodeRun`), each delivered as it comes."""
        generated = [request.sequence.generated for request in rows]
        self._decoding = DecodeRun(self.decoder, self.cache, rows, generated,
                                   lambda step: self._deliver(rows, step),
                                   rows[0].lookup if len(rows) == 1 else None)
        try:
            await self.pool.call(self._decoding)
        finally:
            self._decoding = None

    def _deliver(self, rows: list[_Request], step: DecodedStep) -> None:
        """A step's tokens; its logits only where a row asked for log probabilities."""
        if step.elapsed_ns:  # the first step of a run
            self._record_step(len(rows), step.elapsed_ns)
        self.stats.draft_tokens += step.drafted
        self.stats.accepted_draft_tokens += step.accepted
        for row, (request, token) in enumerate(zip(rows, step.tokens)):
            self._advance(request, None if step.logits is None else step.logits[row], token)
        if any(request.sequence.finished for request in rows):
            self._take_turn()

    async def _step(self, plan: Plan) -> None:
        """One step that prefills the plan's new sequences (and decodes the running ones)."""
        decoding = [self._requests[s.id] for s in plan.decode]  # the cache's rows, in order
        prefilling = [self._requests[s.id] for s in plan.prefill]
        last = [r.sequence.generated[-1] for r in decoding]
        prompts = [r.sequence.prompt for r in prefilling]
        cache = self.cache
        reused = [self.prefix_cache.lookup(prompt) for prompt in prompts] if self.prefix_cache else None
        reach = max((s.budget for s in plan.prefill), default=0)
        admitted = time.perf_counter()
        for row, request in enumerate(prefilling):  # a sequence is prefilled once
            request.admitted = admitted
            request.cached_tokens = reused[row][0] if reused else 0

        def step(_session):
            decoded = self.decoder.decode(last, cache) if decoding else None  # grows `cache`
            prefilled = self.decoder.prefill(prompts, reused, reach, cache) if prefilling else None
            return decoded, prefilled

        started = time.perf_counter_ns()
        decoded, prefilled = await self.pool.call(step)
        self._record_step(len(decoding) + len(prefilling), time.perf_counter_ns() - started)
        if prefilled is None:
            logits = decoded
        else:
            if self.prefix_cache is not None:
                for row, prompt in enumerate(prompts):
                    if len(prompt) >= PREFIX_BLOCK:
                        self.prefix_cache.insert(prompt, self.decoder.row_past(prefilled[1], row))
            logits = prefilled[0] if decoded is None else np.concatenate([decoded, prefilled[0]])
            joined = type(prefilled[1]).concatenate
            self.cache = joined([cache, prefilled[1]] if decoding else [prefilled[1]])
        self.rows = decoding + prefilling
        for request, row_logits in zip(self.rows, logits):
            self._advance(request, row_logits)

    def _record_step(self, rows: int, ns: int) -> None:
        self.stats.steps += 1
        self.model_stats.execution_count += 1
        self.model_stats.compute_infer.add(ns)
        self.model_stats.batch_size.observe(rows)
        self.model_stats.compute_seconds.observe(ns / 1e9)

    def _advance(self, request: _Request, logits: np.ndarray | None, token: int | None = None) -> None:
        """The sequence's next token (`token`, or sampled from `logits`): its text, finish and event."""
        sequence = request.sequence
        if sequence.finished:  # aborted while the step ran, or ended while a worker ran ahead
            return
        if token is None:
            token = request.sample(logits, sequence.generated)
        sequence.generated.append(token)
        now = time.perf_counter()
        if len(sequence.generated) == 1:
            self.stats.time_to_first_token.observe(now - request.submitted)
        else:
            self.stats.inter_token.observe(now - request.last_token)
        request.last_token = now
        self.stats.generated_tokens += 1
        reason = request.finish_reason(token, len(sequence.generated))
        by_token = reason is FinishReason.STOP and request.ends_by_token(token)
        visible = sequence.generated[:-1] if by_token else sequence.generated
        text = request.text.push(visible, reason is not None)
        if request.text.stopped:
            reason = FinishReason.STOP
        if reason is not None:
            self.scheduler.finish(sequence, reason)
            self._count_finished(reason)
            self.stats.request_seconds.observe(now - request.submitted)
        chosen = [] if by_token else [token]
        scored = [self._logprob(logits, token, request.params.logprobs)] if chosen and (
            request.params.logprobs is not None) else []
        request.events.put(TokenEvent(chosen, text, reason, len(sequence.prompt), len(visible), scored,
                                      request.cached_tokens))

    def _logprob(self, logits: np.ndarray, token: int, count: int) -> TokenLogprob:
        chosen, top = logprobs(logits, token, count)
        return TokenLogprob(self.token_name(token), chosen, [(self.token_name(i), lp) for i, lp in top])

    def token_name(self, token: int) -> str:
        return self.codec.token_text(token) if self.codec is not None else f"token_id:{token}"

    def _drop_finished_rows(self) -> None:
        keep = [i for i, r in enumerate(self.rows) if not r.sequence.finished]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        self.cache = self.cache.filter(keep) if keep else None

    def _fail(self, sequences: list[Sequence], error: Exception) -> None:
        for sequence in sequences:
            self.scheduler.finish(sequence, FinishReason.ABORT)
            request = self._requests.get(sequence.id)
            if request is not None:
                request.events.fail(error)
        self._drop_finished_rows()
