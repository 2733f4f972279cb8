"""`Service`: the application services over one model registry, as the front ends receive them."""

from dataclasses import dataclass

from server.core.shared_memory import SharedMemory
from server.repository.registry import ModelRegistry
from server.service.generation import GenerationService
from server.service.health import HealthService
from server.service.inference import InferenceService
from server.service.logs import LogService
from server.service.repository import RepositoryService
from server.service.response_cache import ResponseCache
from server.service.statistics import StatisticsService
from server.service.text import EncodingService
from server.service.tracing import TraceService
from server.tracing.settings import TraceSetting, TraceSettings
from server.tracing.spans import Tracer


@dataclass
class Service:
    health: HealthService
    inference: InferenceService
    generation: GenerationService
    text: EncodingService
    repository: RepositoryService
    statistics: StatisticsService
    shared_memory: SharedMemory
    tracing: TraceService
    logs: LogService

    @classmethod
    def over(cls, registry: ModelRegistry, strict_readiness: bool = True, min_ready_models: int = 0,
             tracer: Tracer | None = None, logs: LogService | None = None, cache_bytes: int = 0) -> "Service":
        """`cache_bytes`: the response cache's size (0: none)."""
        tracer = tracer or Tracer(TraceSettings(TraceSetting()))
        shared_memory, generation = SharedMemory(), GenerationService(registry, tracer)
        return cls(
            health=HealthService(registry, strict_readiness, min_ready_models),
            inference=InferenceService(registry, shared_memory, generation, tracer,
                                       ResponseCache(cache_bytes) if cache_bytes else None),
            generation=generation,
            text=EncodingService(registry),
            repository=RepositoryService(registry),
            statistics=StatisticsService(registry),
            shared_memory=shared_memory,
            tracing=TraceService(registry, tracer),
            logs=logs or LogService(),
        )
