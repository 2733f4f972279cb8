"""The gRPC front end: `inference.GRPCInferenceService` on grpc.aio, decoding into the core and back."""

import asyncio
import logging
import time

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.api import access_log as access
from server.api.grpc import codec, wire
from server.api.grpc.errors import STATUS
from server.api.grpc.stream import StreamAnswers
from server.api.restrictions import NO_RESTRICTIONS, Restrictions, grpc_group
from server.core.errors import InvalidArgument, ServerError
from server.core.types import InferRequest
from server.protocol import SERVICE_NAME, message
from server.service.services import Service

log = logging.getLogger(__name__)

_LOG_SETTING_FIELD = {bool: "bool_param", int: "uint32_param", str: "string_param"}


class GrpcInferenceService:
    """One method per RPC of `inference.GRPCInferenceService`, each taking its parsed request message."""

    def __init__(self, service: Service):
        self.service = service

    async def ServerLive(self, request, context):
        return message("ServerLiveResponse")(live=self.service.health.live)

    async def ServerReady(self, request, context):
        return message("ServerReadyResponse")(ready=self.service.health.ready())

    async def ModelReady(self, request, context):
        ready = self.service.repository.model_ready(request.name, request.version)
        return message("ModelReadyResponse")(ready=ready)

    async def ServerMetadata(self, request, context):
        metadata = self.service.health.server_metadata()
        return json_format.ParseDict(metadata, message("ServerMetadataResponse")())

    async def ModelMetadata(self, request, context):
        metadata = self.service.repository.model_metadata(request.name, request.version)
        return json_format.ParseDict(metadata, message("ModelMetadataResponse")())

    async def ModelConfig(self, request, context):
        config = self.service.repository.model_config(request.name, request.version)
        return message("ModelConfigResponse")(config=config)

    async def ModelStatistics(self, request, context):
        stats = {"model_stats": self.service.statistics.statistics(request.name, request.version)}
        return json_format.ParseDict(stats, message("ModelStatisticsResponse")())

    async def RepositoryIndex(self, request, context):
        response = message("RepositoryIndexResponse")()
        for entry in self.service.repository.index(request.ready):
            response.models.add(
                name=entry.name, version=entry.version, state=entry.state, reason=entry.reason
            )
        return response

    async def RepositoryModelLoad(self, request, context):
        await self.service.repository.load(request.model_name, codec.parameters(request.parameters))
        return message("RepositoryModelLoadResponse")()

    async def RepositoryModelUnload(self, request, context):
        dependents = request.parameters.get("unload_dependents")
        if dependents is not None and dependents.WhichOneof("parameter_choice") != "bool_param":
            raise InvalidArgument("'unload_dependents' must be a bool_param")
        await self.service.repository.unload(request.model_name,
                                             dependents is not None and dependents.bool_param)
        return message("RepositoryModelUnloadResponse")()

    async def SystemSharedMemoryStatus(self, request, context):
        answer = message("SystemSharedMemoryStatusResponse")()
        for region in self.service.shared_memory.system.status(request.name):
            answer.regions[region["name"]].CopyFrom(
                message("SystemSharedMemoryStatusResponse.RegionStatus")(**region)
            )
        return answer

    async def SystemSharedMemoryRegister(self, request, context):
        regions = self.service.shared_memory.system
        regions.register(request.name, request.key, request.offset, request.byte_size)
        return message("SystemSharedMemoryRegisterResponse")()

    async def SystemSharedMemoryUnregister(self, request, context):
        self.service.shared_memory.system.unregister(request.name)
        return message("SystemSharedMemoryUnregisterResponse")()

    async def CudaSharedMemoryStatus(self, request, context):
        answer = message("CudaSharedMemoryStatusResponse")()
        for region in self.service.shared_memory.cuda.status(request.name):
            answer.regions[region["name"]].CopyFrom(
                message("CudaSharedMemoryStatusResponse.RegionStatus")(**region)
            )
        return answer

    async def CudaSharedMemoryRegister(self, request, context):
        self.service.shared_memory.cuda.register(
            request.name, request.raw_handle, request.device_id, request.byte_size
        )
        return message("CudaSharedMemoryRegisterResponse")()

    async def CudaSharedMemoryUnregister(self, request, context):
        self.service.shared_memory.cuda.unregister(request.name)
        return message("CudaSharedMemoryUnregisterResponse")()

    async def TraceSetting(self, request, context):
        changes = {key: list(value.value) for key, value in request.settings.items()}
        tracing = self.service.tracing
        settings = tracing.update(request.model_name, changes) if changes else tracing.get(request.model_name)
        response = message("TraceSettingResponse")()
        for key, value in settings.items():
            response.settings[key].value.extend(value if isinstance(value, list) else [value])
        return response

    async def LogSettings(self, request, context):
        changes = {key: getattr(value, value.WhichOneof("parameter_choice"))
                   for key, value in request.settings.items() if value.WhichOneof("parameter_choice")}
        settings = self.service.logs.update(changes) if changes else self.service.logs.get()
        response = message("LogSettingsResponse")()
        for key, value in settings.items():
            setattr(response.settings[key], _LOG_SETTING_FIELD[type(value)], value)
        return response

    async def ModelInfer(self, received, context):
        """`received`: the message and views of its raw contents (`wire.split_raw_inputs`). The answer is
        serialized here, each output written once into it."""
        request, raw = received
        response = await self.service.inference.infer(self._decoded(request, context, raw))
        if sum(tensor.data.nbytes for tensor in response.outputs) < wire.IN_PLACE_FROM:
            return codec.encode_infer(response)
        raw_outputs: list = []
        rest = codec.encode_infer(response, raw_outputs).SerializeToString()
        return wire.with_raw_outputs(rest, raw_outputs)

    def _decoded(self, request, context, raw: list | None = None) -> InferRequest:
        decoded = codec.decode_infer(request, raw)
        if self.service.tracing.on:  # the one check an untraced server pays
            decoded.traceparent = dict(context.invocation_metadata() or ()).get("traceparent", "")
        return decoded

    async def ModelStreamInfer(self, requests, context):
        """Each request runs as it arrives. As in Triton, the answers to a plain model's requests go back
        in the order the requests came, and a generation model's (decoupled) responses as they come, one
        per step of new tokens. An error message carries its request's id; a stream started with the
        metadata `triton_grpc_error: true` ends at its first error instead, with that error's status."""
        answers = StreamAnswers()
        stream_request, stream_response = message("ModelInferRequest"), message("ModelStreamInferResponse")
        metadata = dict(context.invocation_metadata() or ())
        end_at_error = metadata.get("triton_grpc_error", "").lower() == "true"

        def failed(status: grpc.StatusCode, text: str, request_id: str) -> tuple:
            answered = codec.ModelInferResponse(id=request_id)
            return stream_response(error_message=text, infer_response=answered), status

        async def answer(request, place: asyncio.Future | None):
            try:
                async for result in self.service.inference.infer_stream(self._decoded(request, context)):
                    answers.deliver((stream_response(infer_response=codec.encode_infer(result)), None), place)
            except ServerError as error:
                answers.deliver(failed(STATUS[error.code], error.message, request.id), place)
            except Exception as error:
                log.exception("ModelStreamInfer request failed")
                text = f"{type(error).__name__}: {error}"
                answers.deliver(failed(grpc.StatusCode.INTERNAL, text, request.id), place)
            finally:
                if place is None:
                    answers.done_out_of_order()

        async def read():
            running = set()
            try:
                async for data in requests:
                    try:
                        request = _parse(stream_request, data)
                    except ServerError as error:
                        place = await answers.admit(in_order=True)
                        answers.deliver(failed(STATUS[error.code], error.message, ""), place)
                        continue
                    plain = not self.service.inference.decoupled(request.model_name, request.model_version)
                    task = asyncio.create_task(answer(request, await answers.admit(in_order=plain)))
                    running.add(task)
                    task.add_done_callback(running.discard)
                await asyncio.gather(*running)
            finally:
                answers.close()

        reader = asyncio.create_task(read())
        try:
            while (item := await answers.next()) is not None:
                response, status = item
                if status is not None and end_at_error:
                    await context.abort(status, response.error_message)
                try:
                    await context.write(response)
                except Exception:  # grpc's own error type: the call has ended
                    log.info("ModelStreamInfer ended before an answer could be sent: the client cancelled "
                             "the call or went away")
                    context.set_code(grpc.StatusCode.CANCELLED)
                    return
        finally:
            reader.cancel()


