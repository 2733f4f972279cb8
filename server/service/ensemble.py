"""An ensemble's request: each step runs as soon as its inputs are ready (steps ready together run side by
side), as an inference request to its model through the path a client's takes (validated against that
model, batched with its other requests, counted in its statistics); the outputs of the steps are the
ensemble's tensors."""

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np

from server.core.errors import InvalidArgument, ServerError
from server.core.stats import Timing
from server.core.types import InferRequest, InferResponse, RequestedOutput, Tensor
from server.repository.ensemble import EnsembleStep
from server.repository.model import ModelVersion

Infer = Callable[[InferRequest], Awaitable[InferResponse]]


async def run_ensemble(model: ModelVersion, feeds: dict[str, np.ndarray], request: InferRequest,
                       infer: Infer) -> tuple[dict[str, np.ndarray], Timing]:
    """Every ensemble tensor's array, by name, once every step has run."""
    tensors = {spec.name: Tensor(spec.name, spec.datatype, feeds[spec.name])
               for spec in model.inputs if spec.name in feeds}
    waiting = list(model.ensemble)
    running: set[asyncio.Future] = set()
    try:
        while waiting or running:
            ready = [step for step in waiting if set(step.inputs.values()) <= tensors.keys()]
            for step in ready:
                waiting.remove(step)
            if len(ready) == 1 and not running:  # a chain's next step: awaited as it is, no task
                await _run_step(model, ready[0], tensors, request, infer)
                continue
            running |= {asyncio.ensure_future(_run_step(model, step, tensors, request, infer))
                        for step in ready}
            if not running:
                missing = sorted({t for step in waiting for t in step.inputs.values()} - tensors.keys())
                raise InvalidArgument(f"ensemble '{model.name}' cannot run {', '.join(map(str, waiting))} "
                                      f"without {', '.join(missing)}: send every input its steps take")
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                future.result()  # a step's error ends the request
    finally:
        for future in running:
            future.cancel()
    return {name: tensor.data for name, tensor in tensors.items()}, Timing()  # its steps' are their own


async def _run_step(model: ModelVersion, step: EnsembleStep, tensors: dict[str, Tensor],
                    request: InferRequest, infer: Infer) -> None:
    """Runs a step and adds its outputs to the ensemble's tensors; its error keeps the model's own words
    with the ensemble and the step named after them."""
    inputs = [Tensor(name, tensors[tensor].datatype, tensors[tensor].data)
              for name, tensor in step.inputs.items()]
    asked = InferRequest(step.model, step.version, request.id, inputs,
                         [RequestedOutput(name) for name in step.outputs], protocol=request.protocol)
    try:
        response = await infer(asked)
    except ServerError as error:
        error.message = f"{error.message} (in ensemble '{model.name}', {step})"
        error.args = (error.message,)
        raise
    for output in response.outputs:
        tensors[step.outputs[output.name]] = output
