"""Triton's model repository and model configuration extensions: the index, loads and unloads, and each
model's metadata, readiness and config."""

from server.core.errors import InvalidArgument
from server.core.types import LOAD_FILE_PREFIX, ModelIndexEntry, TensorSpec
from server.encoding.encoder import TEXT_INPUTS
from server.protocol import ModelConfig
from server.repository.registry import ModelRegistry


class RepositoryService:
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        return self.registry.index(ready_only)

    async def load(self, name: str, parameters: dict) -> None:
        """A load request's parameters, as the front end decoded them: `config` (a ModelConfig in JSON)
        and `file:<path>` entries holding the files' bytes."""
        config = parameters.get("config")
        if config is not None and not isinstance(config, str):
            raise InvalidArgument("load parameter 'config' must be a string holding a model config")
        files = {key: value for key, value in parameters.items() if key.startswith(LOAD_FILE_PREFIX)}
        for key, value in files.items():
            if not isinstance(value, bytes):
                raise InvalidArgument(f"load parameter '{key}' must hold the file's bytes (base64 over "
                                      "HTTP, bytes_param over gRPC)")
        await self.registry.load(name, config, files)

    async def unload(self, name: str, dependents: bool = False) -> None:
        await self.registry.unload(name, dependents)

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.registry.is_ready(name, version)

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        return self.registry.get(name, version).config

    def model_metadata(self, name: str, version: str = "") -> dict:
        model = self.registry.get(name, version)
        versions = sorted(m.version for m in self.registry.ready_models() if m.name == name)
        text_inputs = []
        if model.text is not None:  # accepted in place of the token inputs
            names = TEXT_INPUTS if model.text.settings.task == "classify" else TEXT_INPUTS[:1]
            shape = [-1, 1] if model.batching else [-1]
            text_inputs = [{"name": n, "datatype": "BYTES", "shape": shape} for n in names]
        return {
            "name": name,
            "versions": [str(v) for v in versions],
            "platform": model.config.platform,
            "inputs": [_tensor_metadata(spec) for spec in model.inputs] + text_inputs,
            "outputs": [_tensor_metadata(spec) for spec in model.outputs],
        }


def _tensor_metadata(spec: TensorSpec) -> dict:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}
