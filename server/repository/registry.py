"""The models of one repository, their load states, and load/unload under a control mode."""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from server.core.errors import InvalidArgument, NotFound, ServerError, Unavailable
from server.core.types import CONTROL_MODES, ModelIndexEntry
from server.protocol.model_config import ConfigError
from server.repository.config import CONFIG_FILE
from server.repository.ensemble import EnsembleStep, check_tensors
from server.repository.loader import load_model
from server.repository.model import ModelVersion
from server.repository.overrides import Override, file_path, write_files

log = logging.getLogger(__name__)

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"


@dataclass
class ModelEntry:
    state: str = UNAVAILABLE
    reason: str = "unloaded"
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    stamp: float = 0.0  # newest modification time seen in the model directory at load
    override: Override | None = None  # what the load request replaced; a later plain load keeps it


class ModelRegistry:
    def __init__(self, repository: Path, control_mode: str = "none", startup_models=()):
        if control_mode not in CONTROL_MODES:
            raise ValueError(f"model control mode must be one of {', '.join(CONTROL_MODES)}")
        self.repository = Path(repository)
        self.control_mode = control_mode
        self.startup_models = list(startup_models)
        self._models: dict[str, ModelEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._asked: set[str] = set()  # models loaded by name (a load request, a start), not for an ensemble
        self.load_seconds: dict[str, float] = {}

    async def start(self) -> None:
        if not self.repository.is_dir():
            raise FileNotFoundError(f"model repository '{self.repository}' is not a directory")
        if self.control_mode == "explicit":
            names = self._model_dirs() if "*" in self.startup_models else self.startup_models
        else:
            names = self._model_dirs()
        for name in names:
            if name not in self._models:  # an ensemble loaded before may have loaded it
                await self._load(name)
            self._asked.add(name)

    def _model_dirs(self) -> list[str]:
        return sorted(p.name for p in self.repository.iterdir() if p.is_dir() and not p.name.startswith("."))

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The ready model version asked for, else NotFound / Unavailable in Triton's words (ortserve's
        explanation after them)."""
        unknown = f"Request for unknown model: '{name}'"
        entry = self._models.get(name)
        if entry is None:
            if self._in_repository(name):  # as Triton: a model that is not loaded is unknown to the server
                raise NotFound(f"{unknown} is not found (it is in the repository but not loaded)")
            raise NotFound(f"{unknown} is not found")
        if version and not version.isdigit():
            raise InvalidArgument(f"model version must be a positive integer, got '{version}'")
        if entry.state != READY:
            if version:
                raise Unavailable(f"{unknown} version {version} is not at ready state "
                                  f"({entry.state.lower()}: {entry.reason})")
            raise NotFound(f"{unknown} has no available versions ({entry.state.lower()}: {entry.reason})")
        if not version:
            return entry.versions[max(entry.versions)]
        model = entry.versions.get(int(version))
        if model is None:
            ready = ", ".join(map(str, sorted(entry.versions)))
            raise NotFound(f"{unknown} version {version} is not found (ready versions: {ready})")
        return model

    def knows(self, name: str) -> bool:
        """Whether `name` is a model of the repository or loaded (ready or not)."""
        return name in self._models or self._in_repository(name)

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except (NotFound, Unavailable, InvalidArgument):
            return False
        return True

    def all_ready(self) -> bool:
        """Every model known is ready (none known: Triton's strict readiness holds, nothing failed)."""
        return all(entry.state == READY for entry in self._models.values())

    def failed(self) -> list[str]:
        """The models whose last load failed."""
        return [name for name, entry in self._models.items() if entry.state == UNAVAILABLE]

    def ready_count(self) -> int:
        return sum(entry.state == READY for entry in self._models.values())

    def ready_models(self) -> list[ModelVersion]:
        return [
            model
            for entry in self._models.values()
            if entry.state == READY
            for model in entry.versions.values()
        ]

    def index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        rows = []
        for name in sorted(set(self._model_dirs()) | set(self._models)):
            entry = self._models.get(name, ModelEntry())
            if entry.versions:
                rows += [
                    ModelIndexEntry(name, str(version), entry.state, entry.reason)
                    for version in sorted(entry.versions)
                ]
                why = "named by version_policy but has no model file"
                rows += [ModelIndexEntry(name, str(v), UNAVAILABLE, why) for v in _missing_versions(entry)]
            elif not ready_only:
                rows.append(ModelIndexEntry(name, "", entry.state, entry.reason))
        return [row for row in rows if row.state == READY or not ready_only]

    async def load(self, name: str, config_json: str | None = None, files: dict[str, bytes] | None = None):
        """Triton's load: `config_json` and `files` (`file:<path>` -> bytes) override the repository's for
        this load; a later load with neither keeps the last override, as Triton does."""
        self._require_explicit("load")
        if files and config_json is None:
            raise InvalidArgument(f"failed to load '{name}': file overrides need a 'config' override too")
        for key in files or {}:
            file_path(key)
        if not files and not self._in_repository(name):
            raise NotFound(f"failed to load '{name}', failed to poll from model repository (no model "
                           f"directory '{name}' in it)")
        override = None
        if files:
            override = Override(config_json, await asyncio.to_thread(write_files, name, files))
        elif config_json is not None:
            override = Override(config_json)
        elif name in self._models:
            override = self._models[name].override
        reason = await self._load(name, override)
        self._asked.add(name)
        if reason is not None:
            kept = " (the versions loaded before keep serving)" if self._models[name].state == READY else ""
            raise InvalidArgument(f"load failed for model '{name}': {reason}{kept}")

    async def unload(self, name: str, dependents: bool = False) -> None:
        """Triton's unload; with `dependents` (its `unload_dependents`) also the models an ensemble's steps
        run that were loaded with it, where no other loaded ensemble runs them."""
        self._require_explicit("unload")
        if name not in self._models and not self._in_repository(name):
            raise NotFound(f"failed to unload '{name}': no such model")
        steps = self._step_models(name)
        await self._unload(name)
        for step in sorted(steps) if dependents else ():
            if step in self._models and step not in self._asked and not self._run_by_ensembles(step):
                await self.unload(step, dependents=True)

    def _step_models(self, name: str) -> set[str]:
        entry = self._models.get(name)
        return {step.model for model in (entry.versions.values() if entry else ())
                for step in model.ensemble or ()}

    def _run_by_ensembles(self, name: str) -> bool:
        return any(name in self._step_models(other) for other in self._models)

    def _in_repository(self, name: str) -> bool:
        """Whether `name` is a model directory of the repository (never a path out of it)."""
        return name in self._model_dirs()

    def _require_explicit(self, action: str) -> None:
        if self.control_mode != "explicit":
            raise Unavailable(  # Triton's answer to load/unload outside explicit mode
                f"explicit model load / unload is not allowed if polling is enabled (model control mode "
                f"'{self.control_mode}'; start the server with --model-control-mode explicit to {action})"
            )

    async def poll(self) -> None:
        """Load new or changed model directories and unload removed ones (control mode poll)."""
        present = set(self._model_dirs())
        for name in sorted(set(self._models) - present):
            await self._unload(name)
        for name in sorted(present):
            entry = self._models.get(name)
            if entry is None or _stamp(self.repository / name) > entry.stamp:
                await self._load(name)

    async def close(self) -> None:
        for name in list(self._models):
            await self._unload(name)

    async def _load(self, name: str, override: Override | None = None) -> str | None:
        """Loads `name`, or reloads it: versions that serve keep serving until the new ones are ready,
        then requests switch to them at once while the old ones finish what they took; a reload that
        fails leaves them serving. Returns why the load failed, None when it did not."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            previous = self._models.get(name)
            serving = previous is not None and previous.state == READY
            if not serving:
                self._models[name] = ModelEntry(state=LOADING, reason="loading")
            model_dir = override.model_dir if override and override.model_dir else self.repository / name
            started = time.perf_counter()
            stamp = _stamp(self.repository / name)
            try:
                config_json = override.config_json if override else None
                versions = await asyncio.to_thread(load_model, model_dir, config_json)
                await self._load_steps(versions)
            except Exception as error:  # a model that fails to load must not stop the others
                reason = str(error) or type(error).__name__
                if override is not None and (previous is None or override is not previous.override):
                    override.discard()
                if serving:
                    log.error("failed to reload model '%s', its versions keep serving: %s", name, reason)
                    previous.reason, previous.stamp = f"reload failed: {reason}", stamp
                    return reason
                log.error("failed to load model '%s': %s", name, reason)
                self._models[name] = ModelEntry(UNAVAILABLE, reason, stamp=stamp)
                return reason
            self.load_seconds[name] = time.perf_counter() - started
            for model in versions:
                model.start()
            loaded = {model.version: model for model in versions}
            self._models[name] = ModelEntry(READY, "", loaded, stamp, override)
            if serving:
                await _stop(previous, drain=True)
            if previous is not None and previous.override not in (None, override):
                previous.override.discard()
            log.info(
                "%s model '%s' versions %s in %.2f s",
                "reloaded" if serving else "loaded",
                name,
                sorted(m.version for m in versions),
                self.load_seconds[name],
            )
            return None

    async def _load_steps(self, versions: list[ModelVersion]) -> None:
        """The models an ensemble's steps run, loaded first where they are not (as Triton loads them with
        it); the ensemble does not load while one of them cannot serve or does not fit its maps."""
        ensemble = versions[0] if versions else None  # its versions share one config
        if ensemble is None or ensemble.ensemble is None:
            return
        models = [await self._step_model(step) for step in ensemble.ensemble]
        check_tensors(ensemble.name, ensemble.inputs, ensemble.outputs, ensemble.ensemble,
                      [(model.inputs, model.outputs) for model in models])

    async def _step_model(self, step: EnsembleStep) -> ModelVersion:
        if step.model not in self._models and self._in_repository(step.model):
            await self._load(step.model)
        try:
            model = self.get(step.model, step.version)
        except ServerError as error:
            raise ConfigError(f"{step} cannot run: {error.message}") from None
        if model.sequences is not None:
            raise ConfigError(f"{step} runs a stateful model (sequence batching), which an ensemble step "
                              "cannot")
        return model

    async def _unload(self, name: str) -> None:
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self._models.get(name)
            if entry is None:
                return
            self._models[name] = ModelEntry(UNLOADING, "unloading")
            self._asked.discard(name)
            await _stop(entry, drain=True)
            if entry.override is not None:
                entry.override.discard()
            del self._models[name]
            log.info("unloaded model '%s'", name)


async def _stop(entry: ModelEntry, drain: bool = False) -> None:
    """Runs (`drain`) or fails the requests still queued, waits for running ones, frees the sessions."""
    for model in entry.versions.values():
        await model.stop(drain)
        if model.pool is not None:
            await asyncio.to_thread(model.pool.close)


def _missing_versions(entry: ModelEntry) -> list[int]:
    policy = next(iter(entry.versions.values())).config.version_policy
    if policy.WhichOneof("policy_choice") != "specific":
        return []
    return sorted(set(policy.specific.versions) - set(entry.versions))


def _stamp(model_dir: Path) -> float:
    paths = [model_dir, model_dir / CONFIG_FILE, *model_dir.glob("*/*")]
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)
