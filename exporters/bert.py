"""BERT-family encoders to ONNX, served as text models: embeddings (pooled as the checkpoint's
sentence-transformers modules say) or a sequence classification head (classifiers, cross-encoders).

The checkpoint's `tokenizer.json` is copied beside the model and the config gets the text parameters
(`server/encoding/settings.py`), so the server tokenizes text itself."""

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exporters.module import ExportError, ExportReport, check_model_type, default_config, export_module
from exporters.publish import set_parameters
from server.protocol import ModelConfig

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SUPPORTED = ("bert", "roberta", "xlm-roberta", "electra")
ST_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
              "pooling_mode_max_tokens": "max", "pooling_mode_lasttoken": "last"}
MAX_BATCH_SIZE = 32


@dataclass(frozen=True)
class TextSetup:
    """How the server turns text into this model's answers (written as config parameters)."""

    max_length: int
    task: str = "embed"  # or "classify"
    pooling: str = "mean"
    normalize: bool = True
    labels: tuple[str, ...] = ()

    def parameters(self, tokenizer_file: str = "tokenizer.json") -> dict[str, str]:
        values = {"text_tokenizer": tokenizer_file, "text_max_length": str(self.max_length),
                  "text_task": self.task}
        if self.task == "embed":
            values |= {"text_output": "last_hidden_state", "text_pooling": self.pooling,
                       "text_normalize": str(self.normalize).lower()}
        else:
            values["text_output"] = "logits"
        return values


class Encoder(nn.Module):
    """The checkpoint's encoder with its pooled (and, as the checkpoint says, normalised) embedding."""

    def __init__(self, model: nn.Module, pooling: str | None, normalize: bool = True):
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        if self.pooling is None:
            return (hidden,)
        pooled = pool(hidden, attention_mask, self.pooling)
        return hidden, nn.functional.normalize(pooled, p=2, dim=1) if self.normalize else pooled


