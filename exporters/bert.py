"""BERT-family encoders to ONNX: token outputs and, optionally, a mean-pooled normalised embedding."""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from exporters.module import ExportReport, check_model_type, default_config, export_module
from exporters.publish import set_parameters
from server.protocol import ModelConfig

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SUPPORTED = ("bert", "roberta", "xlm-roberta", "electra")


class Encoder(nn.Module):
    """The checkpoint's encoder with Sentence-Transformers' mean pooling and L2 normalisation."""

    def __init__(self, model: nn.Module, pooling: bool):
        super().__init__()
        self.model = model
        self.pooling = pooling

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        if not self.pooling:
            return (hidden,)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return hidden, nn.functional.normalize(mean, p=2, dim=1)


def load(checkpoint: str | Path) -> tuple[nn.Module, object]:
    from transformers import AutoModel, AutoTokenizer

    check_model_type(checkpoint, "bert", SUPPORTED)
    model = AutoModel.from_pretrained(str(checkpoint)).eval()
    return model, AutoTokenizer.from_pretrained(str(checkpoint))


def config(
    model_config=None, max_batch_size: int = 8, buckets: str = "16,32,48,64,80,96,112,128"
) -> ModelConfig:
    """Dynamic batching with the token inputs padded by 0, token outputs cut back per request; with the
    checkpoint's config, the positions and token ids it takes, so the server refuses others with a 400."""
    limits = {}
    if model_config is not None:
        positions = model_config.max_position_embeddings
        limits["input_max_lengths"] = ",".join(f"{name}:{positions}" for name in INPUTS)
        limits["input_ranges"] = (
            f"input_ids:0:{model_config.vocab_size - 1},attention_mask:0:1,"
            f"token_type_ids:0:{max(model_config.type_vocab_size - 1, 0)}"
        )
    return set_parameters(
        default_config(max_batch_size=max_batch_size),
        pad_inputs=",".join(f"{name}:0" for name in INPUTS),
        pad_outputs="last_hidden_state",
        pad_buckets=buckets,
        **limits,
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


def encoded_cases(tokenizer, sentences: list[str]) -> list[dict]:
    """Real sentences: one alone, then the rest as one padded batch."""
    cases = []
    for group in (sentences[:1], sentences[1:]):
        encoded = tokenizer(group, padding=True, return_tensors="np")
        cases.append({name: encoded[name].astype(np.int64) for name in INPUTS})
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
) -> list[ExportReport]:
    outputs = ["last_hidden_state"] + (["sentence_embedding"] if pooling else [])
    axes = {name: {0: "batch", 1: "sequence"} for name in [*INPUTS, "last_hidden_state"]}
    if pooling:
        axes["sentence_embedding"] = {0: "batch"}
    example = {name: torch.ones(2, 8, dtype=torch.int64) for name in INPUTS}
    # Eager attention traces to plain MatMul/Softmax: ONNX Runtime folds the transpose and scale into
    # FusedMatMul at load, and the graph traced from SDPA carries mask plumbing it does not fold.
    # The contrib Attention/SkipLayerNormalization graph of onnxruntime.transformers is slower on CPU.
    model.set_attn_implementation("eager")
    return export_module(
        Encoder(model, pooling).eval(), example, repository, name,
        output_names=outputs, dynamic_axes=axes, variants=variants,
        cases=cases or token_cases(model.config.vocab_size), int8="dynamic", config=config(model.config),
        extra_files=extra_files, progress=progress,
    )


def export(checkpoint, repository: Path, name: str, variants=("fp32",), pooling: bool = True,
           progress=None) -> list[ExportReport]:
    model, tokenizer = load(checkpoint)
    tokenizer_file = Path(checkpoint) / "tokenizer.json"
    sentences = [
        "ortserve answers over HTTP and gRPC.",
        "A quick brown fox jumps over the lazy dog.",
        "Sentence embeddings map text to vectors.",
        "The weather is lovely today, isn't it?",
    ]
    return export_encoder(
        model, repository, name, variants, pooling,
        cases=encoded_cases(tokenizer, sentences) + token_cases(model.config.vocab_size),
        extra_files=[tokenizer_file] if tokenizer_file.exists() else [], progress=progress,
    )
