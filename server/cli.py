"""`ortserve serve` and `ortserve export` (the latter needs the `export` extra: torch)."""

import argparse
import asyncio
import json
import logging
import sys
import time

from server import settings as settings_module
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
        "import-llm", help="serve a decoder exported by onnxruntime-genai's builder or Optimum, as it is",
        description="Writes a model directory (the graph, its tokenizer and a config.pbtxt) for a decoder "
                    "directory of onnxruntime-genai's builder (genai_config.json) or of Optimum / "
                    "transformers.js (model.onnx or decoder_model_merged.onnx, also under onnx/).")
    importing.add_argument("source", help="the exported model's directory")
    importing.add_argument("--repository", required=True, help="the Triton model repository")
    importing.add_argument("--name", required=True, help="the model's name in the repository")
    args = parser.parse_args(argv)
    if args.command == "import-llm":
        return import_llm(args)
    return serve(args)


def import_llm(args: argparse.Namespace) -> int:
    from server.generation.importer import LayoutError, import_llm

    try:
        target = import_llm(args.source, args.repository, args.name)
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
    handler = logging.StreamHandler()
    handler.setFormatter(_formatter(settings.log_format))
    logging.basicConfig(level=logging.DEBUG if settings.log_verbose > 1 else logging.INFO, handlers=[handler])
    if settings.log_verbose == 1:
        logging.getLogger("server").setLevel(logging.DEBUG)
        logging.getLogger("ortserve").setLevel(logging.DEBUG)
    from server.main import serve as run_server

    try:
        _event_loop_runner()(run_server(settings))
    except FileNotFoundError as error:
        logging.getLogger("ortserve").error("%s", error)
        return 2
    except PortUnavailable as error:
        logging.getLogger("ortserve").error("%s", error)
        return 1
    return 0


def _formatter(log_format: str) -> logging.Formatter:
    """default: local time; ISO8601 (Triton's name): UTC in ISO 8601; json: one object per line."""
    if log_format == "json":
        return _JsonFormatter()
    if log_format == "ISO8601":
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        formatter.converter = time.gmtime
        return formatter
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.name == "ortserve.access":  # already JSON: its fields, not a string of them
            entry["access"] = json.loads(entry.pop("message"))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)

    converter = time.gmtime


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
