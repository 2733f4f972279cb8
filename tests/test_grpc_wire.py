"""gRPC at the wire: malformed protobuf, inconsistent raw contents, size limits and health."""

from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.protocol import SERVICE_NAME, message

ModelInferRequest = message("ModelInferRequest")
ModelInferResponse = message("ModelInferResponse")


@pytest.fixture
def channel(server):
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield channel
    assert server.process.poll() is None
    with grpc.insecure_channel(server.grpc_url) as channel:
        assert infer(channel, simple_request()).model_name == "simple"


def infer(channel, request):
    call = channel.unary_unary(
        f"/{SERVICE_NAME}/ModelInfer",
        request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
        response_deserializer=ModelInferResponse.FromString,
    )
    return call(request, timeout=30)


def simple_request(raw=True):
    request = ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        if raw:
            request.raw_input_contents.append(np.arange(16, dtype="<i4").tobytes())
        else:
            tensor.contents.int_contents.extend(range(16))
    return request


def rpc_error(channel, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        infer(channel, request)
    return error.value


def test_typed_contents(channel):
    response = infer(channel, simple_request(raw=False))
    assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]
    out = np.frombuffer(response.raw_output_contents[0], dtype="<i4")
    assert out.tolist() == [2 * x for x in range(16)]


def test_malformed_protobuf(channel):
    error = rpc_error(channel, b"\xff\xff\xff\x0f garbage")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed ModelInferRequest" in error.details()


