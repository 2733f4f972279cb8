"""Server settings from the command line; flag names follow tritonserver where it has one."""

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from server.api.restrictions import GROUPS, NO_RESTRICTIONS, Restrictions
from server.core.types import CONTROL_MODES
from server.service.response_cache import cache_bytes
from server.tracing.settings import TraceSetting, setting_from_config
from server.tracing.spans import OtlpExport


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
class Tls:
    """A listener's certificate and key (PEM files); `mutual`: clients must show a certificate signed by
    `root_cert`."""

    cert: Path
    key: Path
    root_cert: Path | None = None
    mutual: bool = False

    @classmethod
    def from_flags(cls, what: str, enabled: bool, cert, key, root_cert, mutual: bool) -> "Tls | None":
        if not enabled:
            return None
        if cert is None or key is None:
            raise ValueError(f"{what} TLS needs a server certificate and key")
        if mutual and root_cert is None:
            raise ValueError(f"{what} mutual TLS needs a root certificate to check clients against")
        for path in (cert, key, root_cert):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{what} TLS file '{path}' does not exist")
        return cls(Path(cert), Path(key), None if root_cert is None else Path(root_cert), mutual)


@dataclass(frozen=True)
class Settings:
    model_repository: Path
    model_name: str | None = None  # the name of the one model a --model-repository of one model holds
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
    min_ready_models: int = 0
    cache_bytes: int = 0  # the response cache's size (--cache-config local,size=N); 0: no cache
    max_request_bytes: int = 64 * 1024 * 1024
    grpc_keepalive: GrpcKeepalive = field(default_factory=GrpcKeepalive)
    exit_timeout_secs: float = 30.0
    log_verbose: int = 0
    log_format: str = "default"
    log_file: str = ""  # "" : standard error
    log_levels: tuple[bool, bool, bool] = (True, True, True)  # info, warning, error
    exit_on_error: bool = False  # exit when a model fails to load at start (Triton's default: true)
    server_id: str = "ortserve"  # tritonserver's --id: the name the server metadata gives
    ignored_flags: tuple[str, ...] = ()  # tritonserver flags given that have no meaning here, with why
    access_log: bool = True
    http_restrictions: Restrictions = NO_RESTRICTIONS
    grpc_restrictions: Restrictions = NO_RESTRICTIONS
    http_tls: Tls | None = None
    grpc_tls: Tls | None = None
    trace: TraceSetting = field(default_factory=TraceSetting)
    trace_export: OtlpExport = field(default_factory=OtlpExport)


