"""Dynamic batching end to end: concurrent tritonclient requests are merged, answers stay exact."""

import queue
from functools import partial

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tests.conftest import Protocol


def concurrent_infer(api: Protocol, model: str, arrays: list[np.ndarray], outputs: list[str]):
    """Sends every request before reading any answer."""
    requests = [[api.input("x", array)] for array in arrays]
    wanted = [api.output(name) for name in outputs]
    if api.name == "http":
        handles = [api.client.async_infer(model, inputs, outputs=wanted) for inputs in requests]
        return [handle.get_result() for handle in handles]
    answers = [queue.Queue() for _ in requests]
    for inputs, answer in zip(requests, answers):
        api.client.async_infer(model, inputs, callback=partial(_put, answer), outputs=wanted)
    results = []
    for answer in answers:
        result, error = answer.get(timeout=30)
        assert error is None, error
        results.append(result)
    return results


def _put(answer: queue.Queue, result, error):
    answer.put((result, error))


def counts(api, model):
    stats = api.statistics(model)[0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def test_concurrent_requests_are_merged_and_exact(api):
    rng = np.random.default_rng(0)
    lengths = [3, 5, 8, 2, 7, 6, 4, 8]  # one bucket (<= 8): padded into shared batches
    arrays = [rng.normal(size=(1, n)).astype(np.float32) for n in lengths]
    before = counts(api, "padded")
    results = concurrent_infer(api, "padded", arrays, ["y", "total"])
    inferences, executions = (a - b for a, b in zip(counts(api, "padded"), before))
    assert inferences == len(arrays)
    assert executions < inferences, "concurrent requests were not merged"
    for array, result in zip(arrays, results):
        np.testing.assert_array_equal(result.as_numpy("y"), np.maximum(array, 0))
        np.testing.assert_allclose(result.as_numpy("total"), array.sum(axis=1, keepdims=True), rtol=1e-5)


def test_requests_of_several_rows_keep_their_rows(api):
    rng = np.random.default_rng(1)
    arrays = [rng.normal(size=(n, 5)).astype(np.float32) for n in (1, 3, 2, 4)]
    results = concurrent_infer(api, "padded", arrays, ["y"])
    for array, result in zip(arrays, results):
        np.testing.assert_array_equal(result.as_numpy("y"), np.maximum(array, 0))


@pytest.mark.parametrize("priority", [-1, 7])
def test_bad_priority(api, priority):
    x = np.zeros((1, 3), dtype=np.float32)
    with pytest.raises((InferenceServerException, ValueError)) as error:
        api.client.infer("padded", [api.input("x", x)], priority=priority)
    if isinstance(error.value, InferenceServerException):
        api.assert_error(error.value, "INVALID_ARGUMENT", "priority")
