"""A generation model's settings, read from its config.pbtxt `parameters`."""

from dataclasses import dataclass, field
from pathlib import Path

from server.generation.scheduler import SchedulerLimits
from server.text.chat import ChatTemplate

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
