"""Server settings from the command line; flag names follow tritonserver where it has one."""

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from server.repository.registry import CONTROL_MODES


@dataclass(frozen=True)
class GrpcKeepalive:
    """Triton's gRPC keepalive defaults."""

    time_ms: int = 7_200_000
    timeout_ms: int = 20_000
    permit_without_calls: bool = False
    max_pings_without_data: int = 2
    min_recv_ping_interval_ms: int = 300_000
    max_ping_strikes: int = 2


@dataclass(frozen=True)
class Settings:
    model_repository: Path
    host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    allow_http: bool = True
    allow_grpc: bool = True
    allow_metrics: bool = True
    model_control_mode: str = "none"
    load_models: list[str] = field(default_factory=list)
    repository_poll_secs: float = 15.0
    strict_readiness: bool = True
    max_request_bytes: int = 64 * 1024 * 1024
    grpc_keepalive: GrpcKeepalive = field(default_factory=GrpcKeepalive)
    exit_timeout_secs: float = 30.0
    log_verbose: int = 0
    access_log: bool = True


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", "--model-store", required=True, type=Path)
    parser.add_argument("--host", default=Settings.host, help="address to listen on")
    parser.add_argument("--http-port", type=int, default=Settings.http_port)
    parser.add_argument("--grpc-port", type=int, default=Settings.grpc_port)
    parser.add_argument("--metrics-port", type=int, default=Settings.metrics_port)
    parser.add_argument("--allow-http", type=_bool, default=True)
    parser.add_argument("--allow-grpc", type=_bool, default=True)
    parser.add_argument("--allow-metrics", type=_bool, default=True)
    parser.add_argument("--model-control-mode", choices=CONTROL_MODES, default="none")
    parser.add_argument(
        "--load-model",
        action="append",
        default=[],
        dest="load_models",
        help="model to load at start in explicit mode (repeat; '*' loads every model)",
    )
    parser.add_argument("--repository-poll-secs", type=float, default=Settings.repository_poll_secs)
    parser.add_argument("--strict-readiness", type=_bool, default=True)
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=Settings.max_request_bytes,
        help="largest request body (after decompression) or gRPC message accepted",
    )
    parser.add_argument("--grpc-keepalive-time", type=int, default=GrpcKeepalive.time_ms)
    parser.add_argument("--grpc-keepalive-timeout", type=int, default=GrpcKeepalive.timeout_ms)
    parser.add_argument("--grpc-keepalive-permit-without-calls", type=_bool, default=False)
    parser.add_argument(
        "--grpc-http2-max-pings-without-data",
        type=int,
        default=GrpcKeepalive.max_pings_without_data,
    )
    parser.add_argument(
        "--grpc-http2-min-recv-ping-interval-without-data",
        type=int,
        default=GrpcKeepalive.min_recv_ping_interval_ms,
    )
    parser.add_argument("--grpc-http2-max-ping-strikes", type=int, default=GrpcKeepalive.max_ping_strikes)
    parser.add_argument("--exit-timeout-secs", type=float, default=Settings.exit_timeout_secs)
    parser.add_argument(
        "--log-verbose", type=int, default=0, help="1: debug logs of ortserve, 2: of every library"
    )
    parser.add_argument("--access-log", type=_bool, default=True, help="one JSON log line per request")


def from_arguments(args: argparse.Namespace) -> Settings:
    return Settings(
        model_repository=args.model_repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        allow_http=args.allow_http,
        allow_grpc=args.allow_grpc,
        allow_metrics=args.allow_metrics,
        model_control_mode=args.model_control_mode,
        load_models=args.load_models,
        repository_poll_secs=args.repository_poll_secs,
        strict_readiness=args.strict_readiness,
        max_request_bytes=args.max_request_bytes,
        grpc_keepalive=GrpcKeepalive(
            time_ms=args.grpc_keepalive_time,
            timeout_ms=args.grpc_keepalive_timeout,
            permit_without_calls=args.grpc_keepalive_permit_without_calls,
            max_pings_without_data=args.grpc_http2_max_pings_without_data,
            min_recv_ping_interval_ms=args.grpc_http2_min_recv_ping_interval_without_data,
            max_ping_strikes=args.grpc_http2_max_ping_strikes,
        ),
        exit_timeout_secs=args.exit_timeout_secs,
        log_verbose=args.log_verbose,
        access_log=args.access_log,
    )
