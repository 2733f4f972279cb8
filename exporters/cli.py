"""`ortserve export {bert,gpt,llm,cnn,lstm}` (also `python -m exporters`): each family's `--help` says
what its checkpoint must be."""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from exporters.module import VARIANTS, ExportError
from exporters.parity import ParityError

HUGGING_FACE = "a Hugging Face checkpoint directory (config.json and weights), or a hub id"
TORCH_SAVE = ("a .pt/.pth file: a whole module saved with torch.save(model, path) (its class importable: "
              "--module path.py if it is defined in your own script), or a state_dict with --model-class")
FAMILIES = {
    "bert": ("encoders (BERT, RoBERTa, MiniLM, sentence-transformers and cross-encoder checkpoints)",
             f"{HUGGING_FACE}; with its tokenizer.json it is served as a text model"),
    "gpt": ("decoders with KV cache: model types gpt2, llama, mistral, qwen2, qwen3, phi3, gemma",
            f"{HUGGING_FACE}, with its tokenizer (tokenizer.json) and, for chat, its chat template"),
    "cnn": ("image classifiers", f"{HUGGING_FACE} (image classification), or {TORCH_SAVE}"),
    "lstm": ("sequence models holding an nn.LSTM ([batch, time, features] in)", TORCH_SAVE),
}
FAMILIES["llm"] = FAMILIES["gpt"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    families = parser.add_subparsers(dest="family", required=True, metavar="{bert,gpt,llm,cnn,lstm}")
    for family, (what, checkpoint) in FAMILIES.items():
        sub = families.add_parser(family, help=what if family != "llm" else "the same as gpt",
                                  description=f"Exports {what} to ONNX. --checkpoint: {checkpoint}.")
        _common(sub, checkpoint, (*VARIANTS, "int4") if family in ("gpt", "llm") else VARIANTS)
        if family == "bert":
            sub.add_argument("--no-pooling", action="store_true", help="token outputs only")
        if family in ("cnn", "lstm"):
            sub.add_argument("--model-class", metavar="MODULE:CLASS",
                             help="for a state_dict: the nn.Module class to load it into (built without "
                                  "arguments)")
            sub.add_argument("--module", metavar="PATH.py",
                             help="your Python file defining the model class (a script's own classes too)")
        if family == "cnn":
            sub.add_argument("--image-size", type=int, default=None, help="input height and width (224)")
            sub.add_argument("--calibration", metavar="DIR|FILE.npy",
                             help="representative images for static int8: a directory of images, or an "
                                  "array [n, channels, height, width]; without it int8 calibrates on noise")
        if family == "lstm":
            sub.add_argument(
                "--streaming", action="store_true",
                help="one chunk per request with the state kept by the server (Triton's sequence batcher)",
            )


def _common(parser: argparse.ArgumentParser, checkpoint: str, variants: tuple[str, ...]) -> None:
    parser.add_argument("--checkpoint", required=True, help=checkpoint)
    parser.add_argument("--repository", type=Path, required=True, help="the Triton model repository")
    parser.add_argument("--name", required=True, help="model name; variants get _fp16 and _int8")
    parser.add_argument("--variants", default="fp32", help=f"comma-separated, from {','.join(variants)}")
    parser.add_argument("--verbose", action="store_true", help="keep third-party warnings")


def export(args: argparse.Namespace) -> list:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if getattr(args, "module", None):
        from exporters.torch_files import import_user_file

        import_user_file(args.module)
    if args.family == "bert":
        from exporters import bert

        return bert.export(args.checkpoint, args.repository, args.name, variants, not args.no_pooling)
    if args.family in ("gpt", "llm"):
        return _export_decoder(args, variants)
    if args.family == "cnn":
        return _export_cnn(args, variants)
    from exporters import lstm

    model = lstm.load(args.checkpoint, args.model_class)
    if args.streaming:
        return lstm.export_streaming(model, args.repository, args.name, variants)
    return lstm.export(model, args.repository, args.name, variants)


def _export_decoder(args: argparse.Namespace, variants: list[str]) -> list:
    from exporters import gpt

    if str(args.checkpoint).endswith(".gguf"):
        return [_import_gguf(args, variants)]
    model, tokenizer = gpt.load(args.checkpoint)
    tokenizer_file = Path(args.checkpoint) / "tokenizer.json"
    if tokenizer_file.exists():
        return gpt.export(model, args.repository, args.name, variants, tokenizer_file)
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"checkpoint '{args.checkpoint}' has no fast tokenizer (tokenizer.json), which "
                          "the server needs to turn text into tokens; add it to the checkpoint directory")
    with tempfile.TemporaryDirectory() as work:  # a hub id: the fast tokenizer's tokenizer.json
        tokenizer.save_pretrained(work)
        return gpt.export(model, args.repository, args.name, variants, Path(work) / "tokenizer.json")


def _import_gguf(args: argparse.Namespace, variants: list[str]):
    """A GGUF file is served as `ortserve import-llm` imports it: its quantized blocks as they are, so
    there are no variants to choose."""
    from exporters.module import ImportReport
    from server.generation.importer import LayoutError, import_llm

    if variants != ["fp32"]:
        raise ExportError(f"'{args.checkpoint}' is a GGUF file, imported with its own quantized blocks; "
                          "--variants does not apply (leave it out)")
    try:
        target = import_llm(Path(args.checkpoint), args.repository, args.name)
    except LayoutError as error:
        raise ExportError(str(error)) from None
    return ImportReport(target / "1" / "model.onnx")


def _export_cnn(args: argparse.Namespace, variants: list[str]) -> list:
    from exporters import cnn, console
    from exporters.torch_files import calibration_images

    model = cnn.load(args.checkpoint, args.model_class)
    shape = cnn.image_shape(model, args.image_size)
    calibration = None
    if args.calibration:
        calibration = calibration_images(args.calibration, shape, _normalization(args.checkpoint))
        console.say(f"{args.name}: calibrating int8 on {len(calibration)} images from {args.calibration}")
    elif "int8" in variants:
        console.say(f"warning: {args.name}: no --calibration given, so static int8 is calibrated on random "
                    "noise and its accuracy may suffer; pass --calibration DIR|FILE.npy with a few hundred "
                    "representative images")
    return cnn.export(model, args.repository, args.name, variants, shape, calibration)


def _normalization(checkpoint: str):
    """(mean, std) from a checkpoint directory's preprocessor_config.json, where it has one."""
    config = Path(checkpoint) / "preprocessor_config.json"
    if not config.is_file():
        return None
    settings = json.loads(config.read_text())
    if settings.get("do_normalize", True) and "image_mean" in settings and "image_std" in settings:
        return settings["image_mean"], settings["image_std"]
    return None


def run(args: argparse.Namespace) -> int:
    from exporters import console

    if not args.verbose:
        console.quiet_third_party()
    try:
        with console.heartbeat(f"{args.name}: exporting"):
            reports = export(args)
    except (ExportError, ParityError, OSError, ValueError) as error:
        print(f"ortserve export: {error}", file=sys.stderr)
        return 1
    for report in reports:
        print(f"{report.path.parent.parent}: {report.summary()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporters", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
