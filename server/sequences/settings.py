"""A model's `sequence_batching` config: strategy, limits, control inputs and implicit state."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.core import datatypes
from server.protocol import ModelConfig, enum
from server.protocol.model_config import ConfigError, data_type_name, parameter, read_data_file

DEFAULT_IDLE_US = 1_000_000  # Triton's default max_sequence_idle_microseconds
DEFAULT_CANDIDATES = 64  # oldest strategy without max_candidate_sequences
_KIND = enum("ModelSequenceBatching.Control.Kind")
START = "CONTROL_SEQUENCE_START"
READY = "CONTROL_SEQUENCE_READY"
END = "CONTROL_SEQUENCE_END"
CORRID = "CONTROL_SEQUENCE_CORRID"


@dataclass(frozen=True)
class Control:
    """One control input: which signal it carries, its datatype, and its false/true values."""

    input_name: str
    kind: str
    datatype: str
    false_true: tuple = (0, 1)

    def value(self, flag: bool):
        return self.false_true[int(flag)]


@dataclass(frozen=True)
class State:
    input_name: str
    output_name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch dimension; -1 grows with what the model returns
    initial: np.ndarray  # the state at the start of every sequence


@dataclass(frozen=True)
class SequenceSettings:
    strategy: str  # "direct" or "oldest"
    max_batch_size: int  # 0: one request per execution, tensors without a batch dimension
    slots: int  # sequences holding a batch slot (direct) or a candidate place (oldest) at once
    backlog: int  # started sequences waiting for a slot; beyond slots + backlog a START gets 503
    idle_us: int
    delay_us: int
    preferred_batch_sizes: tuple[int, ...]
    controls: tuple[Control, ...]
    states: tuple[State, ...]

    @property
    def hidden_inputs(self) -> set[str]:
        """Graph inputs the server fills: clients never send them."""
        return {c.input_name for c in self.controls} | {s.input_name for s in self.states}

    @property
    def state_outputs(self) -> set[str]:
        return {s.output_name for s in self.states}


def sequence_settings(config: ModelConfig, model_dir: Path, instances: int) -> SequenceSettings | None:
    if not config.HasField("sequence_batching"):
        return None
    batching = config.sequence_batching
    rows = max(config.max_batch_size, 1)
    if batching.WhichOneof("strategy_choice") == "oldest":
        oldest = batching.oldest
        strategy, slots = "oldest", oldest.max_candidate_sequences or DEFAULT_CANDIDATES
        delay, preferred = oldest.max_queue_delay_microseconds, tuple(sorted(oldest.preferred_batch_size))
    else:
        strategy, slots = "direct", rows * instances
        delay, preferred = batching.direct.max_queue_delay_microseconds, ()
    backlog = _integer(config, "max_sequence_backlog", slots * 4)
    return SequenceSettings(
        strategy=strategy,
        max_batch_size=config.max_batch_size,
        slots=slots,
        backlog=backlog,
        idle_us=batching.max_sequence_idle_microseconds or DEFAULT_IDLE_US,
        delay_us=delay,
        preferred_batch_sizes=preferred,
        controls=tuple(_controls(batching)),
        states=tuple(_state(state, model_dir) for state in batching.state),
    )


def _integer(config: ModelConfig, key: str, default: int) -> int:
    text = parameter(config, key, str(default))
    if not text.isdigit():
        raise ConfigError(f"parameter '{key}' must be an integer >= 0, got '{text}'")
    return int(text)


def _controls(batching) -> list[Control]:
    controls = []
    for control_input in batching.control_input:
        if len(control_input.control) != 1:
            raise ConfigError(
                f"control input '{control_input.name}' must carry exactly one control, "
                f"got {len(control_input.control)}"
            )
        control = control_input.control[0]
        kind = _KIND.values_by_number[control.kind].name
        datatype, false_true = _control_values(control_input.name, kind, control)
        controls.append(Control(control_input.name, kind, datatype, false_true))
    return controls


def _control_values(name: str, kind: str, control) -> tuple[str, tuple]:
    if kind == CORRID:
        if not control.data_type:
            raise ConfigError(f"control input '{name}' ({CORRID}) needs a data_type")
        datatype = datatypes.from_config(data_type_name(control.data_type))
        if datatype not in ("UINT64", "INT64", "UINT32", "INT32", "BYTES"):
            raise ConfigError(f"control input '{name}' ({CORRID}) must be an integer type or TYPE_STRING")
        return datatype, ()
    choices = [
        ("FP32", tuple(control.fp32_false_true)),
        ("INT32", tuple(control.int32_false_true)),
        ("BOOL", tuple(control.bool_false_true)),
    ]
    given = [(datatype, values) for datatype, values in choices if values]
    if len(given) != 1 or len(given[0][1]) != 2:
        raise ConfigError(
            f"control input '{name}' ({kind}) needs exactly one of fp32_false_true, int32_false_true "
            "or bool_false_true, with two values (false, true)"
        )
    return given[0]


def _state(state, model_dir: Path) -> State:
    datatype = datatypes.from_config(data_type_name(state.data_type))
    dims = tuple(int(d) for d in state.dims)
    if datatype == "BYTES":
        raise ConfigError(f"state '{state.input_name}': string states are not supported")
    if len(state.initial_state) > 1:
        raise ConfigError(
            f"state '{state.input_name}' has {len(state.initial_state)} initial states; give one"
        )
    initial = np.zeros([max(d, 0) for d in dims], dtype=datatypes.numpy_dtype(datatype))
    if state.initial_state:
        initial = _initial(state.input_name, state.initial_state[0], datatype, model_dir)
        if not _fits(initial.shape, dims):
            raise ConfigError(
                f"state '{state.input_name}': initial_state dims {list(initial.shape)} do not fit "
                f"the state's dims {list(dims)}"
            )
    return State(state.input_name, state.output_name, datatype, dims, initial)


def _initial(name: str, spec, datatype: str, model_dir: Path) -> np.ndarray:
    dtype = datatypes.numpy_dtype(datatype)
    shape = [int(d) for d in spec.dims]
    if any(d < 0 for d in shape):
        raise ConfigError(f"state '{name}': initial_state dims must be fixed, got {shape}")
    if spec.WhichOneof("state_data") == "data_file":
        path = model_dir / "initial_state" / spec.data_file
        return read_data_file(path, dtype, shape, f"state '{name}': initial state file")
    return np.zeros(shape, dtype=dtype)


def _fits(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    return len(shape) == len(dims) and all(d == -1 or s == d for s, d in zip(shape, dims))


def control_array(control: Control, flags: list, batched: bool) -> np.ndarray:
    """The control's tensor for rows whose flags (bools, or correlation ids for CORRID) are given:
    [rows, 1] when the model batches, [1] when it does not."""
    dtype = datatypes.numpy_dtype(control.datatype)
    values = flags if control.kind == CORRID else [control.value(flag) for flag in flags]
    if control.datatype == "BYTES":  # ONNX Runtime string tensors take str
        array = np.empty(len(values), dtype=object)
        array[:] = [str(v) for v in values]
    else:
        array = np.array(values, dtype=dtype)
    return array.reshape(-1, 1) if batched else array.reshape(1)


def check_graph(settings: SequenceSettings, inputs, outputs) -> None:
    """Control and state tensors must be in the graph with the datatypes the config gives them."""
    graph_inputs = {t.name: t.datatype for t in inputs}
    graph_outputs = {t.name: t.datatype for t in outputs}
    expected = [(c.input_name, c.datatype, graph_inputs, "input") for c in settings.controls]
    for state in settings.states:
        expected.append((state.input_name, state.datatype, graph_inputs, "input"))
        expected.append((state.output_name, state.datatype, graph_outputs, "output"))
    for name, datatype, graph, kind in expected:
        if name not in graph:
            raise ConfigError(
                f"sequence_batching names {kind} '{name}', which is not in the model; its {kind}s are: "
                f"{', '.join(graph)}"
            )
        if graph[name] != datatype:
            raise ConfigError(
                f"sequence_batching {kind} '{name}' is {datatype} in the config "
                f"but {graph[name]} in the model"
            )
