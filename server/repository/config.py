"""config.pbtxt: Triton's text-format ModelConfig, read, completed from the ONNX graph and checked."""

from pathlib import Path

from google.protobuf import json_format, text_format

from server.core import datatypes
from server.core.types import GraphTensor, TensorSpec
from server.protocol import ModelConfig, enum
from server.protocol.model_config import ConfigError, data_type_name
from server.repository.ensemble import ENSEMBLE_PLATFORM, is_ensemble

CONFIG_FILE = "config.pbtxt"
DEFAULT_MODEL_FILENAME = "model.onnx"
DEFAULT_MAX_BATCH_SIZE = 4
ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"
_DATA_TYPE = enum("DataType")


def read_config(model_dir: Path) -> ModelConfig:
    path = model_dir / CONFIG_FILE
    return parse_config(path.read_text() if path.exists() else "", model_dir)


def parse_config(text: str, model_dir: Path) -> ModelConfig:
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ConfigError(f"{CONFIG_FILE}: {error}") from None
    return _named(config, model_dir)


def config_from_json(text: str, model_dir: Path) -> ModelConfig:
    """A config given with a load request: Triton takes it as ModelConfig in JSON."""
    config = ModelConfig()
    try:
        json_format.Parse(text, config)
    except json_format.ParseError as error:
        raise ConfigError(f"the load request's config is not a valid model config: {error}") from None
    return _named(config, model_dir)


def _named(config: ModelConfig, model_dir: Path) -> ModelConfig:
    if config.name and config.name != model_dir.name:
        raise ConfigError(
            f"{CONFIG_FILE} names the model '{config.name}' but its directory is '{model_dir.name}'"
        )
    config.name = model_dir.name
    return config


def check_platform(config: ModelConfig) -> None:
    if is_ensemble(config):
        return
    if not config.platform and not config.backend:
        config.platform, config.backend = ONNX_PLATFORM, ONNX_BACKEND
    if config.platform not in ("", ONNX_PLATFORM) or config.backend not in ("", ONNX_BACKEND):
        raise ConfigError(
            f"unsupported platform '{config.platform or config.backend}', ortserve serves "
            f"'{ONNX_PLATFORM}' (backend '{ONNX_BACKEND}') models and '{ENSEMBLE_PLATFORM}'s of them"
        )
    config.platform, config.backend = ONNX_PLATFORM, ONNX_BACKEND
    if config.HasField("ensemble_scheduling"):
        raise ConfigError(f"ensemble_scheduling needs platform: \"{ENSEMBLE_PLATFORM}\"")


def complete(config: ModelConfig, inputs: list[GraphTensor], outputs: list[GraphTensor]) -> None:
    """Fill what the config leaves out from the graph, as Triton's ONNX Runtime backend does."""
    check_platform(config)
    declared = bool(config.input) or bool(config.output)
    if config.max_batch_size == 0 and not declared and _batchable(inputs + outputs):
        config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
        if not config.WhichOneof("scheduling_choice"):
            config.dynamic_batching.SetInParent()
    hidden_inputs, hidden_outputs = server_filled(config)
    _complete_tensors(config, config.input, inputs, "input", add_missing=True, hidden=hidden_inputs)
    _complete_tensors(
        config, config.output, outputs, "output", add_missing=not config.output, hidden=hidden_outputs
    )
    if not config.instance_group:
        config.instance_group.add(count=1)
    for group in config.instance_group:
        group.count = group.count or 1


def server_filled(config: ModelConfig) -> tuple[set[str], set[str]]:
    """Graph inputs and outputs that the server fills and reads: a stateful model's control inputs and
    implicit state (clients see them only where the config lists them), ragged batching's batch inputs."""
    batching = config.sequence_batching
    inputs = {c.name for c in batching.control_input} | {s.input_name for s in batching.state}
    inputs |= {target for item in config.batch_input for target in item.target_name}  # ragged batching
    return inputs, {s.output_name for s in batching.state}


def _batchable(tensors: list[GraphTensor]) -> bool:
    return bool(tensors) and all(t.shape and t.shape[0] is None for t in tensors)