def test_raw_contents_count_mismatch(channel):
    request = simple_request()
    del request.raw_input_contents[1]
    error = rpc_error(channel, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents has 1 entries" in error.details()


def test_raw_contents_size_mismatch(channel):
    request = simple_request()
    request.raw_input_contents[1] = b"\0" * 63
    error = rpc_error(channel, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    triton = "input byte size mismatch for input 'INPUT1' for model 'simple'. Expected 64, got 63"
    assert triton in error.details()


def test_typed_contents_count_mismatch(channel):
    request = simple_request(raw=False)
    request.inputs[0].contents.int_contents.append(99)
    error = rpc_error(channel, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INPUT0" in error.details() and "16 elements, got 17" in error.details()


def test_fp16_needs_raw_contents(channel):
    request = ModelInferRequest(model_name="types")
    request.inputs.add(name="half", datatype="FP16", shape=[3]).contents.fp32_contents.extend([1, 2, 3])
    error = rpc_error(channel, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents" in error.details()


def test_message_over_the_limit(channel):
    # the test server runs with --max-request-bytes 1048576
    request = simple_request()
    request.raw_input_contents[0] = b"\0" * (2 * 1024 * 1024)
    error = rpc_error(channel, request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_an_answer_larger_than_the_request_limit_is_sent_whole(tmp_path):
    """--max-request-bytes bounds what clients send. An answer is the server's own and may be larger (a
    model that widens its input, a batch of masks): it goes back whole over gRPC, as Triton's do."""
    from loadtest.server_process import start_server, stop_server
    from tests.models import publish, widen_model

    publish(tmp_path, "widen", widen_model(), None)
    limit = 1 << 20
    server = start_server(tmp_path, tmp_path / "server.log", "--max-request-bytes", str(limit),
                          ready_model="widen")
    values = np.arange(limit // 2, dtype=np.uint8)[None]  # half the limit in, twice the limit out
    request = ModelInferRequest(model_name="widen")
    request.inputs.add(name="x", datatype="UINT8", shape=values.shape)
    request.raw_input_contents.append(values.tobytes())
    try:
        options = [("grpc.max_receive_message_length", -1)]
        with grpc.insecure_channel(server.grpc_url, options=options) as channel:
            raw = infer(channel, request).raw_output_contents[0]
        np.testing.assert_array_equal(np.frombuffer(raw, "<f4"), values.ravel().astype(np.float32))
    finally:
        assert stop_server(server) == 0, server.output()


def test_health_service(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    # strict readiness: the repository's 'broken' model keeps the server from being ready
    for service in ("", SERVICE_NAME):
        status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as error:
        stub.Check(health_pb2.HealthCheckRequest(service="other"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_raw_contents_are_read_in_place_and_the_rest_parses_as_protobuf_would():
    from server.api.grpc import wire

    request = simple_request()
    request.id = "with-id"
    request.parameters["priority"].int64_param = 3
    data = request.SerializeToString()
    rest, raw = wire.split_raw_inputs(data)
    assert [bytes(view) for view in raw] == list(request.raw_input_contents)
    assert all(view.obj is data for view in raw)  # views of the received bytes, not copies
    parsed = ModelInferRequest.FromString(rest)
    assert not parsed.raw_input_contents and parsed.id == "with-id" and parsed.inputs == request.inputs
    # the raw contents between other fields (protobuf allows any order) come out the same
    shuffled = b"".join(ModelInferRequest(raw_input_contents=[c]).SerializeToString()
                        for c in request.raw_input_contents) + rest
    assert [bytes(v) for v in wire.split_raw_inputs(shuffled)[1]] == list(request.raw_input_contents)
    for broken in (data[:-3], data + b"\x3a\xff\xff\xff\xff\x0f"):
        with pytest.raises(Exception, match="malformed ModelInferRequest protobuf"):
            wire.split_raw_inputs(broken)


def test_raw_outputs_written_after_the_rest_parse_back_as_protobuf():
    from server.api.grpc import wire

    outputs = [np.arange(5, dtype="<f4"), np.array([], dtype="<f4"), np.arange(300, dtype="<i8")]
    message = ModelInferResponse(model_name="m", id="x").SerializeToString()
    parsed = ModelInferResponse.FromString(wire.with_raw_outputs(message, [memoryview(o) for o in outputs]))
    assert parsed.model_name == "m" and parsed.id == "x"
    assert list(parsed.raw_output_contents) == [o.tobytes() for o in outputs]


def test_concurrent_requests_each_get_their_own_data_back(server):
    """Large enough to be read in place (views of each received message), batched together and run as one
    execution, every request's outputs are its own: no request's input buffer is another's output."""
    import concurrent.futures

    from server.api.grpc import wire

    def one(seed):
        values = np.random.default_rng(seed).standard_normal((1, 24_000)).astype("<f4")
        request = ModelInferRequest(model_name="relu")
        request.inputs.add(name="x", datatype="FP32", shape=values.shape)
        request.raw_input_contents.append(values.tobytes())
        assert request.ByteSize() >= wire.IN_PLACE_FROM
        options = [("grpc.max_receive_message_length", -1)]
        with grpc.insecure_channel(server.grpc_url, options=options) as own:
            response = infer(own, request)
        return values, np.frombuffer(response.raw_output_contents[0], "<f4").reshape(values.shape)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for values, got in pool.map(one, range(48)):
            np.testing.assert_array_equal(got, np.maximum(values, 0))


def test_large_tensors_reuse_the_servers_memory(tmp_path):
    """4 MB tensors in and out over gRPC and HTTP: once warm, a request maps few fresh pages in the server
    (glibc's allocator keeps request-sized buffers; by default it returned them to the system as they
    were freed, and a large share of a tensor's pages faulted again on the next request)."""
    import httpx
    import onnx

    from loadtest.client import binary_body
    from loadtest.server_process import minor_faults, start_server, stop_server
    from tests.models import relu_model

    (tmp_path / "relu" / "1").mkdir(parents=True)
    onnx.save(relu_model(), tmp_path / "relu" / "1" / "model.onnx")
    server = start_server(tmp_path, tmp_path / "server.log", "--max-request-bytes", str(16 << 20),
                          ready_model="relu")
    values = np.random.default_rng(0).standard_normal((1, 1 << 20)).astype("<f4")
    request = ModelInferRequest(model_name="relu")
    request.inputs.add(name="x", datatype="FP32", shape=values.shape)
    request.raw_input_contents.append(values.tobytes())
    body, headers = binary_body({"x": values}, ["y"])
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    try:
        with grpc.insecure_channel(server.grpc_url, options=options) as channel, httpx.Client() as http:
            def over_grpc():
                raw = infer(channel, request).raw_output_contents[0]
                np.testing.assert_array_equal(np.frombuffer(raw, "<f4"), np.maximum(values, 0).ravel())

            def over_http():
                answer = http.post(f"http://{server.http_url}/v2/models/relu/infer", content=body,
                                   headers={**headers, "Accept-Encoding": "identity"})
                assert answer.status_code == 200 and len(answer.content) > values.nbytes

            for send in (over_grpc, over_http):
                for _ in range(40):
                    send()
                before = minor_faults(server.process.pid)
                for _ in range(20):
                    send()
                per_request = (minor_faults(server.process.pid) - before) / 20
                assert per_request < 160, f"{send.__name__}: {per_request:.0f} page faults per 4 MB request"
    finally:
        assert stop_server(server) == 0, server.output()


def test_the_allocator_setting_leaves_an_operators_own_alone():
    """MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the environment are glibc's own tuning: kept."""
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's allocator only")
    check = "from server.runtime.heap import keep_request_buffers as k; print(k())"
    for environment, expected in (({}, "True"), ({"MALLOC_TRIM_THRESHOLD_": "131072"}, "False")):
        done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True,
                              env={"PATH": "/usr/bin:/bin", **environment}, cwd=Path(__file__).parent.parent)
        assert done.stdout.strip() == expected
