"""Starts the front ends over one core and runs them until SIGINT/SIGTERM."""

import asyncio
import contextlib
import logging
import signal

import uvicorn

from server.api.grpc.servicer import channel_options, create_server
from server.api.http.app import create_app
from server.core.service import InferenceService
from server.metrics import create_metrics_app
from server.repository.registry import ModelRegistry
from server.settings import Settings

log = logging.getLogger("ortserve")


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: `serve` below owns shutdown for every front end."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def serve(settings: Settings) -> None:
    registry = ModelRegistry(settings.model_repository, settings.model_control_mode, settings.load_models)
    await registry.start()
    service = InferenceService(registry, strict_readiness=settings.strict_readiness)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    tasks, servers = [], []
    if settings.allow_http:
        app = create_app(service, settings.max_request_bytes, settings.access_log)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.http_port,
            log_config=None,
            access_log=settings.log_verbose > 0,
            timeout_graceful_shutdown=settings.exit_timeout_secs,
        )
        http = _HttpServer(config)
        servers.append(http)
        tasks.append(asyncio.create_task(http.serve(), name="http"))
        log.info("HTTP service at http://%s:%d", settings.host, settings.http_port)
    if settings.allow_metrics:
        metrics = _HttpServer(
            uvicorn.Config(
                create_metrics_app(registry),
                host=settings.host,
                port=settings.metrics_port,
                log_config=None,
                access_log=False,
            )
        )
        servers.append(metrics)
        tasks.append(asyncio.create_task(metrics.serve(), name="metrics"))
        log.info("metrics at http://%s:%d/metrics", settings.host, settings.metrics_port)
    grpc_server = None
    if settings.allow_grpc:
        options = channel_options(settings.max_request_bytes, settings.grpc_keepalive)
        address = f"{settings.host}:{settings.grpc_port}"
        grpc_server = create_server(service, address, options, settings.access_log)
        await grpc_server.start()
        log.info("gRPC service at %s:%d", settings.host, settings.grpc_port)
    if settings.model_control_mode == "poll":
        tasks.append(asyncio.create_task(_poll(registry, settings.repository_poll_secs), name="poll"))

    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    failed = [task for task in done if task is not stopper and task.exception()]
    log.info("shutting down")
    service.live = False
    for server in servers:
        server.should_exit = True
    if grpc_server is not None:
        await grpc_server.stop(settings.exit_timeout_secs)
    for task in tasks:
        if task.get_name() == "poll":
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await registry.close()
    if failed:
        raise failed[0].exception()


async def _poll(registry: ModelRegistry, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        await registry.poll()
