"""Triton's system and CUDA shared memory extensions: register, unregister and status of regions."""

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from server.api.http import codec
from server.api.http.context import Json, Served, body_of
from server.core.errors import InvalidArgument
from server.core.fields import integer

router = APIRouter()
OK = 200


def _count(body: dict, field: str, default: int | None = None) -> int:
    """A registration's offset, size or device: an integer >= 0."""
    return integer(body.get(field), f"shared memory '{field}'", default=default)


@router.get("/v2/systemsharedmemory/status")
@router.get("/v2/systemsharedmemory/region/{name}/status")
async def system_status(service: Served, name: str = ""):
    return service.shared_memory.system.status(name)


@router.post("/v2/systemsharedmemory/region/{name}/register")
async def system_register(service: Served, body: Json, name: str):
    key = body.get("key")
    if not isinstance(key, str):
        raise InvalidArgument("a shared memory registration needs 'key', the shared memory object's name")
    service.shared_memory.system.register(name, key, _count(body, "offset", 0), _count(body, "byte_size"))
    return Response(status_code=OK)


@router.post("/v2/systemsharedmemory/unregister", dependencies=[Depends(body_of)])
@router.post("/v2/systemsharedmemory/region/{name}/unregister", dependencies=[Depends(body_of)])
async def system_unregister(service: Served, name: str = ""):
    service.shared_memory.system.unregister(name)
    return Response(status_code=OK)


@router.get("/v2/cudasharedmemory/status")
@router.get("/v2/cudasharedmemory/region/{name}/status")
async def cuda_status(service: Served, name: str = ""):
    return service.shared_memory.cuda.status(name)


@router.post("/v2/cudasharedmemory/region/{name}/register")
async def cuda_register(service: Served, body: Json, name: str):
    raw_handle = body.get("raw_handle")
    if not isinstance(raw_handle, dict) or not isinstance(raw_handle.get("b64"), str):
        raise InvalidArgument(
            "a CUDA shared memory registration needs 'raw_handle': {\"b64\": the base64 of the "
            "cudaIpcMemHandle_t}"
        )
    handle = codec.base64_value("'raw_handle'", raw_handle["b64"])
    service.shared_memory.cuda.register(name, handle, _count(body, "device_id"), _count(body, "byte_size"))
    return Response(status_code=OK)


@router.post("/v2/cudasharedmemory/unregister", dependencies=[Depends(body_of)])
@router.post("/v2/cudasharedmemory/region/{name}/unregister", dependencies=[Depends(body_of)])
async def cuda_unregister(service: Served, name: str = ""):
    service.shared_memory.cuda.unregister(name)
    return Response(status_code=OK)
