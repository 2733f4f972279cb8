"""KServe v2 core routes besides inference: health, server and model metadata, Triton's model
configuration and statistics extensions."""

from fastapi import APIRouter
from fastapi.responses import Response

from server.api.http.context import Served
from server.protocol.model_config import to_json

router = APIRouter()


def _status(ok: bool) -> Response:
    return Response(status_code=200 if ok else 400)


@router.get("/v2/health/live")
async def live(service: Served):
    return _status(service.health.live)


@router.get("/v2/health/ready")
async def ready(service: Served):
    return _status(service.health.ready())


@router.get("/v2")
async def server_metadata(service: Served):
    return service.health.server_metadata()


@router.get("/v2/models/stats")
async def all_statistics(service: Served):
    return {"model_stats": service.statistics.statistics()}


@router.get("/v2/models/{model}")
@router.get("/v2/models/{model}/versions/{version}")
async def model_metadata(service: Served, model: str, version: str = ""):
    return service.repository.model_metadata(model, version)


@router.get("/v2/models/{model}/ready")
@router.get("/v2/models/{model}/versions/{version}/ready")
async def model_ready(service: Served, model: str, version: str = ""):
    return _status(service.repository.model_ready(model, version))


@router.get("/v2/models/{model}/config")
@router.get("/v2/models/{model}/versions/{version}/config")
async def model_config(service: Served, model: str, version: str = ""):
    return to_json(service.repository.model_config(model, version))


@router.get("/v2/models/{model}/stats")
@router.get("/v2/models/{model}/versions/{version}/stats")
async def model_statistics(service: Served, model: str, version: str = ""):
    return {"model_stats": service.statistics.statistics(model, version)}
