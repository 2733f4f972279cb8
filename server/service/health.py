"""Liveness, readiness and the server's metadata."""

from server.repository.registry import ModelRegistry
from server.version import server_version

EXTENSIONS = (
    "classification",
    "schedule_policy",
    "model_repository",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "sequence",
    "system_shared_memory",
    "cuda_shared_memory",
)


class HealthService:
    def __init__(self, registry: ModelRegistry, strict_readiness: bool = True):
        self.registry = registry
        self.strict_readiness = strict_readiness
        self.live = True
        self.name = "ortserve"
        self.version = server_version()

    def ready(self) -> bool:
        return self.live and (self.registry.all_ready() or not self.strict_readiness)

    def server_metadata(self) -> dict:
        return {"name": self.name, "version": self.version, "extensions": list(EXTENSIONS)}
