"""Triton's system shared memory extension through tritonclient.utils.shared_memory, HTTP and gRPC."""

import base64

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.utils.shared_memory as shm
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from server.core.cuda_ipc import cuda_device_count
from server.core.shared_memory import RegionUse, SharedMemory
from server.runtime.session import OrtSession, SessionSettings
from server.runtime.shapes import OutputShapes
from server.service.inference import IN_PLACE_FROM

SIZE = 64  # one INT32 [1, 16] tensor


@pytest.fixture
def regions(api):
    """An input region holding INPUT0 then INPUT1, and an output region for OUTPUT0 then OUTPUT1."""
    names = {kind: f"{kind}_{api.name}" for kind in ("in", "out")}
    handles = {kind: shm.create_shared_memory_region(name, f"/ortserve_test_{name}", 2 * SIZE)
               for kind, name in names.items()}
    a = np.arange(16, dtype=np.int32)[None]
    shm.set_shared_memory_region(handles["in"], [a, np.full_like(a, 3)])
    for name in names.values():
        api.client.register_system_shared_memory(name, f"/ortserve_test_{name}", 2 * SIZE)
    yield names, handles, a
    api.client.unregister_system_shared_memory()
    for handle in handles.values():
        shm.destroy_shared_memory_region(handle)


def shm_request(api, names, input_offset=SIZE, output_size=SIZE):
    inputs = [api.module.InferInput(name, [1, 16], "INT32") for name in ("INPUT0", "INPUT1")]
    inputs[0].set_shared_memory(names["in"], SIZE)
    inputs[1].set_shared_memory(names["in"], SIZE, offset=input_offset)
    outputs = [api.module.InferRequestedOutput(name) for name in ("OUTPUT0", "OUTPUT1")]
    outputs[0].set_shared_memory(names["out"], output_size)
    outputs[1].set_shared_memory(names["out"], output_size, offset=SIZE)
    return inputs, outputs


def test_inputs_and_outputs_travel_through_registered_regions(api, regions):
    names, handles, a = regions
    inputs, outputs = shm_request(api, names)
    api.client.infer("simple", inputs, outputs=outputs)
    total = shm.get_contents_as_numpy(handles["out"], np.int32, [1, 16])
    difference = shm.get_contents_as_numpy(handles["out"], np.int32, [1, 16], offset=SIZE)
    assert np.array_equal(total, a + 3) and np.array_equal(difference, a - 3)
    status = api.client.get_system_shared_memory_status()
    listed = status if api.name == "http" else [
        {"name": r.name, "byte_size": r.byte_size} for r in status.regions.values()]
    assert {region["name"]: int(region["byte_size"]) for region in listed} == {
        names["in"]: 2 * SIZE, names["out"]: 2 * SIZE}


def test_offsets_and_sizes_are_checked_against_the_region(api, regions):
    names, _, _ = regions
    for offset, size, fragment in ((2 * SIZE - 8, SIZE, "past its end"), (SIZE, 8, "output needs 64 bytes")):
        inputs, outputs = shm_request(api, names, input_offset=offset, output_size=size)
        with pytest.raises(InferenceServerException) as refused:
            api.client.infer("simple", inputs, outputs=outputs)
        api.assert_error(refused.value, "INVALID_ARGUMENT", fragment)
    with pytest.raises(InferenceServerException) as twice:
        api.client.register_system_shared_memory(names["in"], f"/ortserve_test_{names['in']}", SIZE)
    api.assert_error(twice.value, "INVALID_ARGUMENT", "already registered")
    with pytest.raises(InferenceServerException) as missing:
        api.client.register_system_shared_memory("nokey", "/ortserve_no_such_key", SIZE)
    api.assert_error(missing.value, "INVALID_ARGUMENT",
                     "Unable to open shared memory region: '/ortserve_no_such_key'")
    with pytest.raises(InferenceServerException) as too_big:
        key = f"/ortserve_test_{names['in']}"
        api.client.register_system_shared_memory("past_end", key, SIZE, offset=64 * SIZE)
    api.assert_error(too_big.value, "INVALID_ARGUMENT",
                     "failed to register shared memory region 'past_end': invalid args")
    api.client.unregister_system_shared_memory(names["in"])
    inputs, outputs = shm_request(api, names)
    with pytest.raises(InferenceServerException) as gone:
        api.client.infer("simple", inputs, outputs=outputs)
    api.assert_error(gone.value, "NOT_FOUND", f"Unable to find shared memory region: '{names['in']}'")


def test_a_large_output_written_into_its_region_by_the_execution_arrives_whole(api):
    """relu's graph names y's dimensions after x's, so a 1 MB y is bound to its output region (IO
    binding) instead of copied there; a second request through the same regions sees only its own."""
    width = IN_PLACE_FROM // 4
    handles = {kind: shm.create_shared_memory_region(f"big_{kind}_{api.name}", f"/ortserve_test_big_{kind}",
                                                     4 * width) for kind in ("in", "out")}
    try:
        for kind in handles:
            api.client.register_system_shared_memory(f"big_{kind}", f"/ortserve_test_big_{kind}", 4 * width)
        for sign in (1, -1):
            x = sign * np.linspace(-1, 1, width, dtype=np.float32)[None]
            shm.set_shared_memory_region(handles["in"], [x])
            request = api.module.InferInput("x", [1, width], "FP32")
            request.set_shared_memory("big_in", 4 * width)
            wanted = api.module.InferRequestedOutput("y")
            wanted.set_shared_memory("big_out", 4 * width)
            answer = api.client.infer("relu", [request], outputs=[wanted])
            y = shm.get_contents_as_numpy(handles["out"], np.float32, [1, width])
            assert np.array_equal(y, np.maximum(x, 0)) and answer.get_output("y") is not None
    finally:
        api.client.unregister_system_shared_memory()
        for handle in handles.values():
            shm.destroy_shared_memory_region(handle)


