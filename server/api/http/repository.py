"""Triton's model repository extension: the index, loads (with config and file overrides) and unloads."""

from fastapi import APIRouter
from fastapi.responses import Response

from server.api.http import codec
from server.api.http.context import Json, Served
from server.core.errors import InvalidArgument
from server.core.fields import boolean
from server.core.types import LOAD_FILE_PREFIX

router = APIRouter()


@router.post("/v2/repository/index")
async def repository_index(service: Served, body: Json):
    ready_only = boolean(body.get("ready"), "'ready'", False)
    return [
        {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
        for e in service.repository.index(ready_only)
    ]


@router.post("/v2/repository/models/{model}/load")
async def load(service: Served, body: Json, model: str):
    await service.repository.load(model, load_parameters(body))
    return Response(status_code=200)


@router.post("/v2/repository/models/{model}/unload")
async def unload(service: Served, body: Json, model: str):
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidArgument("'parameters' of an unload request must be a JSON object")
    dependents = boolean(parameters.get("unload_dependents"), "'unload_dependents'", False)
    await service.repository.unload(model, dependents)
    return Response(status_code=200)


def load_parameters(body: dict) -> dict:
    """A load request's `parameters`, its `file:<path>` entries decoded from base64."""
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidArgument("'parameters' of a load request must be a JSON object")
    return {key: codec.base64_value(f"load parameter '{key}'", value) if key.startswith(LOAD_FILE_PREFIX)
            else value for key, value in parameters.items()}
