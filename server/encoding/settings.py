"""An encoder's text service, read from its config `parameters` (the BERT exporter writes them):

  text_tokenizer: "tokenizer.json"      the model directory's tokenizer; its presence enables text
  text_max_length: "256"                tokens per text, special tokens included
  text_truncation_side: "right"         where truncation cuts when a request asks for it
  text_task: "embed" | "classify"       pooled vectors, or a head's scores (cross-encoders: 1 label)
  text_output: "last_hidden_state"      the graph output pooled (embed) or scored (classify)
  text_pooling: "mean" | "cls" | "max" | "last"
  text_normalize: "true"                L2-normalize embeddings unless a request says otherwise
  text_max_client_batch_size: "32"      texts per request
  max_batch_tokens: "16384"             padded tokens per execution (also read by the batcher)
"""

from dataclasses import dataclass
from pathlib import Path

from server.text.tokenizer import SIDES

TASKS = ("embed", "classify")
POOLINGS = ("mean", "cls", "max", "last")
DEFAULT_MAX_CLIENT_BATCH_SIZE = 32  # as text-embeddings-inference
DEFAULT_MAX_BATCH_TOKENS = 16384  # as text-embeddings-inference


@dataclass(frozen=True)
class TextSettings:
    tokenizer: Path
    max_length: int
    truncation_side: str = "right"
    task: str = "embed"
    output: str = "last_hidden_state"
    pooling: str = "mean"
    normalize: bool = True
    max_client_batch_size: int = DEFAULT_MAX_CLIENT_BATCH_SIZE
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS

    @classmethod
    def from_parameters(cls, parameters: dict[str, str], model_dir: Path) -> "TextSettings | None":
        """None for a model without `text_tokenizer`; ValueError naming the parameter that is wrong."""
        name = parameters.get("text_tokenizer", "").strip()
        if not name:
            return None
        path = model_dir / name
        if not path.is_file():
            raise ValueError(f"text_tokenizer '{name}' is not a file in the model directory")
        settings = cls(
            tokenizer=path,
            max_length=_positive(parameters, "text_max_length", None),
            truncation_side=_choice(parameters, "text_truncation_side", SIDES, "right"),
            task=_choice(parameters, "text_task", TASKS, "embed"),
            output=parameters.get("text_output", "").strip(),
            pooling=_choice(parameters, "text_pooling", POOLINGS, "mean"),
            normalize=_choice(parameters, "text_normalize", ("true", "false"), "true") == "true",
            max_client_batch_size=_positive(
                parameters, "text_max_client_batch_size", DEFAULT_MAX_CLIENT_BATCH_SIZE
            ),
            max_batch_tokens=_positive(parameters, "max_batch_tokens", DEFAULT_MAX_BATCH_TOKENS),
        )
        if not settings.output:
            raise ValueError("text_output must name the graph output to pool or score")
        if settings.max_batch_tokens < settings.max_length:
            raise ValueError(
                f"max_batch_tokens ({settings.max_batch_tokens}) must be at least text_max_length "
                f"({settings.max_length}), or a text of full length could never run"
            )
        return settings


def _positive(parameters: dict[str, str], key: str, default: int | None) -> int:
    value = parameters.get(key, "").strip()
    if not value:
        if default is None:
            raise ValueError(f"{key} is required with text_tokenizer")
        return default
    if not value.isdigit() or int(value) <= 0:
        raise ValueError(f"{key} must be a positive integer, got '{value}'")
    return int(value)


def _choice(parameters: dict[str, str], key: str, choices: tuple[str, ...], default: str) -> str:
    value = parameters.get(key, "").strip().lower() or default
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}, got '{value}'")
    return value
