"""Triton's trace extension (`/v2/trace/setting`, per model `/v2/models/{model}/trace/setting`) and
logging extension (`/v2/logging`)."""

from fastapi import APIRouter

from server.api.http.context import Json, Served

router = APIRouter()


@router.get("/v2/trace/setting")
@router.get("/v2/models/{model}/trace/setting")
async def trace_setting(service: Served, model: str = ""):
    return service.tracing.get(model)


@router.post("/v2/trace/setting")
@router.post("/v2/models/{model}/trace/setting")
async def update_trace_setting(service: Served, body: Json, model: str = ""):
    return service.tracing.update(model, body)


@router.get("/v2/logging")
async def log_settings(service: Served):
    return service.logs.get()


@router.post("/v2/logging")
async def update_log_settings(service: Served, body: Json):
    return service.logs.update(body)
