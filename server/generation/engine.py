"""The asyncio generation loop of one decoder model: it runs the scheduler's plan on the KV-cache batch
each iteration and feeds every request its own stream of tokens."""

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import numpy as np

from server.core.errors import Internal, InvalidArgument, Unavailable, failure_reason
from server.core.stats import ModelStats
from server.core.types import (
    PLAIN_CHAT,
    STRUCTURED_OUTPUT_KEYS,
    ChatOptions,
    FinishReason,
    TokenEvent,
    TokenLogprob,
    ToolCall,
    ToolUse,
)
from server.generation.decode_run import DecodedStep, DecodeRun
from server.generation.decoder import make_decoder
from server.generation.prefix_cache import BLOCK as PREFIX_BLOCK
from server.generation.prefix_cache import PrefixCache
from server.generation.prompt_lookup import PromptLookup
from server.generation.protocols import KVCache
from server.generation.sampling import Sampler, SamplingParams, logprobs, sampling_params
from server.generation.scheduler import Plan, Scheduler, SchedulerLimits, Sequence
from server.generation.structured import Grammars, RowConstraint
from server.generation.text import TextCodec, TextStream, prompt_ids
from server.runtime.executor import InstancePool
from server.text.chat import ChatTemplate
from server.text.reasoning import CLOSE as THINKING_CLOSE
from server.text.reasoning import OPEN as THINKING_OPEN
from server.text.reasoning import opens_reasoning, thinking_grammar
from server.text.tools import CALL_MARKERS
from server.text.tools import grammar as tool_grammar
from server.text.tools import parse as parse_tool_calls
from server.text.tools import streamable as tool_text_streamable

log = logging.getLogger(__name__)


_SWITCH = {"auto": None, "true": True, "1": True, "false": False, "0": False}


@dataclass(frozen=True)
class GenerationSettings:
    """From the model's config.pbtxt `parameters`."""

    max_sequence_length: int
    eos_token_ids: frozenset[int] = frozenset()  # config `eos_token_id`: one id, or several "a,b,c"
    default_max_tokens: int = 64
    limits: SchedulerLimits = field(default_factory=SchedulerLimits)
    tokenizer_file: Path | None = None
    chat: ChatTemplate | None = None  # the checkpoint's chat template, where its files have one
    io_binding: bool | None = None  # the KV cache on the graph's device; None: where that is a GPU
    prefix_cache_tokens: int = 0  # prompt tokens whose keys and values are kept for reuse; 0: off
    kv_head_dim: int | None = None  # where the graph leaves the head size symbolic (onnxruntime-genai's)
    prompt_lookup_num_tokens: int = 0  # tokens a sequence running alone drafts per run; 0: off

    @classmethod
    def from_parameters(cls, parameters: dict[str, str], model_dir: Path) -> "GenerationSettings":
        def number(key, default, low=1):
            value = parameters.get(key, default)
            try:
                number = int(value)
            except (TypeError, ValueError):
                number = None
            if number is None or number < low:
                raise ValueError(f"generation parameter '{key}' must be an integer >= {low}, got {value!r}")
            return number

        if "max_sequence_length" not in parameters:
            raise ValueError("a generation model needs the parameter 'max_sequence_length'")
        tokenizer = parameters.get("tokenizer_file")
        if tokenizer and not (model_dir / tokenizer).exists():
            raise ValueError(f"tokenizer_file '{tokenizer}' is not in the model directory")
        binding = parameters.get("io_binding", "auto").lower()
        if binding not in _SWITCH:
            raise ValueError(
                f"generation parameter 'io_binding' must be auto, true or false, got {binding!r}"
            )
        defaults = SchedulerLimits()
        return cls(
            max_sequence_length=number("max_sequence_length", None),
            eos_token_ids=_token_ids(parameters.get("eos_token_id", "-1")),
            default_max_tokens=number("default_max_tokens", 64),
            limits=SchedulerLimits(
                max_running=number("max_running_sequences", defaults.max_running),
                max_waiting=number("max_waiting_sequences", defaults.max_waiting),
                max_prefill_tokens=number("max_prefill_tokens", defaults.max_prefill_tokens),
                max_cache_tokens=number("max_cache_tokens", defaults.max_cache_tokens),
            ),
            tokenizer_file=model_dir / tokenizer if tokenizer else None,
            chat=ChatTemplate.from_model_dir(model_dir) if tokenizer else None,
            io_binding=_SWITCH[binding],
            prefix_cache_tokens=number("prefix_cache_tokens", 0, low=0),
            kv_head_dim=number("kv_head_dim", None) if "kv_head_dim" in parameters else None,
            prompt_lookup_num_tokens=number("prompt_lookup_num_tokens", 0, low=0),
        )