# tritonserver flags that tune parts ortserve does not have: accepted, so that a Triton command line starts,
# and named in a warning at start
TRITON_IGNORED = {
    "--model-load-thread-count": "models load one after another",
    "--http-thread-count": "HTTP requests are served on the event loop",
    "--pinned-memory-pool-byte-size": "ONNX Runtime allocates its own buffers",
    "--cuda-memory-pool-byte-size": "ONNX Runtime allocates its own buffers",
    "--buffer-manager-thread-count": "there is no buffer manager",
    "--metrics-interval-ms": "metrics are read when scraped",
    "--allow-gpu-metrics": "the metrics have no GPU section",
    "--allow-cpu-metrics": "CPU metrics are always on",
    "--backend-directory": "ONNX Runtime is the one backend, built in",
    "--backend-config": "ONNX Runtime settings go in each config.pbtxt's parameters",
    "--repoagent-directory": "there are no repository agents",
    "--rate-limit": "instances run as they are free",
    "--min-supported-compute-capability": "ONNX Runtime's CUDA provider decides",
}


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", "--model-store", required=True, type=Path,
                        help="a Triton model repository, or one model (a model.onnx, or a model directory)")
    parser.add_argument("--model-name", help="the name to serve one model under when --model-repository "
                                             "holds one model (default: its directory's name)")
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
    parser.add_argument("--min-ready-models", type=int, default=0,
                        help="not ready until this many models are ready (0: Triton's readiness alone)")
    parser.add_argument("--cache-config", action="append", default=[],
                        help="Triton's response cache: local,size=<bytes> (models opt in with "
                             "response_cache { enable: true })")
    parser.add_argument("--response-cache-byte-size", type=int, default=0,
                        help="Triton's older flag: the same as --cache-config local,size=<bytes>")
    parser.add_argument(
        "--max-request-bytes",
        "--http-max-input-size",  # Triton's name
        dest="max_request_bytes",
        type=int,
        default=Settings.max_request_bytes,
        help="largest request body (after decompression) or gRPC request message accepted",
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
    parser.add_argument("--log-format", choices=("default", "ISO8601", "json"), default="default",
                        help="json: one JSON object per line (time, level, logger, message)")
    parser.add_argument("--log-file", default="", help="write the log to this file (Triton's)")
    for level in ("info", "warning", "error"):
        parser.add_argument(f"--log-{level}", type=_bool, default=True, help=f"log {level} messages")
    parser.add_argument("--id", dest="server_id", default=Settings.server_id,
                        help="the server's name in its metadata (GET /v2, ServerMetadata), as tritonserver's")
    parser.add_argument("--exit-on-error", type=_bool, default=False,
                        help="exit when a model fails to load at start (ortserve's default: serve the rest)")
    parser.add_argument("--strict-model-config", type=_bool, default=False,
                        help="Triton's older flag: false (configs completed from the graph) is what "
                             "ortserve does")
    parser.add_argument("--disable-auto-complete-config", action="store_true",
                        help="not supported: ortserve completes every config from its graph")
    for flag in TRITON_IGNORED:
        parser.add_argument(flag, help=f"tritonserver's, accepted and ignored: {TRITON_IGNORED[flag]}")
    parser.add_argument("--access-log", type=_bool, default=True, help="one JSON log line per request")
    parser.add_argument("--trace-config", action="append", default=[],
                        help="Triton's: level=TIMESTAMPS, rate=N, count=N, mode=opentelemetry, "
                             "opentelemetry,url=<OTLP/HTTP endpoint>, opentelemetry,resource=<key>=<value>, "
                             "opentelemetry,bsp_schedule_delay=<ms> (repeat)")
    restricted = "<api>[,<api>...]:<header>=<value>; APIs: " + ", ".join(GROUPS)
    parser.add_argument("--http-restricted-api", action="append", default=[], help=restricted)
    parser.add_argument("--grpc-restricted-protocol", action="append", default=[], help=restricted)
    parser.add_argument("--grpc-use-ssl", type=_bool, default=False)
    parser.add_argument("--grpc-use-ssl-mutual", type=_bool, default=False)
    parser.add_argument("--grpc-server-cert", type=Path)
    parser.add_argument("--grpc-server-key", type=Path)
    parser.add_argument("--grpc-root-cert", type=Path)
    parser.add_argument("--http-ssl-cert", type=Path, help="serve HTTPS with this certificate (and key)")
    parser.add_argument("--http-ssl-key", type=Path)
    parser.add_argument("--http-ssl-root-cert", type=Path, help="CA that client certificates must chain to")
    parser.add_argument("--http-ssl-mutual", type=_bool, default=False)


def from_arguments(args: argparse.Namespace) -> Settings:
    if args.strict_model_config or args.disable_auto_complete_config:
        raise ValueError("--strict-model-config true / --disable-auto-complete-config: not supported; "
                         "ortserve completes each config.pbtxt from its ONNX graph, as tritonserver does by "
                         "default")
    trace, otlp = setting_from_config(args.trace_config)
    return Settings(
        trace=trace,
        trace_export=OtlpExport.from_options(otlp),
        model_repository=args.model_repository,
        model_name=args.model_name,
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
        min_ready_models=args.min_ready_models,
        cache_bytes=cache_bytes(args.cache_config, args.response_cache_byte_size),
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
        log_format=args.log_format,
        log_file=args.log_file,
        log_levels=(args.log_info, args.log_warning, args.log_error),
        exit_on_error=args.exit_on_error,
        server_id=args.server_id,
        ignored_flags=tuple(flag for flag in TRITON_IGNORED if getattr(args, _dest(flag)) is not None),
        access_log=args.access_log,
        http_restrictions=Restrictions.parse(args.http_restricted_api, "--http-restricted-api"),
        grpc_restrictions=Restrictions.parse(args.grpc_restricted_protocol, "--grpc-restricted-protocol",
                                             grpc=True),
        http_tls=Tls.from_flags("HTTP", args.http_ssl_cert is not None, args.http_ssl_cert, args.http_ssl_key,
                                args.http_ssl_root_cert, args.http_ssl_mutual),
        grpc_tls=Tls.from_flags("gRPC", args.grpc_use_ssl or args.grpc_use_ssl_mutual, args.grpc_server_cert,
                                args.grpc_server_key, args.grpc_root_cert, args.grpc_use_ssl_mutual),
    )
