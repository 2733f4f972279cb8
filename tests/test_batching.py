"""Dynamic batching end to end: concurrent tritonclient requests are merged, answers stay exact."""

import asyncio

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from tests.conftest import Protocol


def concurrent_infer(api: Protocol, server, model: str, arrays: list[np.ndarray], outputs: list[str]):
    """Sends every request at once through tritonclient's asyncio client of the protocol."""
    module = httpaio if api.name == "http" else grpcaio

    async def run():
        client = module.InferenceServerClient(server.http_url if api.name == "http" else server.grpc_url)
        try:
            calls = []
            for array in arrays:
                tensor = module.InferInput("x", list(array.shape), "FP32")
                tensor.set_data_from_numpy(array)
                wanted = [module.InferRequestedOutput(name) for name in outputs]
                calls.append(client.infer(model, [tensor], outputs=wanted))
            return await asyncio.gather(*calls)
        finally:
            await client.close()

    return asyncio.run(run())


def counts(api, model):
    stats = api.statistics(model)[0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def test_concurrent_requests_are_merged_and_exact(api, server):
    rng = np.random.default_rng(0)
    lengths = [3, 5, 8, 2, 7, 6, 4, 8] * 2  # one bucket (<= 8): padded into shared batches
    arrays = [rng.normal(size=(1, n)).astype(np.float32) for n in lengths]
    before = counts(api, "padded")
    results = concurrent_infer(api, server, "padded", arrays, ["y", "total", "heavy"])
    inferences, executions = (a - b for a, b in zip(counts(api, "padded"), before))
    assert inferences == len(arrays)
    assert executions < inferences, "concurrent requests were not merged"
    for array, result in zip(arrays, results):
        np.testing.assert_array_equal(result.as_numpy("y"), np.maximum(array, 0))
        np.testing.assert_allclose(result.as_numpy("total"), array.sum(axis=1, keepdims=True), rtol=1e-5)
        np.testing.assert_allclose(result.as_numpy("heavy"), array.sum(axis=1, keepdims=True), rtol=1e-4)


def test_requests_of_several_rows_keep_their_rows(api, server):
    rng = np.random.default_rng(1)
    arrays = [rng.normal(size=(n, 5)).astype(np.float32) for n in (1, 3, 2, 4)]
    results = concurrent_infer(api, server, "padded", arrays, ["y"])
    for array, result in zip(arrays, results):
        np.testing.assert_array_equal(result.as_numpy("y"), np.maximum(array, 0))


@pytest.mark.parametrize("priority", [-1, 7])
def test_bad_priority(api, priority):
    x = np.zeros((1, 3), dtype=np.float32)
    with pytest.raises((InferenceServerException, ValueError)) as error:
        api.client.infer("padded", [api.input("x", x)], priority=priority)
    if isinstance(error.value, InferenceServerException):
        api.assert_error(error.value, "INVALID_ARGUMENT", "priority")