def _token_ids(value: str) -> frozenset[int]:
    items = [item.strip() for item in str(value).split(",")]
    if not all(item.lstrip("-").isdigit() for item in items):
        raise ValueError(
            f"generation parameter 'eos_token_id' must be token ids separated by commas, got {value!r}"
        )
    return frozenset(int(item) for item in items if int(item) >= 0)


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
        self.grammars = Grammars(settings.tokenizer_file, settings.eos_token_ids, self.decoder.vocab_size)
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

    def prompt(self, text: str | None, ids: list[int] | None, messages: list | None = None,
               tools: ToolUse | None = None, options: ChatOptions = PLAIN_CHAT,
               special_tokens: bool | None = None) -> list[int]:
        """The prompt's token ids (of a chat rendered with the model's template, when `messages`).
        `special_tokens`: whether the tokenizer adds its own around the text (None: to a prompt, not to a
        chat, whose template writes them)."""
        if messages is not None:
            if self.settings.chat is None:
                raise InvalidArgument("this model has no chat template (its tokenizer files define none); "
                                      "use /v1/completions with a prompt")
            text, ids = self.settings.chat.render(messages, options, self._shown(tools)), None
        special = messages is None if special_tokens is None else special_tokens
        return prompt_ids(self.codec, text, ids, self.decoder.vocab_size, special_tokens=special)

    def prepare(
        self, text: str | None, ids: list[int] | None, parameters: dict, messages: list | None = None,
        tools: ToolUse | None = None, options: ChatOptions = PLAIN_CHAT,
    ) -> tuple[list[int], SamplingParams]:
        """The prompt's token ids and the sampling parameters, or a clear error about either. A chat that
        must call a tool gets the grammar of its calls."""
        prompt = self.prompt(text, ids, messages, tools, options)
        if tools is not None:
            parameters = self._calling(parameters, tools)
        limit = self.settings.max_sequence_length
        if len(prompt) >= limit:
            raise InvalidArgument(
                f"the prompt has {len(prompt)} tokens; this model allows at most {limit - 1} "
                f"(context {limit}, one token left to generate)"
            )
        room = limit - len(prompt)
        params = sampling_params(parameters, min(self.settings.default_max_tokens, room), 1 << 30)
        vocab = self.decoder.vocab_size
        outside = [token for token, _ in params.logit_bias if vocab is not None and token >= vocab]
        if outside:
            raise InvalidArgument(f"logit_bias names token {outside[0]}; the vocabulary has {vocab} tokens")
        if params.max_tokens > room:
            raise InvalidArgument(
                f"max_tokens {params.max_tokens} is beyond the context: the prompt has {len(prompt)} "
                f"tokens and the model's context is {limit}, so at most {room} can be generated"
            )
        if params.structured is not None and messages is not None:
            params = self._thinking_first(prompt, params)
        return prompt, params

    def _thinking_first(self, prompt: list[int], params: SamplingParams) -> SamplingParams:
        """A reasoning model's chat thinks before the grammar shapes its answer, as in vLLM: the grammar
        holds only the text after `</think>`."""
        opened = self.opens_reasoning(prompt)
        if opened is None:
            return params
        return dataclasses.replace(params, thinking=thinking_grammar(opened, self._thinking_tokens))

    def _shown(self, tools: ToolUse | None) -> list[dict] | None:
        """The tools the chat template renders. A template that takes none cannot show them; a call its
        grammar forces (`required` or a named function) still works there, as in vLLM: the model writes
        the call's JSON without having read the tools."""
        if tools is None or (self.settings.chat.tool_format is None and tools.choice != "auto"):
            return None
        return tools.tools

    @property
    def _tool_format(self) -> str:
        """The template's format of calls; a bare JSON object where it takes no tools."""
        return self.settings.chat.tool_format or "llama"

    def _calling(self, parameters: dict, tools: ToolUse) -> dict:
        """The parameters with the grammar of the chat's calls: a call that `tool_choice` forces, or with
        `auto` text or calls, the calls held to their schemas (as llama.cpp's lazy grammars hold them). Where
        the client's own grammar shapes the text (structured outputs), `auto` keeps that one alone, and a
        forced call is refused."""
        structured = any(parameters.get(key) is not None for key in STRUCTURED_OUTPUT_KEYS)
        if tools.choice == "auto":
            if structured or self.settings.chat.tool_format is None:
                return parameters
            functions = tools.functions
        elif structured:
            raise InvalidArgument("a required tool call and structured outputs both constrain the output: "
                                  "send one")
        else:
            functions = [f for f in tools.functions if tools.choice in ("required", f["name"])]
        calls = tool_grammar(functions, self._tool_format, tools.parallel, optional=tools.choice == "auto",
                             marker_tokens=self._marker_tokens)
        kept = {"skip_special_tokens": False} if self._special_markers else {}  # else the calls are lost
        return {**parameters, **kept, "structured_outputs": {"grammar": calls}}

    def opens_reasoning(self, prompt: list[int]) -> bool | None:
        """For a reasoning model's chat, whether the prompt leaves its answer inside a `<think>` block;
        None for other models."""
        chat = self.settings.chat
        if chat is None or not chat.reasoning or self.codec is None:
            return None
        return opens_reasoning(self.codec.decode(prompt[-8:], skip_special_tokens=False))

    @functools.cached_property
    def _marker_tokens(self) -> bool:
        return self.codec is not None and self.codec.has_tokens(*CALL_MARKERS)

    @functools.cached_property
    def _special_markers(self) -> bool:
        """Whether the call markers are special tokens (Hermes 2 Pro's), which decoding would leave out."""
        return self.codec is not None and self.codec.has_tokens(*CALL_MARKERS, special=True)

    @functools.cached_property
    def _thinking_tokens(self) -> bool:
        """Whether the tokenizer has the thinking markers as tokens of their own (Qwen 3's)."""
        return self.codec is not None and self.codec.has_tokens(THINKING_OPEN, THINKING_CLOSE)

    def tool_calls(self, text: str, tools: ToolUse) -> tuple[str | None, list[ToolCall]]:
        """The answer's content and the calls it makes, read in the format the chat template asks for."""
        return parse_tool_calls(text, self._tool_format, {f["name"] for f in tools.functions})

    def streamable(self, text: str, sent: int) -> int:
        """How much of an answer so far may be streamed as content: none of a call that may be starting."""
        return tool_text_streamable(text, self._tool_format, sent)

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
