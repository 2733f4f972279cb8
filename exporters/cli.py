"""`ortserve export {bert,gpt,cnn,lstm}` (also `python -m exporters`)."""

import argparse
import sys
import tempfile
from pathlib import Path

from exporters.module import VARIANTS, ExportError
from exporters.parity import ParityError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("family", choices=("bert", "gpt", "llm", "cnn", "lstm"),
                        help="llm is gpt: decoders of type gpt2, llama, mistral, qwen2, qwen3, phi3, gemma")
    parser.add_argument(
        "--checkpoint", required=True,
        help="a local Hugging Face checkpoint directory or hub id (cnn, lstm: also a torch.save file)",
    )
    parser.add_argument("--repository", type=Path, required=True, help="the Triton model repository")
    parser.add_argument("--name", required=True, help="model name; variants get _fp16 and _int8")
    parser.add_argument("--variants", default="fp32", help=f"comma-separated, from {','.join(VARIANTS)}")
    parser.add_argument("--no-pooling", action="store_true", help="bert: token outputs only")
    parser.add_argument("--image-size", type=int, default=None, help="cnn: input height and width")
    parser.add_argument(
        "--streaming", action="store_true",
        help="lstm: one chunk per request with the state kept by the server (Triton's sequence batcher)",
    )


def export(args: argparse.Namespace) -> list:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.family == "bert":
        from exporters import bert

        return bert.export(args.checkpoint, args.repository, args.name, variants, not args.no_pooling)
    if args.family in ("gpt", "llm"):
        from exporters import gpt

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
    if args.family == "cnn":
        from exporters import cnn

        model = cnn.load(args.checkpoint)
        shape = cnn.image_shape(model, args.image_size)
        return cnn.export(model, args.repository, args.name, variants, shape)
    from exporters import lstm

    if args.streaming:
        return lstm.export_streaming(lstm.load(args.checkpoint), args.repository, args.name, variants)
    return lstm.export(lstm.load(args.checkpoint), args.repository, args.name, variants)


def run(args: argparse.Namespace) -> int:
    try:
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
