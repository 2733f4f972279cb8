"""Triton's CUDA shared memory extension through tritonclient.utils.cuda_shared_memory, HTTP and gRPC:
the test process allocates on the GPU and the server opens the allocations by their CUDA IPC handles."""

import base64

import numpy as np
import pytest
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from server.core.cuda_ipc import cuda_device_count
from tests.test_shared_memory import SIZE, shm_request

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(cuda_device_count() == 0, reason="needs cuda-python and a CUDA GPU")]


@pytest.fixture
def cudashm():
    import tritonclient.utils.cuda_shared_memory as module

    return module


@pytest.fixture
def regions(api, cudashm):
    """An input region holding INPUT0 then INPUT1, and an output region for OUTPUT0 then OUTPUT1."""
    names = {kind: f"gpu_{kind}_{api.name}" for kind in ("in", "out")}
    handles = {kind: cudashm.create_shared_memory_region(name, 2 * SIZE, 0) for kind, name in names.items()}
    a = np.arange(16, dtype=np.int32)[None]
    cudashm.set_shared_memory_region(handles["in"], [a, np.full_like(a, 3)])
    cudashm.set_shared_memory_region(handles["out"], [np.full((2, 16), -1, np.int32)])
    for kind, name in names.items():
        api.client.register_cuda_shared_memory(name, cudashm.get_raw_handle(handles[kind]), 0, 2 * SIZE)
    yield names, handles, a
    api.client.unregister_cuda_shared_memory()
    for handle in handles.values():
        cudashm.destroy_shared_memory_region(handle)


def listed(api, status) -> dict[str, tuple[int, int]]:
    regions = status if api.name == "http" else [
        {"name": r.name, "device_id": r.device_id, "byte_size": r.byte_size} for r in status.regions.values()]
    return {region["name"]: (int(region["device_id"]), int(region["byte_size"])) for region in regions}


def test_inputs_and_outputs_travel_through_gpu_regions(api, regions, cudashm):
    names, handles, a = regions
    inputs, outputs = shm_request(api, names)
    answer = api.client.infer("simple", inputs, outputs=outputs)
    written = cudashm.get_contents_as_numpy(handles["out"], np.int32, [2, 16])
    assert np.array_equal(written[0], a[0] + 3) and np.array_equal(written[1], a[0] - 3)
    placed = answer.get_output("OUTPUT1")
    if api.name == "http":
        assert placed["parameters"] == {"shared_memory_region": names["out"], "shared_memory_byte_size": SIZE,
                                        "shared_memory_offset": SIZE}
    else:
        assert placed.parameters["shared_memory_region"].string_param == names["out"]
    status = listed(api, api.client.get_cuda_shared_memory_status())
    assert status == {names["in"]: (0, 2 * SIZE), names["out"]: (0, 2 * SIZE)}
    assert listed(api, api.client.get_cuda_shared_memory_status(names["in"])) == {names["in"]: (0, 2 * SIZE)}


def test_gpu_regions_are_checked_against_their_size_and_allocation(api, regions, cudashm):
    names, handles, _ = regions
    for offset, size, fragment in ((2 * SIZE - 8, SIZE, "past its end"), (SIZE, 8, "output needs 64 bytes")):
        inputs, outputs = shm_request(api, names, input_offset=offset, output_size=size)
        with pytest.raises(InferenceServerException) as refused:
            api.client.infer("simple", inputs, outputs=outputs)
        api.assert_error(refused.value, "INVALID_ARGUMENT", fragment)
    raw = cudashm.get_raw_handle(handles["in"])
    with pytest.raises(InferenceServerException) as twice:
        api.client.register_cuda_shared_memory(names["in"], raw, 0, SIZE)
    api.assert_error(twice.value, "INVALID_ARGUMENT", "already registered")
    with pytest.raises(InferenceServerException) as larger:
        api.client.register_cuda_shared_memory(f"large_{api.name}", raw, 0, 1 << 30)
    api.assert_error(larger.value, "INVALID_ARGUMENT", "larger than the", "allocation its handle opens")
    assert f"large_{api.name}" not in listed(api, api.client.get_cuda_shared_memory_status())


def test_a_handle_that_opens_nothing_is_refused_naming_cuda(api):
    garbage = base64.b64encode(bytes(range(64)))
    with pytest.raises(InferenceServerException) as refused:
        api.client.register_cuda_shared_memory(f"garbage_{api.name}", garbage, 0, SIZE)
    api.assert_error(refused.value, "INVALID_ARGUMENT", "cannot open CUDA", "cudaIpcOpenMemHandle")


def test_region_names_are_shared_with_system_shared_memory_and_unregistering_ends_use(api, regions, cudashm):
    names, handles, _ = regions
    system = shm.create_shared_memory_region(f"sys_{api.name}", f"/ortserve_test_gpu_{api.name}", SIZE)
    try:
        with pytest.raises(InferenceServerException) as clash:
            api.client.register_system_shared_memory(names["out"], f"/ortserve_test_gpu_{api.name}", SIZE)
        api.assert_error(clash.value, "INVALID_ARGUMENT", "already registered")
    finally:
        shm.destroy_shared_memory_region(system)
    api.client.unregister_cuda_shared_memory(names["in"])
    inputs, outputs = shm_request(api, names)
    with pytest.raises(InferenceServerException) as gone:
        api.client.infer("simple", inputs, outputs=outputs)
    api.assert_error(gone.value, "NOT_FOUND", f"Unable to find shared memory region: '{names['in']}'")
    assert list(listed(api, api.client.get_cuda_shared_memory_status())) == [names["out"]]
