"""Sampling parameters, checked with errors naming the parameter, and the per-sequence sampler."""

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.core.errors import InvalidArgument
from server.generation.structured import STRUCTURED_KEYS, structured_spec


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 1.0  # 0: greedy, as in vLLM and the OpenAI API
    top_k: int = 0  # 0: every token
    top_p: float = 1.0
    min_p: float = 0.0  # vLLM's: tokens less likely than this times the likeliest one are not chosen
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False  # vLLM's: the stop string that ends the text stays in it
    skip_special_tokens: bool = True  # vLLM's: special tokens are left out of the text
    min_tokens: int = 0  # vLLM's: no end token, stop token or stop string ends the output before this
    ignore_eos: bool = False
    logprobs: int | None = None  # the chosen token's log-probability and this many most likely ones
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # and this times the number of times it was generated
    logit_bias: tuple[tuple[int, float], ...] = ()  # added to the logits of these token ids
    structured: tuple[str, str] | None = None  # a grammar the output must follow (structured.py)
    thinking: str | None = None  # a reasoning model's thinking block, free ahead of that grammar

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _number(parameters, key, default, low, high=math.inf, integer=False, low_open=False):
    value = parameters.get(key, default)
    if value is None:
        return default
    kind = int if integer else (int, float)
    valid = isinstance(value, kind) and not isinstance(value, bool)
    if valid and not integer:
        valid = math.isfinite(value)
    if valid:
        valid = (value > low if low_open else value >= low) and value <= high
    if not valid:
        bound = f"> {low}" if low_open else f">= {low}"
        upper = "" if high == math.inf else f" and <= {high}"
        what = "an integer" if integer else "a number"
        raise InvalidArgument(f"parameter '{key}' must be {what} {bound}{upper}, got {value!r}")
    return value


def _strings(parameters, key) -> tuple[str, ...]:
    value = parameters.get(key) or ()
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise InvalidArgument(
            f"parameter '{key}' must be a non-empty string or a list of them, got {value!r}"
        )
    return tuple(value)


def _token_ids(parameters, key) -> tuple[int, ...]:
    value = parameters.get(key) or ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise InvalidArgument(f"parameter '{key}' must be a list of token ids (integers >= 0), got {value!r}")
    return tuple(value)


SAMPLING_KEYS = ("max_tokens", "min_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                 "seed", "stop", "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "logprobs",
                 "presence_penalty", "frequency_penalty", "logit_bias", "skip_special_tokens")
MAX_LOGPROBS = 20
# request parameters of the protocol itself (Triton's and tritonclient's), not sampling settings
PROTOCOL_KEYS = frozenset({"priority", "timeout", "binary_data_output", "triton_enable_empty_final_response",
                           "sequence_id", "sequence_start", "sequence_end"})


def sampling_params(
    parameters: dict[str, Any], default_max_tokens: int, max_tokens_limit: int
) -> SamplingParams:
    """From a request's parameters (Triton's generate extension, OpenAI's completions, gRPC); a key that
    is none of them is refused rather than ignored."""
    unknown = sorted(set(parameters) - set(SAMPLING_KEYS) - set(STRUCTURED_KEYS) - PROTOCOL_KEYS)
    if unknown:
        raise InvalidArgument(
            f"unknown generation parameter {', '.join(map(repr, unknown))}; the parameters are "
            f"{', '.join(SAMPLING_KEYS + STRUCTURED_KEYS)}"
        )
    max_tokens = _number(parameters, "max_tokens", default_max_tokens, 1, max_tokens_limit, integer=True)
    return SamplingParams(
        max_tokens=max_tokens,
        min_tokens=_min_tokens(parameters, max_tokens),
        temperature=float(_number(parameters, "temperature", 1.0, 0.0, 100.0)),
        top_k=_number(parameters, "top_k", 0, 0, integer=True),
        top_p=float(_number(parameters, "top_p", 1.0, 0.0, 1.0, low_open=True)),
        min_p=float(_number(parameters, "min_p", 0.0, 0.0, 1.0)),
        repetition_penalty=float(_number(parameters, "repetition_penalty", 1.0, 0.0, 100.0, low_open=True)),
        seed=_number(parameters, "seed", None, 0, 2**63 - 1, integer=True),
        stop=_strings(parameters, "stop"),
        stop_token_ids=_token_ids(parameters, "stop_token_ids"),
        include_stop_str_in_output=_flag(parameters, "include_stop_str_in_output"),
        skip_special_tokens=_flag(parameters, "skip_special_tokens", True),
        ignore_eos=_flag(parameters, "ignore_eos"),
        logprobs=_number(parameters, "logprobs", None, 0, MAX_LOGPROBS, integer=True),
        presence_penalty=float(_number(parameters, "presence_penalty", 0.0, -2.0, 2.0)),
        frequency_penalty=float(_number(parameters, "frequency_penalty", 0.0, -2.0, 2.0)),
        logit_bias=_logit_bias(parameters.get("logit_bias")),
        structured=structured_spec(parameters),
    )


