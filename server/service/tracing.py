"""Triton's trace extension: the global and per-model trace settings, read and updated."""

from server.core.errors import NotFound
from server.repository.registry import ModelRegistry
from server.tracing.spans import Tracer


class TraceService:
    def __init__(self, registry: ModelRegistry, tracer: Tracer):
        self.registry, self.tracer = registry, tracer

    @property
    def on(self) -> bool:
        """Whether any request may be traced: front ends read a request's `traceparent` only then."""
        return self.tracer.settings.on

    def get(self, model: str = "") -> dict:
        self._check(model)
        return self.tracer.settings.get(model)

    def update(self, model: str, changes: dict) -> dict:
        self._check(model)
        return self.tracer.settings.update(model, changes)

    def _check(self, model: str) -> None:
        if model and not self.registry.knows(model):
            raise NotFound(f"Request for unknown model: '{model}' is not found")
