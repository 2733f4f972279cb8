"""Triton's ensembles: a model (`platform: "ensemble"`) whose `ensemble_scheduling` steps run other models
of the repository, each step's inputs and outputs mapped to the ensemble's tensors. Checked at load as
Triton checks them: every tensor produced once, every ensemble input used, every output produced, every
step able to run (no cycle); once its steps' models are loaded, every mapped name one of theirs and every
tensor of one datatype."""

from dataclasses import dataclass

from server.core.types import TensorSpec
from server.protocol import ModelConfig
from server.protocol.model_config import ConfigError

ENSEMBLE_PLATFORM = "ensemble"


@dataclass(frozen=True)
class EnsembleStep:
    model: str
    version: str  # "" for the latest (Triton's model_version -1, or none given)
    inputs: dict[str, str]  # the step model's input -> the ensemble tensor it takes
    outputs: dict[str, str]  # the step model's output -> the ensemble tensor it makes

    def __str__(self) -> str:
        return f"step '{self.model}'"


def is_ensemble(config: ModelConfig) -> bool:
    return config.platform == ENSEMBLE_PLATFORM


def ensemble_steps(config: ModelConfig) -> list[EnsembleStep]:
    """The steps of an ensemble's config, in an order they can run in, or a ConfigError naming what is
    wrong."""
    name = f"ensemble '{config.name}'"
    if not config.ensemble_scheduling.step:
        raise ConfigError(f"{name} needs ensemble_scheduling with at least one step")
    if not config.input or not config.output:
        raise ConfigError(f"{name} must declare its inputs and outputs (there is no graph to read them from)")
    steps = [_step(name, index, step) for index, step in enumerate(config.ensemble_scheduling.step)]
    inputs, outputs = {t.name for t in config.input}, {t.name for t in config.output}
    made: dict[str, EnsembleStep] = {}
    for step in steps:
        for tensor in step.outputs.values():
            if tensor in inputs:
                raise ConfigError(f"{name}: {step} writes '{tensor}', an input of the ensemble")
            if tensor in made:
                raise ConfigError(f"{name}: tensor '{tensor}' is written by {made[tensor]} and by {step}")
            made[tensor] = step
    used = {tensor for step in steps for tensor in step.inputs.values()}
    for tensor in sorted(inputs - used):
        raise ConfigError(f"{name}: input '{tensor}' is not taken by any step")
    for tensor in sorted(outputs - set(made)):
        raise ConfigError(f"{name}: output '{tensor}' is not written by any step")
    return _ordered(name, steps, inputs)


def _step(name: str, index: int, step) -> EnsembleStep:
    if not step.model_name:
        raise ConfigError(f"{name}: step {index} needs a model_name")
    if not step.input_map or not step.output_map:
        raise ConfigError(f"{name}: step {index} ('{step.model_name}') needs an input_map and an output_map")
    if step.model_version < -1:
        raise ConfigError(f"{name}: step {index} ('{step.model_name}') has model_version "
                          f"{step.model_version}; a version is positive, or -1 (or none) for the latest")
    version = str(step.model_version) if step.model_version > 0 else ""
    return EnsembleStep(step.model_name, version, dict(step.input_map), dict(step.output_map))


def _ordered(name: str, steps: list[EnsembleStep], inputs: set[str]) -> list[EnsembleStep]:
    """The steps in an order where each one's inputs are ready before it; any that never are, refused."""
    ready, order, waiting = set(inputs), [], list(steps)
    while waiting:
        runnable = [step for step in waiting if set(step.inputs.values()) <= ready]
        if not runnable:
            missing = sorted({t for step in waiting for t in step.inputs.values()} - ready)
            raise ConfigError(f"{name}: {', '.join(map(str, waiting))} can never run: tensors "
                              f"{', '.join(missing)} are written by no step before them (a cycle, or no "
                              "step)")
        for step in runnable:
            order.append(step)
            waiting.remove(step)
            ready |= set(step.outputs.values())
    return order


def check_tensors(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec], steps: list[EnsembleStep],
                  models: list[tuple[list[TensorSpec], list[TensorSpec]]]) -> None:
    """The steps' maps against their models' inputs and outputs (`models`: each step's), in order."""
    datatypes = {spec.name: spec.datatype for spec in inputs}
    for step, (step_inputs, step_outputs) in zip(steps, models):
        taken, made = {s.name: s for s in step_inputs}, {s.name: s for s in step_outputs}
        for key, tensor in step.inputs.items():
            if key not in taken:
                raise ConfigError(f"ensemble '{name}': {step} maps '{key}', which is not an input of model "
                                  f"'{step.model}' (its inputs: {', '.join(taken)})")
            if datatypes[tensor] != taken[key].datatype:
                raise ConfigError(f"ensemble '{name}': tensor '{tensor}' is {datatypes[tensor]} but {step} "
                                  f"takes it as '{key}', which is {taken[key].datatype}")
        for key, tensor in step.outputs.items():
            if key not in made:
                raise ConfigError(f"ensemble '{name}': {step} maps '{key}', which is not an output of model "
                                  f"'{step.model}' (its outputs: {', '.join(made)})")
            datatypes[tensor] = made[key].datatype
    for spec in outputs:
        if datatypes[spec.name] != spec.datatype:
            raise ConfigError(f"ensemble '{name}': output '{spec.name}' is {spec.datatype} in its config but "
                              f"its step writes {datatypes[spec.name]}")
