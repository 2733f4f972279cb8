"""Triton's statistics extension, and the served models the metrics endpoint reads."""

from server.core.errors import InvalidArgument
from server.repository.model import ModelVersion
from server.repository.registry import ModelRegistry

_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
              "cache_miss")


class StatisticsService:
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def statistics(self, name: str = "", version: str = "") -> list[dict]:
        """One `ModelStatistics` (as a dict) per model version: every ready one, a model's, or one."""
        if name and version:
            if not self.registry.is_ready(name, version):
                self.registry.get(name)  # an unknown model is refused as such
                raise InvalidArgument(f"requested model version is not available for model '{name}'")
            models = [self.registry.get(name, version)]
        elif name:
            self.registry.get(name)
            models = [m for m in self.registry.ready_models() if m.name == name]
        else:
            models = self.registry.ready_models()
        return [_statistics(model) for model in models]

    def served_models(self) -> list[ModelVersion]:
        """The ready model versions, whose `stats` (and generation engines, sequence schedulers and text
        services) the metrics endpoint reads."""
        return self.registry.ready_models()

    def load_seconds(self, name: str) -> float:
        return self.registry.load_seconds.get(name, 0.0)


def _statistics(model: ModelVersion) -> dict:
    stats = model.stats

    def duration(d):
        return {"count": d.count, "ns": d.ns}

    return {
        "name": model.name,
        "version": str(model.version),
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {key: duration(getattr(stats, key)) for key in _DURATIONS},
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": duration(batch.compute_input),
                "compute_infer": duration(batch.compute_infer),
                "compute_output": duration(batch.compute_output),
            }
            for size, batch in sorted(stats.batches.items())
        ],
    }