def _parse(message_type, data: bytes):
    try:
        return message_type.FromString(data)
    except DecodeError as error:
        name = message_type.DESCRIPTOR.name
        raise InvalidArgument(f"malformed {name} protobuf: {error}") from None


def _parse_infer(message_type, data: bytes):
    """A ModelInferRequest without its raw contents, and views of them in the received bytes (a small
    one whole, and None)."""
    if len(data) < wire.IN_PLACE_FROM:
        return _parse(message_type, data), None
    rest, raw = wire.split_raw_inputs(data)
    return _parse(message_type, rest), raw


def _unary(method, request_type: str, access_log: bool, parse=_parse):
    message_type = message(request_type)
    name = request_type.removesuffix("Request")

    async def handle(data: bytes, context):
        started, status = time.perf_counter(), "OK"
        try:
            return await method(parse(message_type, data), context)
        except ServerError as error:
            status = STATUS[error.code].name
            await context.abort(STATUS[error.code], error.message)
        except Exception as error:
            status = "INTERNAL"
            log.exception("%s failed", request_type)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
        finally:
            if access_log:
                access.record("grpc", "rpc", name, status, started, context.peer())

    return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=None,
                                               response_serializer=_serialized)


def _stream(method, access_log: bool):
    """A stream's handler, with one access log line once it ends: its status and how long it lasted."""
    async def handle(requests, context):
        started, client, status = time.perf_counter(), context.peer(), None
        try:
            await method(requests, context)
        except asyncio.CancelledError:
            status = grpc.StatusCode.CANCELLED
            raise
        finally:
            if access_log:
                status = status or context.code() or grpc.StatusCode.OK
                access.record("grpc", "rpc", "ModelStreamInfer", status.name, started, client)

    return grpc.stream_stream_rpc_method_handler(handle, response_serializer=_serialized)


