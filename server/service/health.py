"""Liveness, readiness and the server's metadata."""

from server.repository.registry import ModelRegistry
from server.version import server_version

EXTENSIONS = (
    "classification",
    "schedule_policy",
    "model_repository",
    "model_repository(unload_dependents)",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "sequence",
    "system_shared_memory",
    "cuda_shared_memory",
    "trace",
    "logging",
)


class HealthService:
    def __init__(self, registry: ModelRegistry, strict_readiness: bool = True, min_ready_models: int = 0):
        self.registry = registry
        self.strict_readiness = strict_readiness
        self.min_ready_models = min_ready_models
        self.live = True
        self.name = "ortserve"
        self.version = server_version()

    def ready(self) -> bool:
        """Triton's readiness: live, and (strict) every model it serves ready; with ortserve's
        `--min-ready-models`, also at least that many ready models."""
        enough = self.min_ready_models == 0 or self.registry.ready_count() >= self.min_ready_models
        return self.live and enough and (self.registry.all_ready() or not self.strict_readiness)

    def server_metadata(self) -> dict:
        return {"name": self.name, "version": self.version, "extensions": list(EXTENSIONS)}