def _complete_tensors(config, declared, graph: list[GraphTensor], kind: str, add_missing: bool, hidden=()):
    by_name = {tensor.name: tensor for tensor in graph}
    for tensor in declared:
        if tensor.name not in by_name:
            raise ConfigError(
                f"{kind} '{tensor.name}' in {CONFIG_FILE} is not in the model, "
                f"whose {kind}s are: {', '.join(by_name)}"
            )
        if getattr(tensor, "optional", False) and not by_name[tensor.name].optional:
            raise ConfigError(
                f"{kind} '{tensor.name}' is optional in {CONFIG_FILE} but the model needs it: only an input "
                "with a default value in the graph (an initializer a request may override) can be left out"
            )
        _complete_tensor(config, tensor, by_name[tensor.name], kind)
    if add_missing:  # a graph's defaults stay inside it unless the config names them
        names = {tensor.name for tensor in declared}
        for tensor in graph:
            if tensor.name not in names and tensor.name not in hidden and not tensor.optional:
                _complete_tensor(config, declared.add(name=tensor.name), tensor, kind)


def _complete_tensor(config, tensor, graph: GraphTensor, kind: str) -> None:
    if graph.datatype is None:
        raise ConfigError(f"{kind} '{graph.name}' has an element type that ortserve cannot serve")
    expected = datatypes.to_config(graph.datatype)
    if tensor.data_type == 0:
        tensor.data_type = _DATA_TYPE.values_by_name[expected].number
    actual = data_type_name(tensor.data_type)
    if actual != expected:
        raise ConfigError(f"{kind} '{graph.name}' is {actual} in {CONFIG_FILE} but {expected} in the model")
    if _ragged(config, tensor):  # one 1-D tensor of the batch's elements, whatever each request's shape
        if len(graph.shape) != 1:
            raise ConfigError(f"ragged {kind} '{graph.name}' must be 1-D in the model (the batch's elements "
                              f"one after another), but the model's shape is {list(graph.shape)}")
        if not tensor.dims:
            tensor.dims.append(-1)
        return
    graph_dims = graph.shape[1:] if config.max_batch_size > 0 else graph.shape
    if config.max_batch_size > 0 and (not graph.shape or graph.shape[0] is not None):
        raise ConfigError(
            f"max_batch_size is {config.max_batch_size} but {kind} '{graph.name}' has no variable "
            "batch dimension; set max_batch_size: 0"
        )
    if not tensor.dims:
        tensor.dims.extend(-1 if dim is None else dim for dim in graph_dims)
    if graph_dims == () and all(dim == 1 for dim in tensor.dims) and not tensor.HasField("reshape"):
        # a scalar: clients send and receive [1] (or the config's [1, 1]...), as Triton's ONNX Runtime
        # backend allows (reshape: [])
        tensor.dims[:] = list(tensor.dims) or [1]
        tensor.reshape.SetInParent()
    model_dims = list(tensor.reshape.shape if tensor.HasField("reshape") else tensor.dims)
    if not _dims_fit(model_dims, graph_dims):
        raise ConfigError(
            f"{kind} '{graph.name}' has dims {model_dims} in {CONFIG_FILE} but the model "
            f"expects {[-1 if dim is None else dim for dim in graph_dims]}"
        )


def _ragged(config: ModelConfig, tensor) -> bool:
    """An input with allow_ragged_batch, or an output scattered by a batch_output."""
    if getattr(tensor, "allow_ragged_batch", False):
        return True
    return any(tensor.name in item.target_name for item in config.batch_output)


def _dims_fit(dims: list[int], graph_dims) -> bool:
    if len(dims) != len(graph_dims):
        return False
    return all(g is None or d == g for d, g in zip(dims, graph_dims))


def tensor_specs(config: ModelConfig, tensors) -> list[TensorSpec]:
    """The shapes clients send and receive: the batch dimension (-1) first when batching."""
    batch = (-1,) if config.max_batch_size > 0 else ()
    return [
        TensorSpec(
            name=t.name,
            datatype=datatypes.from_config(data_type_name(t.data_type)),
            shape=batch + tuple(t.dims),
            optional=getattr(t, "optional", False),
        )
        for t in tensors
    ]