class Classifier(nn.Module):
    """A sequence classification head's logits (a cross-encoder's: one per pair)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return (self.model(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).logits,)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return (hidden + (mask - 1) * 1e9).max(dim=1).values
    if mode == "last":
        last = mask.squeeze(-1).sum(dim=1).long() - 1
        return hidden[torch.arange(hidden.shape[0]), last]
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def text_setup(checkpoint: Path, model_config) -> TextSetup:
    """Pooling, normalisation and length from the sentence-transformers files where the checkpoint has
    them (mean pooling, normalised, for a plain encoder); labels for a classification head."""
    positions = model_config.max_position_embeddings
    if _is_classifier(model_config):
        labels = tuple(model_config.id2label[i] for i in range(model_config.num_labels))
        return TextSetup(max_length=min(positions, _max_length(checkpoint, positions)), task="classify",
                         labels=labels)
    pooling, normalize = "mean", True
    modules_file = checkpoint / "modules.json"
    if modules_file.exists():
        modules = json.loads(modules_file.read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        unsupported = sorted(set(kinds) - {"Transformer", "Pooling", "Normalize"})
        if unsupported:
            raise ExportError(
                f"checkpoint '{checkpoint}' has sentence-transformers modules {', '.join(unsupported)}; "
                "the bert exporter handles Transformer, Pooling and Normalize"
            )
        normalize = "Normalize" in kinds
        pooling = _st_pooling(checkpoint, next((m for m in modules if m["type"].endswith("Pooling")), None))
    return TextSetup(max_length=min(positions, _max_length(checkpoint, positions)), pooling=pooling,
                     normalize=normalize)


def _st_pooling(checkpoint: Path, module: dict | None) -> str:
    if module is None:
        return "mean"
    settings = json.loads((checkpoint / module["path"] / "config.json").read_text())
    chosen = [mode for key, mode in ST_POOLING.items() if settings.get(key)]
    others = [key for key, value in settings.items()
              if key.startswith("pooling_mode") and value and key not in ST_POOLING]
    if len(chosen) != 1 or others:
        raise ExportError(
            f"checkpoint '{checkpoint}' pools with {', '.join(chosen + others) or 'nothing'}; the bert "
            f"exporter takes exactly one of {', '.join(ST_POOLING.values())}"
        )
    return chosen[0]


def _max_length(checkpoint: Path, positions: int) -> int:
    for name, key in (("sentence_bert_config.json", "max_seq_length"),
                      ("tokenizer_config.json", "model_max_length")):
        path = checkpoint / name
        if path.exists():
            value = json.loads(path.read_text()).get(key)
            if isinstance(value, int) and 0 < value < 1_000_000:
                return value
    return positions


def _is_classifier(model_config) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in model_config.architectures or [])


def load(checkpoint: str | Path) -> tuple[nn.Module, object]:
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    check_model_type(checkpoint, "bert", SUPPORTED)
    classifier = _is_classifier(AutoConfig.from_pretrained(str(checkpoint)))
    loader = AutoModelForSequenceClassification if classifier else AutoModel
    model = loader.from_pretrained(str(checkpoint)).eval()
    return model, AutoTokenizer.from_pretrained(str(checkpoint))


# Steps of 8 tokens where most texts fall: ONNX Runtime's cost grows with the padded length, so a finer
# step wastes less on padding than it loses to smaller batches.
BUCKETS = "8,16,24,32,40,48,56,64,80,96,112,128,160,192,224,256,320,384,448,512"


def config(model_config=None, max_batch_size: int = MAX_BATCH_SIZE, buckets: str = BUCKETS,
           text: TextSetup | None = None) -> ModelConfig:
    """Dynamic batching with the token inputs padded by 0, token outputs cut back per request, batches
    packed up to a token budget; two instances, so that a batch forms and is handed over while another
    runs, each with every core (intra_op_thread_count 0) when it runs alone, so that a lone request runs
    at full speed, and one thread while the other runs (busy_intra_op_thread_count 1), so that two do not
    oversubscribe the cores (`python -m loadtest.bench_peers` measures it against ONNX Runtime in
    process);
    with the checkpoint's config, the positions and token ids it takes, so the server refuses others with
    a 400; with `text`, the server's tokenization of text inputs."""
    limits = {}
    if model_config is not None:
        positions = model_config.max_position_embeddings
        limits["input_max_lengths"] = ",".join(f"{name}:{positions}" for name in INPUTS)
        limits["input_ranges"] = (
            f"input_ids:0:{model_config.vocab_size - 1},attention_mask:0:1,"
            f"token_type_ids:0:{max(model_config.type_vocab_size - 1, 0)}"
        )
    base = default_config(max_batch_size=max_batch_size)
    base.instance_group.add(count=2)
    if text is not None and text.task == "classify":
        base.output.add(name="logits", label_filename="labels.txt")
    return set_parameters(
        base,
        pad_inputs=",".join(f"{name}:0" for name in INPUTS),
        pad_outputs="last_hidden_state",
        pad_buckets=buckets,
        max_batch_tokens="8192",
        max_execution_tokens="1024",
        intra_op_thread_count="0",
        busy_intra_op_thread_count="1",
        **limits,
        **(text.parameters() if text is not None else {}),
    )


