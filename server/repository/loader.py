"""Loads one model directory of a Triton repository into ready ModelVersions."""

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from server.batching.batcher import BatchPolicy
from server.batching.collate import Padding
from server.batching.ragged import Ragged
from server.core import datatypes
from server.core.validation import InputLimits
from server.encoding.encoder import TextService
from server.encoding.settings import TextSettings
from server.generation.decoder import make_decoder
from server.generation.graph import DecoderGraphError
from server.generation.interface import GENERATION_INTERFACE
from server.generation.settings import GenerationSettings
from server.protocol import ModelConfig, enum, model_config
from server.protocol.model_config import ConfigError
from server.repository import config as cfg
from server.repository.ensemble import ensemble_steps, is_ensemble
from server.repository.model import ModelVersion
from server.runtime.executor import DEFAULT_INLINE_EXECUTION_US, InstancePool
from server.runtime.session import OrtSession, SessionSettings, gpu_available
from server.runtime.shapes import OutputShapes
from server.sequences.settings import check_graph, sequence_settings

log = logging.getLogger(__name__)

_KIND = enum("ModelInstanceGroup.Kind")
CUDNN_CONV_ALGO_SEARCH = {"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"}


def available_versions(model_dir: Path, config: ModelConfig) -> list[int]:
    """Version directories as Triton reads them: positive integers written without a leading zero (an
    ensemble's are empty; a model's hold its file)."""
    filename = config.default_model_filename or cfg.DEFAULT_MODEL_FILENAME
    ensemble = is_ensemble(config)
    versions = []
    for entry in model_dir.iterdir():
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        if not entry.name.isdigit() or entry.name.startswith("0"):
            log.warning("model '%s': ignoring directory '%s': a version is a positive integer without a "
                        "leading zero", model_dir.name, entry.name)
        elif ensemble or (entry / filename).exists():
            versions.append(int(entry.name))
    return sorted(versions)


def select_versions(model_dir: Path, config: ModelConfig) -> list[int]:
    found = available_versions(model_dir, config)
    policy = config.version_policy.WhichOneof("policy_choice")
    if policy == "all":
        chosen = found
    elif policy == "specific":
        wanted = sorted(config.version_policy.specific.versions)
        chosen = [v for v in wanted if v in found]
        missing = [v for v in wanted if v not in found]
        if missing:  # as Triton: the versions that exist serve, the index reports the others
            log.warning("model '%s': version_policy names versions %s that have no model file",
                        model_dir.name, missing)
    else:
        latest = config.version_policy.latest.num_versions or 1
        chosen = found[-latest:]
    if not chosen and is_ensemble(config):
        raise ConfigError("an ensemble needs a version directory, empty (such as '1/')")
    if not chosen:
        filename = config.default_model_filename or cfg.DEFAULT_MODEL_FILENAME
        raise ConfigError(f"no version directory holds a '{filename}' file")
    return chosen


def load_model(model_dir: Path, config_json: str | None = None) -> list[ModelVersion]:
    """Every version of the model chosen by its version policy, ready to serve.

    `config_json` replaces config.pbtxt, as the config parameter of Triton's load request does.
    """
    config = cfg.config_from_json(config_json, model_dir) if config_json else cfg.read_config(model_dir)
    cfg.check_platform(config)
    if is_ensemble(config):
        return _ensemble(model_dir, config)
    generation = _generation(model_dir, config)
    filename = config.default_model_filename or cfg.DEFAULT_MODEL_FILENAME
    instances = _instance_settings(config)
    sequences = sequence_settings(config, model_dir, len(instances))
    text = _text_settings(model_dir, config)
    if config.response_cache.enable and (generation or sequences):
        raise ConfigError("response_cache cannot serve a " + ("generation" if generation else "stateful")
                          + " model: its answers depend on more than a request's inputs")
    loaded = []
    try:
        for version in select_versions(model_dir, config):
            path = model_dir / str(version) / filename
            sessions = [OrtSession(path, settings) for settings in instances[: 1 if generation else None]]
            busy = [] if generation else [OrtSession(path, s) for s in _busy_settings(config, instances)]
            ragged = _ragged(config, sessions[0], sequences)
            if generation:
                _check_decoder(sessions[0], generation)
            else:
                cfg.complete(config, sessions[0].graph_inputs(), sessions[0].graph_outputs())
            if sequences is not None:
                check_graph(sequences, sessions[0].graph_inputs(), sessions[0].graph_outputs())
            model = _model_version(model_dir, version, config, sessions, busy or None)
            model.generation, model.sequences = generation, sequences
            model.ragged = ragged
            if text is not None:
                model.text = _text_service(model, text)
            loaded.append(model)
            _warm_up(model_dir, model)
    except BaseException:
        for model in loaded:
            model.pool.close()
        raise
    return loaded


