"""`ortserve serve` and `ortserve export` (the latter needs the `export` extra: torch)."""

import argparse
import asyncio
import logging
import sys

from server import settings as settings_module
from server.core.errors import ServerError, StartupFailed
from server.ports import PortUnavailable
from server.version import server_version


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="ortserve", description="ONNX Runtime inference server")
    parser.add_argument("--version", action="version", version=f"ortserve {server_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve a model repository")
    settings_module.add_arguments(serve_parser)
    if argv[:1] == ["export"]:
        from exporters import cli as export_cli  # imported only here: serving never needs torch

        export_parser = commands.add_parser("export", help="export a model to ONNX into a repository")
        export_cli.add_arguments(export_parser)
        return export_cli.run(parser.parse_args(argv))
    commands.add_parser("export", help="export a model to ONNX into a repository (needs torch)")
    importing = commands.add_parser(
        "import-llm", help="serve a GGUF file or a decoder exported by onnxruntime-genai or Optimum",
        description="Writes a model directory (the graph, its tokenizer and a config.pbtxt) for a GGUF file "
                    "(llama.cpp's: its quantized blocks kept, its tokenizer and chat template), or a decoder "
                    "directory of onnxruntime-genai's builder (genai_config.json) or of Optimum / "
                    "transformers.js (model.onnx or decoder_model_merged.onnx, also under onnx/).")
    importing.add_argument("source", help="the GGUF file or the exported model's directory")
    importing.add_argument("--repository", required=True, help="the Triton model repository")
    importing.add_argument("--name", required=True, help="the model's name in the repository")
    importing.add_argument("--float-activations", action="store_true",
                           help="GGUF: multiply in float, exactly as the dequantized weights (slower); by "
                                "default activations are quantized to int8 per block, as llama.cpp does")
    importing.add_argument("--kv-cache", choices=("float32", "int8"), default="float32",
                           help="GGUF: the type of the key/value cache; int8 takes a quarter of the memory "
                                "and attention reads less, with per-channel scales calibrated on real text "
                                "as the graph is built (values past them are clamped)")
    importing.add_argument("--prompt-lookup", type=int, default=0, metavar="N",
                           help="prompt lookup decoding: while a sequence runs alone, draft up to N next "
                                "tokens from its own text and check them in one run (the config parameter "
                                "prompt_lookup_num_tokens; 3 is a good start); 0, the default: off")
    args = parser.parse_args(argv)
    if args.command == "import-llm":
        return import_llm(args)
    return serve(args)


def import_llm(args: argparse.Namespace) -> int:
    from server.generation.importer import LayoutError, import_llm

    try:
        target = import_llm(args.source, args.repository, args.name, args.float_activations,
                            args.kv_cache == "int8", args.prompt_lookup)
    except (LayoutError, OSError, KeyError) as error:
        print(f"ortserve import-llm: {error}", file=sys.stderr)
        return 1
    print(f"{target}: ready to serve")
    return 0


def serve(args: argparse.Namespace) -> int:
    try:
        settings = settings_module.from_arguments(args)
    except ValueError as error:
        print(f"ortserve: {error}", file=sys.stderr)
        return 2
    from server.main import serve as run_server
    from server.service.logs import LogService

    logs = LogService(settings.log_verbose, settings.log_format)
    logs.install()
    info, warning, error = settings.log_levels
    try:
        logs.update({"log_file": settings.log_file, "log_info": info, "log_warning": warning,
                     "log_error": error})
    except ServerError as problem:
        print(f"ortserve: {problem.message}", file=sys.stderr)
        return 2
    for flag in settings.ignored_flags:
        logging.getLogger("ortserve").warning("%s is ignored: %s", flag, settings_module.TRITON_IGNORED[flag])
    try:
        _event_loop_runner()(run_server(settings, logs))
    except FileNotFoundError as error:
        logging.getLogger("ortserve").error("%s", error)
        return 2
    except (PortUnavailable, StartupFailed) as error:
        logging.getLogger("ortserve").error("%s", error)
        return 1
    return 0


def _event_loop_runner():
    """uvloop where it is installed (uvicorn[standard] brings it, except on Windows): the HTTP and gRPC
    front ends and the batchers all run on this one loop, so its cost per request is the server's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def serve_main() -> int:
    """`python -m server [serve] --model-repository ...`."""
    parser = argparse.ArgumentParser(prog="python -m server")
    settings_module.add_arguments(parser)
    argv = sys.argv[1:]
    return serve(parser.parse_args(argv[1:] if argv[:1] == ["serve"] else argv))