def token_cases(vocab_size: int, shapes=((1, 7), (3, 13), (2, 32)), seed: int = 0) -> list[dict]:
    """Random token batches; every other row is left short with attention_mask 0 on its tail."""
    rng = np.random.default_rng(seed)
    cases = []
    for batch, length in shapes:
        mask = np.ones((batch, length), np.int64)
        for row in range(1, batch, 2):
            mask[row, length // 2 + row:] = 0
        cases.append({
            "input_ids": rng.integers(1, vocab_size, (batch, length)).astype(np.int64) * mask,
            "attention_mask": mask,
            "token_type_ids": np.zeros((batch, length), np.int64),
        })
    return cases


def encoded_cases(tokenizer, sentences: list[str], pairs: list[str] | None = None) -> list[dict]:
    """Real sentences (or pairs): one alone, then the rest as one padded batch."""
    cases = []
    for group in (slice(0, 1), slice(1, None)):
        args = (sentences[group],) if pairs is None else (sentences[group], pairs[group])
        encoded = tokenizer(*args, padding=True, return_tensors="np")
        cases.append({name: encoded[name].astype(np.int64) if name in encoded
                      else np.zeros_like(encoded["input_ids"], np.int64) for name in INPUTS})
    return cases


def export_encoder(
    model: nn.Module,
    repository: Path,
    name: str,
    variants=("fp32",),
    pooling: bool = True,
    cases: list[dict] | None = None,
    extra_files=(),
    progress=None,
    text: TextSetup | None = None,
) -> list[ExportReport]:
    """`model`: a transformers encoder (AutoModel) or, with `text.task == "classify"`, a sequence
    classification model. `text` (with a tokenizer.json in `extra_files`) makes it a text model."""
    classify = text is not None and text.task == "classify"
    if classify:
        module, outputs = Classifier(model), ["logits"]
    else:
        mode = (text.pooling if text else "mean") if pooling else None
        module = Encoder(model, mode, text.normalize if text else True)
        outputs = ["last_hidden_state"] + (["sentence_embedding"] if pooling else [])
    axes = {name: {0: "batch", 1: "sequence"} for name in [*INPUTS, "last_hidden_state"]}
    axes |= {"sentence_embedding": {0: "batch"}, "logits": {0: "batch"}}
    example = {name: torch.ones(2, 8, dtype=torch.int64) for name in INPUTS}
    # Eager attention traces to plain MatMul/Softmax: ONNX Runtime folds the transpose and scale into
    # FusedMatMul at load, and the graph traced from SDPA carries mask plumbing it does not fold.
    # The contrib Attention/SkipLayerNormalization graph of onnxruntime.transformers is slower on CPU.
    model.set_attn_implementation("eager")
    with tempfile.TemporaryDirectory() as work:
        files = list(extra_files)
        if classify:
            labels = Path(work) / "labels.txt"
            labels.write_text("\n".join(text.labels) + "\n")
            files.append(labels)
        return export_module(
            module.eval(), example, repository, name,
            output_names=outputs, dynamic_axes={k: v for k, v in axes.items() if k in [*INPUTS, *outputs]},
            variants=variants, cases=cases or token_cases(model.config.vocab_size), int8="dynamic",
            config=config(model.config, text=text), extra_files=files, progress=progress,
        )


SENTENCES = [
    "ortserve answers over HTTP and gRPC.",
    "A quick brown fox jumps over the lazy dog.",
    "Sentence embeddings map text to vectors.",
    "The weather is lovely today, isn't it?",
]


def export(checkpoint, repository: Path, name: str, variants=("fp32",), pooling: bool = True,
           progress=None) -> list[ExportReport]:
    """A checkpoint directory (or hub id) with its tokenizer: a text model; without one, token inputs
    only (the progress says so)."""
    model, tokenizer = load(checkpoint)
    text = None
    with tempfile.TemporaryDirectory() as work:
        tokenizer_file = _tokenizer_file(checkpoint, tokenizer, Path(work))
        if tokenizer_file is not None:
            local = Path(checkpoint) if Path(checkpoint).is_dir() else Path(work)
            text = text_setup(local, model.config)
        elif progress:
            progress(f"{name}: the checkpoint has no fast tokenizer (tokenizer.json); exporting token inputs "
                     "only, so clients must send token ids")
        pairs = SENTENCES[::-1] if text is not None and text.task == "classify" else None
        return export_encoder(
            model, repository, name, variants, pooling,
            cases=encoded_cases(tokenizer, SENTENCES, pairs) + token_cases(model.config.vocab_size),
            extra_files=[tokenizer_file] if tokenizer_file else [], progress=progress, text=text,
        )


def _tokenizer_file(checkpoint, tokenizer, work: Path) -> Path | None:
    local = Path(checkpoint) / "tokenizer.json"
    if local.exists():
        return local
    if getattr(tokenizer, "is_fast", False):  # a hub id: the fast tokenizer's own tokenizer.json
        tokenizer.save_pretrained(str(work))
        return work / "tokenizer.json"
    return None