def _min_tokens(parameters, max_tokens: int) -> int:
    least = _number(parameters, "min_tokens", 0, 0, integer=True)
    if least > max_tokens:
        raise InvalidArgument(f"parameter 'min_tokens' ({least}) must not exceed 'max_tokens' ({max_tokens})")
    return least


def _flag(parameters, key, default: bool = False) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidArgument(f"parameter '{key}' must be true or false, got {value!r}")
    return value


def _logit_bias(value) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias between -100 and 100}."""
    if not value:
        return ()
    if not isinstance(value, dict):
        raise InvalidArgument(f"parameter 'logit_bias' must map token ids to biases, got {value!r}")
    biases = []
    for key, bias in value.items():
        token = str(key)
        if not token.isdigit() or isinstance(bias, bool) or not isinstance(bias, int | float) or not (
                -100 <= bias <= 100):
            raise InvalidArgument(
                f"parameter 'logit_bias' maps token ids to numbers in [-100, 100], got {key!r}: {bias!r}"
            )
        biases.append((int(token), float(bias)))
    return tuple(biases)


def logprobs(logits: np.ndarray, token: int, count: int) -> tuple[float, list[tuple[int, float]]]:
    """The model's log-probability of `token` (log-softmax of the raw logits, before any sampling
    setting) and the `count` most likely tokens with theirs, most likely first."""
    scores = logits.astype(np.float64)
    shifted = scores - scores.max()
    log_probabilities = shifted - np.log(np.exp(shifted).sum())
    count = min(count, scores.size)
    top = np.argpartition(-log_probabilities, count - 1)[:count] if count else []
    top = sorted(top, key=lambda i: -log_probabilities[i])
    return float(log_probabilities[token]), [(int(i), float(log_probabilities[i])) for i in top]


@dataclass
class Sampler:
    """Chooses one sequence's tokens; with a seed its choices depend on nothing else. `ends`: the tokens
    that would end the sequence (its model's end tokens and its stop tokens), never chosen before
    `min_tokens`."""

    params: SamplingParams
    ends: tuple[int, ...] = ()
    rng: np.random.Generator = field(init=False)
    adjusts_logits: bool = field(init=False)  # a bias or penalty moves the logits before the choice

    def __post_init__(self):
        self.rng = np.random.default_rng(self.params.seed)
        params = self.params
        self.adjusts_logits = bool(params.logit_bias or params.presence_penalty or params.frequency_penalty
                                   or params.repetition_penalty != 1.0)

    def __call__(self, logits: np.ndarray, prompt: list[int], generated: list[int]) -> int:
        holds_ends = bool(self.ends) and len(generated) < self.params.min_tokens
        if self.params.greedy and not self.adjusts_logits and not holds_ends:
            return int(np.argmax(logits))  # the same order as in float64, without the copy
        logits = logits.astype(np.float64)
        if holds_ends:
            self._hold_ends(logits)
        if self.params.logit_bias:
            tokens, biases = zip(*self.params.logit_bias)  # ids checked against the vocabulary at admission
            logits[list(tokens)] += biases
        if (self.params.presence_penalty or self.params.frequency_penalty) and generated:
            tokens, counts = np.unique(np.asarray(generated, np.int64), return_counts=True)
            logits[tokens] -= self.params.presence_penalty + self.params.frequency_penalty * counts
        if self.params.repetition_penalty != 1.0:
            seen = np.unique(np.concatenate([prompt, generated]).astype(np.int64))
            scores = logits[seen]
            logits[seen] = np.where(scores > 0, scores / self.params.repetition_penalty,
                                    scores * self.params.repetition_penalty)
        if self.params.greedy:
            return int(np.argmax(logits))
        logits = logits / self.params.temperature
        if self.params.min_p:  # p / p_max >= min_p, in logits
            logits = np.where(logits < logits.max() + np.log(self.params.min_p), -np.inf, logits)
        if 0 < self.params.top_k < logits.size:
            cutoff = np.partition(logits, -self.params.top_k)[-self.params.top_k]
            logits = np.where(logits < cutoff, -np.inf, logits)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        if self.params.top_p < 1.0:
            order = np.argsort(-probabilities, kind="stable")
            cumulative = np.cumsum(probabilities[order])
            keep = order[: int(np.searchsorted(cumulative, self.params.top_p)) + 1]
            kept = np.zeros_like(probabilities)
            kept[keep] = probabilities[keep]
            probabilities = kept / kept.sum()
        return int(self.rng.choice(probabilities.size, p=probabilities))

    def _hold_ends(self, logits: np.ndarray) -> None:
        """Rules the end tokens out, unless nothing else is left (a grammar that allows only its end)."""
        ends = [token for token in self.ends if token < logits.size]
        kept = logits[ends].copy()
        logits[ends] = -np.inf
        if not np.isfinite(logits).any():
            logits[ends] = kept