def _ensemble(model_dir: Path, config: ModelConfig) -> list[ModelVersion]:
    steps = ensemble_steps(config)
    inputs, outputs = cfg.tensor_specs(config, config.input), cfg.tensor_specs(config, config.output)
    return [ModelVersion(config.name, version, config, inputs, outputs, pool=None, ensemble=steps)
            for version in select_versions(model_dir, config)]


def _model_version(model_dir, version, config, sessions, busy_sessions=None) -> ModelVersion:
    reshaped = any(t.HasField("reshape") for t in [*config.input, *config.output])
    return ModelVersion(
        name=config.name,
        version=version,
        config=config,
        inputs=cfg.tensor_specs(config, config.input),
        outputs=cfg.tensor_specs(config, config.output),
        pool=InstancePool(sessions, name=f"{config.name}-{version}", busy_sessions=busy_sessions,
                          inline_execution_us=_inline_execution_us(config)),
        labels=_labels(model_dir, config),
        padding=_padding(config),
        policy=_batch_policy(config, sessions),
        limits=_limits(config),
        input_reshapes={t.name: tuple(t.reshape.shape) for t in config.input if t.HasField("reshape")},
        output_reshapes={t.name: tuple(t.dims) for t in config.output if t.HasField("reshape")},
        output_shapes=OutputShapes({}) if reshaped else sessions[0].output_shapes(),
    )


def _generation(model_dir: Path, config: ModelConfig) -> GenerationSettings | None:
    """Decoupled models are decoders served by the generation engine, with the generation interface
    (text_input/input_ids in, text_output/output_ids out) when the config leaves it out."""
    if not config.model_transaction_policy.decoupled:
        return None
    if not config.input and not config.output:
        text_format.Merge(GENERATION_INTERFACE, config)
    config.max_batch_size = 0
    if not config.instance_group:
        config.instance_group.add(count=1)
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    try:
        return GenerationSettings.from_parameters(parameters, model_dir)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _text_settings(model_dir: Path, config: ModelConfig) -> TextSettings | None:
    try:
        return TextSettings.from_parameters(
            {key: value.string_value for key, value in config.parameters.items()}, model_dir
        )
    except ValueError as error:
        raise ConfigError(f"text parameters: {error}") from None


def _text_service(model: ModelVersion, settings: TextSettings) -> TextService:
    try:
        labels = model.labels.get(settings.output, [])
        return TextService(model.name, settings, model.inputs, model.outputs, model.stats.text, labels)
    except ValueError as error:
        raise ConfigError(f"text parameters: {error}") from None
    except Exception as error:  # the tokenizer file does not parse
        raise ConfigError(f"text_tokenizer '{settings.tokenizer.name}' cannot be loaded: {error}") from None


def _check_decoder(session: OrtSession, settings: GenerationSettings) -> None:
    try:
        make_decoder(session.session, head_dim=settings.kv_head_dim)
    except DecoderGraphError as error:
        raise ConfigError(str(error)) from None


def _ragged(config: ModelConfig, session: OrtSession, sequences) -> Ragged | None:
    try:
        ragged = Ragged.from_config(config)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if ragged is None:
        return None
    if sequences is not None:
        raise ConfigError("ragged batching is for the dynamic batcher; a sequence batcher model cannot "
                          "use it")
    graph_inputs = {tensor.name for tensor in session.graph_inputs()}
    missing = sorted(ragged.targets - graph_inputs)
    if missing:
        raise ConfigError(f"batch_input target {', '.join(missing)} is not an input of the model, whose "
                          f"inputs are {', '.join(sorted(graph_inputs))}")
    return ragged


def _batch_policy(config: ModelConfig, sessions: list[OrtSession]) -> BatchPolicy:
    try:
        return BatchPolicy.from_config(config, on_gpu=any(session.device == "gpu" for session in sessions))
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _padding(config: ModelConfig) -> Padding | None:
    try:
        return Padding.from_parameters({k: v.string_value for k, v in config.parameters.items()})
    except ValueError as error:
        raise ConfigError(f"padding parameters (pad_inputs, pad_outputs, pad_buckets): {error}") from None


def _limits(config: ModelConfig) -> InputLimits:
    try:
        return InputLimits.from_parameters({k: v.string_value for k, v in config.parameters.items()})
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _busy_settings(config: ModelConfig, instances: list[SessionSettings]) -> list[SessionSettings]:
    """busy_intra_op_thread_count: each instance's second session, run while other executions run."""
    value = model_config.parameter(config, "busy_intra_op_thread_count", "")
    if not value:
        return []
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"parameter busy_intra_op_thread_count must be an integer >= 1, got '{value}'")
    if len(instances) < 2:
        raise ConfigError("parameter busy_intra_op_thread_count needs an instance_group of 2 or more "
                          "instances: with one, no execution runs beside another")
    return [replace(settings, intra_op_threads=int(value)) for settings in instances]