def test_cuda_registrations_are_checked_before_the_gpu_is_asked(api, server):
    with pytest.raises(InferenceServerException) as short:
        api.client.register_cuda_shared_memory("gpu_region", base64.b64encode(b"\0" * 8), 0, 64)
    api.assert_error(short.value, "INVALID_ARGUMENT", "must be the 64 bytes of a cudaIpcMemHandle_t, got 8")
    if api.name == "http":
        sizes = {"device_id": 0, "byte_size": 64}
        for body, fragment in ((sizes, "needs 'raw_handle'"),
                               ({"raw_handle": {"b64": "*"}, **sizes}, "not valid base64"),
                               ({"raw_handle": {"b64": ""}, **sizes, "device_id": -1}, "'device_id'")):
            answer = httpx.post(f"http://{server.http_url}/v2/cudasharedmemory/region/r/register", json=body)
            assert answer.status_code == 400 and fragment in answer.json()["error"], answer.text


@pytest.mark.skipif(cuda_device_count() > 0, reason="a machine with a CUDA GPU registers CUDA regions")
def test_without_a_gpu_cuda_registration_is_refused_saying_why(api):
    """tritonclient's CUDA shared memory calls get answers in the protocol, not 'method not found'."""
    status = api.client.get_cuda_shared_memory_status()
    assert (status if api.name == "http" else list(status.regions)) == []
    with pytest.raises(InferenceServerException) as refused:
        api.client.register_cuda_shared_memory("gpu_region", base64.b64encode(b"\0" * 64), 0, 64)
    api.assert_error(refused.value, "INVALID_ARGUMENT", "CUDA shared memory needs", "system shared memory")
    with pytest.raises(InferenceServerException) as unknown:
        api.client.get_cuda_shared_memory_status("gpu_region")
    api.assert_error(unknown.value, "NOT_FOUND", "Unable to find cuda shared memory region: 'gpu_region'")
    api.client.unregister_cuda_shared_memory()  # nothing registered: nothing to do


def concat_model(output_dims: list) -> onnx.ModelProto:
    """x FP32[1, n] -> y = [x, x] along axis 1, its shape declared as `output_dims`."""
    graph = helper.make_graph([helper.make_node("Concat", ["x", "x"], ["y"], axis=1)], "concat",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_dims)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_output_shapes_come_from_the_inputs_dimensions_the_graph_names():
    shapes = OutputShapes.from_graph({"x": [1, "n"], "z": ["batch", 3]},
                                     {"y": ["batch", "n", 4], "unnamed": [None, 2], "unranked": None,
                                      "other": ["m"]})
    feeds = {"x": np.zeros((1, 5)), "z": np.zeros((7, 3))}
    assert shapes.of("y", feeds) == (7, 5, 4)
    assert [shapes.of(name, feeds) for name in ("unnamed", "unranked", "other")] == [None] * 3
    assert shapes.of("y", {"x": np.zeros((1, 5))}) is None  # its input is missing: not known


def test_an_execution_writes_outputs_into_given_arrays_and_falls_back_where_their_shape_is_wrong(tmp_path):
    path = tmp_path / "concat.onnx"
    onnx.save(concat_model([1, "twice_n"]), path)
    session = OrtSession(path, SessionSettings())
    x = np.arange(4, dtype=np.float32)[None]
    target = np.zeros((1, 8), np.float32)
    [y] = session.run({"x": x}, ["y"], into={"y": target})
    assert np.shares_memory(y, target) and np.array_equal(target, np.concatenate([x, x], axis=1))

    wrong = np.full((1, 4), -1, np.float32)  # a graph whose names say y has x's shape: it has not
    [y] = session.run({"x": x}, ["y"], into={"y": wrong})
    assert not np.shares_memory(y, wrong) and y.shape == (1, 8) and (wrong == -1).all()
    [y] = session.run({"x": x}, ["y"], into={"y": target})  # proved wrong once, the session stops trying
    assert not np.shares_memory(y, target) and not session.runs_into


def test_a_region_span_is_an_array_the_client_sees_and_unregistering_it_while_used_is_safe(tmp_path):
    handle = shm.create_shared_memory_region("span", "/ortserve_test_span", 64)
    memory = SharedMemory()
    try:
        memory.system.register("span", "/ortserve_test_span", 0, 64)
        array = memory.array(RegionUse("span", 32, offset=16), np.dtype(np.float32), (2, 4))
        array[:] = np.arange(8).reshape(2, 4)
        assert np.array_equal(shm.get_contents_as_numpy(handle, np.float32, [2, 4], offset=16), array)
        assert memory.array(RegionUse("span", 16, offset=16), np.dtype(np.float32), (2, 4)) is None
        assert memory.array(RegionUse("span", 32, offset=2), np.dtype(np.float32), (2, 4)) is None
        memory.system.unregister("span")  # an execution still holds `array`
        array[0, 0] = 7
        assert memory.find("span") is None
    finally:
        shm.destroy_shared_memory_region(handle)
