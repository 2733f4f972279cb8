"""BERT-family encoders to ONNX: token outputs and, optionally, a mean-pooled normalised embedding."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from exporters.publish import model_path, set_parameters, write_config
from server.protocol import ModelConfig

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


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

    model = AutoModel.from_pretrained(str(checkpoint)).eval()
    return model, AutoTokenizer.from_pretrained(str(checkpoint))


def export_fp32(encoder: Encoder, path: Path, opset: int = 17) -> Path:
    example = {name: torch.ones(2, 8, dtype=torch.int64) for name in INPUTS}
    outputs = ["last_hidden_state"] + (["sentence_embedding"] if encoder.pooling else [])
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    if encoder.pooling:
        axes["sentence_embedding"] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            encoder,
            tuple(example[n] for n in INPUTS),
            str(path),
            input_names=list(INPUTS),
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    return path


def config(max_batch_size: int = 8, buckets: str = "16,32,48,64,80,96,112,128") -> ModelConfig:
    """Dynamic batching with the token inputs padded by 0, token outputs cut back per request."""
    config = ModelConfig(max_batch_size=max_batch_size)
    config.dynamic_batching.max_queue_delay_microseconds = 1000
    return set_parameters(
        config,
        pad_inputs=",".join(f"{name}:0" for name in INPUTS),
        pad_outputs="last_hidden_state",
        pad_buckets=buckets,
    )


def sentence_embeddings(path: Path, tokenizer, sentences: list[str]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    encoded = tokenizer(sentences, padding=True, return_tensors="np")
    feeds = {name: encoded[name].astype(np.int64) for name in INPUTS}
    return session.run(["sentence_embedding"], feeds)[0]


def export(checkpoint, repository: Path, name: str, pooling: bool = True) -> Path:
    model, tokenizer = load(checkpoint)
    export_fp32(Encoder(model, pooling), model_path(repository, name))
    extra = [Path(checkpoint) / "tokenizer.json"] if (Path(checkpoint) / "tokenizer.json").exists() else []
    return write_config(repository, name, config(), extra)