def _inline_execution_us(config: ModelConfig) -> int:
    """inline_execution_us: executions shorter than this run on the event loop's thread (0: never)."""
    value = model_config.parameter(config, "inline_execution_us", str(DEFAULT_INLINE_EXECUTION_US))
    if not value.isdigit():
        raise ConfigError(f"parameter inline_execution_us must be an integer >= 0 (0: never), got '{value}'")
    return int(value)


def _instance_settings(config: ModelConfig) -> list[SessionSettings]:
    """One SessionSettings per instance; threads are split so N instances do not oversubscribe."""
    total = sum(group.count or 1 for group in config.instance_group) or 1
    default_threads = 0 if total == 1 else max(1, (os.cpu_count() or 1) // total)
    intra = int(model_config.parameter(config, "intra_op_thread_count", str(default_threads)))
    inter = int(model_config.parameter(config, "inter_op_thread_count", "0"))
    mode = model_config.parameter(config, "execution_mode", "0")
    spinning = model_config.parameter(config, "allow_spinning", "0") in ("1", "true")
    algo_search = _cudnn_conv_algo_search(config)
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    tensorrt = any(acc.name == "tensorrt" for acc in accelerators)
    settings = []
    for group in config.instance_group or [None]:
        kind = _KIND.values_by_number[group.kind].name if group else "KIND_AUTO"
        device = "gpu" if kind == "KIND_GPU" or (kind == "KIND_AUTO" and gpu_available()) else "cpu"
        gpus = list(group.gpus) if group and group.gpus else [0]
        count = (group.count if group else 1) or 1
        for index in range(count):
            settings.append(
                SessionSettings(
                    device=device,
                    device_id=gpus[index % len(gpus)],
                    tensorrt=tensorrt,
                    intra_op_threads=intra,
                    inter_op_threads=inter,
                    execution_mode=mode,
                    graph_level=config.optimization.graph.level,
                    allow_spinning=spinning,
                    cudnn_conv_algo_search=algo_search,
                )
            )
    return settings


def _cudnn_conv_algo_search(config: ModelConfig) -> str:
    """Triton's parameter: 0 exhaustive (the default), 1 heuristic, 2 the default algorithm."""
    value = model_config.parameter(config, "cudnn_conv_algo_search", "0")
    if value not in CUDNN_CONV_ALGO_SEARCH:
        raise ConfigError(f"parameter cudnn_conv_algo_search must be 0 (exhaustive), 1 (heuristic) or 2 "
                          f"(default algorithm), got '{value}'")
    return CUDNN_CONV_ALGO_SEARCH[value]


def _labels(model_dir: Path, config: ModelConfig) -> dict[str, list[str]]:
    labels = {}
    for output in config.output:
        if output.label_filename:
            path = model_dir / output.label_filename
            if not path.exists():
                raise ConfigError(
                    f"label file '{output.label_filename}' of output '{output.name}' is missing"
                )
            labels[output.name] = path.read_text().splitlines()
    return labels


def _warm_up(model_dir: Path, model: ModelVersion) -> None:
    for warmup in model.config.model_warmup:
        feeds = {}
        for name, spec in warmup.inputs.items():
            datatype = datatypes.from_config(model_config.data_type_name(spec.data_type))
            shape = ((warmup.batch_size or 1),) if model.batching else ()
            shape += tuple(spec.dims)
            feeds[name] = _warmup_data(model_dir, spec, datatype, shape)
        names = [output.name for output in model.outputs]
        for session in model.pool.sessions:
            for _ in range(warmup.count or 1):
                try:
                    session.run(model.graph_feeds(feeds), names)
                except Exception as error:
                    raise ConfigError(f"warmup '{warmup.name}' failed: {error}") from None
        log.info("model '%s' version %d warmed up with '%s'", model.name, model.version, warmup.name)


def _warmup_data(model_dir: Path, spec, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    dtype = datatypes.numpy_dtype(datatype)
    source = spec.WhichOneof("input_data_type")
    if datatype == "BYTES":
        return np.full(shape, b"" if source != "random_data" else b"warmup", dtype=object)
    if source == "random_data":
        return np.random.default_rng(0).integers(0, 2, size=shape).astype(dtype)
    if source == "input_data_file":
        path = model_dir / "warmup" / spec.input_data_file
        return model_config.read_data_file(path, dtype, shape, "warmup data file")
    return np.zeros(shape, dtype=dtype)
