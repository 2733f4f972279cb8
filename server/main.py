"""Starts the front ends over one core and runs them until SIGINT/SIGTERM."""

import asyncio
import contextlib
import contextvars
import gc
import logging
import signal
import ssl

import grpc
import uvicorn

from server.api.grpc.servicer import channel_options, create_server
from server.api.http_app import create_app
from server.core.errors import StartupFailed
from server.metrics import create_metrics_app
from server.ports import PortUnavailable, claim
from server.repository.registry import ModelRegistry
from server.repository.single import as_repository
from server.runtime.heap import keep_request_buffers
from server.service.logs import LogService
from server.service.services import Service
from server.settings import Settings, Tls
from server.tracing.settings import TraceSettings
from server.tracing.spans import Tracer

log = logging.getLogger("ortserve")


_QUIET = contextvars.ContextVar("quiet", default=False)


class _QuietWhereAsked(logging.Filter):
    """Drops uvicorn's lifecycle lines (INFO) logged from a task that asked for quiet: the metrics
    server's would repeat the HTTP server's, line for line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not _QUIET.get()


async def _quietly(coroutine):
    _QUIET.set(True)  # this task's context only
    return await coroutine


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: `serve` below owns shutdown for every front end."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def serve(settings: Settings, logs: LogService | None = None) -> None:
    """Claims every port first (a port in use raises PortUnavailable before anything starts), loads the
    models, then serves until SIGINT/SIGTERM. `logs`: the logging the command line installed."""
    keep_request_buffers()
    repository = as_repository(settings.model_repository, settings.model_name)
    registry = ModelRegistry(repository, settings.model_control_mode, settings.load_models)
    tracer = Tracer(TraceSettings(settings.trace), settings.trace_export)
    service = Service.over(registry, settings.strict_readiness, settings.min_ready_models, tracer, logs,
                           settings.cache_bytes)
    service.health.name = settings.server_id
    sockets, grpc_server = _claim_ports(settings), None
    if settings.allow_grpc:
        options = channel_options(settings.max_request_bytes, settings.grpc_keepalive)
        address = f"{settings.host}:{settings.grpc_port}"
        claim(settings.host, settings.grpc_port, "gRPC").close()  # grpc binds it itself, just below
        grpc_server = create_server(service, options, settings.access_log, settings.grpc_restrictions)
        _bind_grpc(grpc_server, address, _grpc_credentials(settings.grpc_tls))
    _freeze_imports()
    await registry.start()
    failed = registry.failed()
    if failed and settings.exit_on_error:
        await registry.close()
        if grpc_server is not None:
            await grpc_server.stop(None)
        for listener in sockets.values():
            listener.close()
        raise StartupFailed(f"failed to load all models ({', '.join(failed)}); --exit-on-error false serves "
                            "the models that loaded")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    tasks, servers = [], []
    if "http" in sockets:
        app = create_app(service, settings.max_request_bytes, settings.access_log, settings.http_restrictions)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.http_port,
            log_config=None,
            access_log=settings.log_verbose > 0,
            timeout_graceful_shutdown=settings.exit_timeout_secs,
            **_uvicorn_tls(settings.http_tls),
        )
        http = _HttpServer(config)
        servers.append(http)
        tasks.append(asyncio.create_task(http.serve(sockets=[sockets["http"]]), name="http"))
        scheme = "https" if settings.http_tls else "http"
        log.info("HTTP service at %s://%s:%d", scheme, settings.host, settings.http_port)
    if "metrics" in sockets:
        metrics = _HttpServer(
            uvicorn.Config(
                create_metrics_app(service),
                host=settings.host,
                port=settings.metrics_port,
                log_config=None,
                access_log=False,
            )
        )
        servers.append(metrics)
        logging.getLogger("uvicorn.error").addFilter(_QuietWhereAsked())
        serving = _quietly(metrics.serve(sockets=[sockets["metrics"]]))
        tasks.append(asyncio.create_task(serving, name="metrics"))
        log.info("metrics at http://%s:%d/metrics", settings.host, settings.metrics_port)
    if grpc_server is not None:
        await grpc_server.start()
        tls = " (TLS)" if settings.grpc_tls else ""
        log.info("gRPC service at %s:%d%s", settings.host, settings.grpc_port, tls)
    if settings.model_control_mode == "poll":
        tasks.append(asyncio.create_task(_poll(registry, settings.repository_poll_secs), name="poll"))

    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    failed = [task for task in done if task is not stopper and task.exception()]
    log.info("shutting down")
    service.health.live = False
    for server in servers:
        server.should_exit = True
    if grpc_server is not None:
        await grpc_server.stop(settings.exit_timeout_secs)
    for task in tasks:
        if task.get_name() == "poll":
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await registry.close()
    await asyncio.to_thread(tracer.shutdown)  # the spans still batched go out
    if failed:
        raise failed[0].exception()


def _freeze_imports() -> None:
    """The modules' objects live as long as the process: out of the collector's sight, a full collection
    under load scans what serving made, not all of them, and the event loop pauses that much less.
    Models load after this, so an unloaded model's cycles are still collected."""
    gc.collect()
    gc.freeze()


def _uvicorn_tls(tls: Tls | None) -> dict:
    if tls is None:
        return {}
    options = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}
    if tls.root_cert is not None:
        options["ssl_ca_certs"] = str(tls.root_cert)
    if tls.mutual:
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


def _grpc_credentials(tls: Tls | None) -> grpc.ServerCredentials | None:
    if tls is None:
        return None
    root = tls.root_cert.read_bytes() if tls.root_cert is not None else None
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())], root_certificates=root,
        require_client_auth=tls.mutual,
    )


def _bind_grpc(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> None:
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpcio raises where older releases returned 0
        bound = 0
    if not bound:
        raise PortUnavailable(f"cannot listen for gRPC on {address}")


def _claim_ports(settings: Settings) -> dict:
    wanted = {
        "http": (settings.allow_http, settings.http_port),
        "metrics": (settings.allow_metrics, settings.metrics_port),
    }
    sockets = {}
    try:
        for name, (enabled, port) in wanted.items():
            if enabled:
                sockets[name] = claim(settings.host, port, "HTTP" if name == "http" else name)
    except PortUnavailable:
        for sock in sockets.values():
            sock.close()
        raise
    return sockets


async def _poll(registry: ModelRegistry, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        await registry.poll()