def _serialized(answer) -> bytes:
    return answer if isinstance(answer, bytes) else answer.SerializeToString()


def handlers(service: GrpcInferenceService, access_log: bool = True) -> grpc.GenericRpcHandler:
    unary = {
        "ServerLive": "ServerLiveRequest",
        "ServerReady": "ServerReadyRequest",
        "ModelReady": "ModelReadyRequest",
        "ServerMetadata": "ServerMetadataRequest",
        "ModelMetadata": "ModelMetadataRequest",
        "ModelConfig": "ModelConfigRequest",
        "ModelStatistics": "ModelStatisticsRequest",
        "RepositoryIndex": "RepositoryIndexRequest",
        "RepositoryModelLoad": "RepositoryModelLoadRequest",
        "RepositoryModelUnload": "RepositoryModelUnloadRequest",
        "SystemSharedMemoryStatus": "SystemSharedMemoryStatusRequest",
        "SystemSharedMemoryRegister": "SystemSharedMemoryRegisterRequest",
        "SystemSharedMemoryUnregister": "SystemSharedMemoryUnregisterRequest",
        "CudaSharedMemoryStatus": "CudaSharedMemoryStatusRequest",
        "CudaSharedMemoryRegister": "CudaSharedMemoryRegisterRequest",
        "CudaSharedMemoryUnregister": "CudaSharedMemoryUnregisterRequest",
        "TraceSetting": "TraceSettingRequest",
        "LogSettings": "LogSettingsRequest",
    }
    methods = {name: _unary(getattr(service, name), request, access_log) for name, request in unary.items()}
    methods["ModelInfer"] = _unary(service.ModelInfer, "ModelInferRequest", access_log, _parse_infer)
    methods["ModelStreamInfer"] = _stream(service.ModelStreamInfer, access_log)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)


def channel_options(max_message_bytes: int, keepalive) -> list[tuple[str, int]]:
    return [
        ("grpc.so_reuseport", 0),  # a second server on the port must fail, not share it
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", -1),  # the limit guards what clients send; answers go whole
        ("grpc.keepalive_time_ms", keepalive.time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(keepalive.permit_without_calls)),
        ("grpc.http2.max_pings_without_data", keepalive.max_pings_without_data),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", keepalive.min_recv_ping_interval_ms),
        ("grpc.http2.max_ping_strikes", keepalive.max_ping_strikes),
    ]


class _Restricted(grpc.aio.ServerInterceptor):
    """Restricted API groups on gRPC: a call without the group's metadata gets UNAVAILABLE, as Triton's."""

    def __init__(self, restrictions: Restrictions):
        self.restrictions = restrictions

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        group = grpc_group(details.method)
        if handler is None or group not in self.restrictions.rules:
            return handler
        metadata = {key.lower(): value for key, value in details.invocation_metadata or ()}
        refusal = self.restrictions.refusal(group, metadata)
        if refusal is None:
            return handler

        async def deny(_, context):
            await context.abort(grpc.StatusCode.UNAVAILABLE, refusal)

        kind = next(k for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
                    if getattr(handler, k) is not None)
        return getattr(grpc, f"{kind}_rpc_method_handler")(
            deny, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _Health(health_pb2_grpc.HealthServicer):
    """grpc.health.v1: SERVING while the server is ready, for "" and the inference service."""

    def __init__(self, service: Service):
        self.service = service

    async def Check(self, request, context):
        if request.service not in ("", SERVICE_NAME):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{request.service}'")
        serving = health_pb2.HealthCheckResponse.SERVING
        status = serving if self.service.health.ready() else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)


def create_server(
    service: Service,
    options,
    access_log: bool = True,
    restrictions: Restrictions = NO_RESTRICTIONS,
) -> grpc.aio.Server:
    """A grpc.aio server with the inference and the standard health services; no port yet."""
    interceptors = [_Restricted(restrictions)] if restrictions.rules else []
    server = grpc.aio.server(options=options, interceptors=interceptors)
    server.add_generic_rpc_handlers((handlers(GrpcInferenceService(service), access_log),))
    health_pb2_grpc.add_HealthServicer_to_server(_Health(service), server)
    return server
