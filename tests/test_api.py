"""Every API behaviour and error, asserted on HTTP and gRPC alike with tritonclient."""

import asyncio
import gzip
import json
import queue
import zlib

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from tests.test_control_modes import wait_for


def simple_inputs(api, batch=1, binary=True):
    a = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    b = np.full((batch, 16), 3, dtype=np.int32)
    return a, b, [api.input("INPUT0", a, binary=binary), api.input("INPUT1", b, binary=binary)]


def test_health_and_server_metadata(api):
    assert api.client.is_server_live()
    # strict readiness: the repository's 'broken' model failed to load
    assert not api.client.is_server_ready()
    metadata = api.client.get_server_metadata()
    metadata = (
        metadata
        if isinstance(metadata, dict)
        else {"name": metadata.name, "extensions": list(metadata.extensions)}
    )
    assert metadata["name"] == "ortserve"
    assert {"binary_tensor_data", "classification", "model_repository", "statistics"} <= set(
        metadata["extensions"]
    )


def test_model_metadata(api):
    metadata = api.metadata("simple")
    assert metadata["name"] == "simple"
    assert metadata["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in metadata["inputs"]] == [
        ("INPUT0", "INT32", [-1, 16]),
        ("INPUT1", "INT32", [-1, 16]),
    ]
    assert [t["name"] for t in metadata["outputs"]] == ["OUTPUT0", "OUTPUT1"]
    assert api.client.is_model_ready("simple")
    assert not api.client.is_model_ready("no_such_model")


@pytest.mark.parametrize("binary", [True, False])
def test_infer_simple(api, binary):
    a, b, inputs = simple_inputs(api, batch=3, binary=binary)
    outputs = [api.output("OUTPUT0", binary=binary), api.output("OUTPUT1", binary=binary)]
    result = api.client.infer("simple", inputs, outputs=outputs, request_id="req-7")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert (response["id"] if api.name == "http" else response.id) == "req-7"


def test_requested_output_subset(api):
    a, b, inputs = simple_inputs(api)
    result = api.client.infer("simple", inputs, outputs=[api.output("OUTPUT1")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0") is None


def test_all_outputs_when_none_requested(api):
    a, b, inputs = simple_inputs(api, batch=2)
    result = api.client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_async_infer(api):
    a, b, inputs = simple_inputs(api)
    if api.name == "http":
        result = api.client.async_infer("simple", inputs).get_result()
    else:
        done = queue.Queue()
        api.client.async_infer("simple", inputs, callback=lambda result, error: done.put((result, error)))
        result, error = done.get(timeout=30)
        assert error is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


def test_bytes_tensors(api):
    words = np.array([["alpha", "", "ünï", "d" * 300], ["e", "f", "g", "h"]], dtype=object)
    result = api.client.infer("simple_string", [api.input("INPUT0", words, "BYTES")])
    out = result.as_numpy("OUTPUT0")
    assert out.shape == (2, 4)
    assert [x.decode() if isinstance(x, bytes) else x for x in out.flat] == list(words.flat)


def test_fp16_and_bool_on_unbatched_model(api):
    half = np.array([0.5, -1.25, 3.0], dtype=np.float16)
    flags = np.array([True, False, True])
    result = api.client.infer("types", [api.input("half", half), api.input("flags", flags)])
    np.testing.assert_array_equal(result.as_numpy("doubled"), half * 2)
    assert result.as_numpy("doubled").dtype == np.float16
    np.testing.assert_array_equal(result.as_numpy("negated"), ~flags)


def test_classification(api):
    scores = np.array([[0.1, 3.0, 0.2, 2.0, 0.0], [5.0, 0.0, 0.0, 0.0, 1.0]], dtype=np.float32)
    result = api.client.infer(
        "classifier",
        [api.input("scores", scores)],
        outputs=[api.output("probabilities", class_count=2)],
    )
    top = result.as_numpy("probabilities")
    assert top.shape == (2, 2)
    first = [entry.decode().split(":") for entry in top[0]]
    assert [(index, label) for _, index, label in first] == [("1", "dog"), ("3", "fish")]
    probabilities = np.exp(scores[0]) / np.exp(scores[0]).sum()
    assert float(first[0][0]) == pytest.approx(probabilities[1], abs=1e-5)
    assert top[1][0].decode().endswith(":0:cat")


def test_config_completed_from_graph(api):
    config = api.config("relu")
    assert int(config["max_batch_size"]) == 4
    assert config["platform"] == "onnxruntime_onnx"
    assert "dynamic_batching" in config
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"]] == [
        ("x", "TYPE_FP32", [-1])
    ]
    x = np.array([[-1.0, 2.0, -3.0, 4.0, 0.5, -0.5, 7.0]] * 3, dtype=np.float32)
    result = api.client.infer("relu", [api.input("x", x)])
    np.testing.assert_array_equal(result.as_numpy("y"), np.maximum(x, 0))


def test_triton_config_is_served_as_written(api):
    config = api.config("simple")
    assert int(config["max_batch_size"]) == 8
    assert [int(d) for d in config["input"][0]["dims"]] == [16]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] in (100, "100")


def test_version_policy(api):
    x = np.array([[1]], dtype=np.int64)
    latest = api.client.infer("versioned", [api.input("x", x)])
    assert latest.as_numpy("y")[0, 0] == 301
    assert api.client.infer("versioned", [api.input("x", x)], model_version="2").as_numpy("y")[0, 0] == 201
    assert api.client.is_model_ready("versioned", "2")
    assert not api.client.is_model_ready("versioned", "1")
    assert api.metadata("versioned")["versions"] == ["2", "3"]
    with pytest.raises(InferenceServerException) as error:
        api.client.infer("versioned", [api.input("x", x)], model_version="1")
    api.assert_error(error.value, "NOT_FOUND", "version 1")


def test_a_specific_version_policy_serves_the_versions_that_exist(api):
    x = np.array([[1]], dtype=np.int64)
    assert api.client.infer("pinned", [api.input("x", x)]).as_numpy("y")[0, 0] == 101
    assert api.metadata("pinned")["versions"] == ["1"]
    rows = {row["version"]: row for row in api.index() if row["name"] == "pinned"}
    assert rows["1"]["state"] == "READY"
    assert rows["3"]["state"] == "UNAVAILABLE" and "no model file" in rows["3"]["reason"]
    assert "2" not in rows


def test_statistics_count_inferences(api):
    before = api.statistics("simple")[0]
    _, _, inputs = simple_inputs(api, batch=3)
    api.client.infer("simple", inputs)
    api.client.infer("simple", inputs)
    after = api.statistics("simple")[0]
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 6
    assert int(after["execution_count"]) - int(before.get("execution_count", 0)) == 2
    success = after["inference_stats"]["success"]
    assert int(success["count"]) - int(before["inference_stats"]["success"].get("count", 0)) == 2
    assert int(success["ns"]) > 0


def test_compression(api, server):
    if api.name == "http":
        a, b, inputs = simple_inputs(api)
        for request_algorithm, response_algorithm in (("gzip", "deflate"), ("deflate", "gzip")):
            result = api.client.infer(
                "simple",
                inputs,
                request_compression_algorithm=request_algorithm,
                response_compression_algorithm=response_algorithm,
            )
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        # large enough to be compressed and decompressed in a thread
        x = np.random.default_rng(0).standard_normal((1, 50_000)).astype(np.float32)
        for algorithm in ("gzip", "deflate"):
            answer = api.client.infer("relu", [api.input("x", x)], request_compression_algorithm=algorithm,
                                      response_compression_algorithm=algorithm)
            np.testing.assert_array_equal(answer.as_numpy("y"), np.maximum(x, 0))
        _assert_compressed_answers(server)
    else:
        a, b, inputs = simple_inputs(api)
        result = api.client.infer("simple", inputs, compression_algorithm="gzip")
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


@pytest.mark.parametrize("shape", [[1, 0], [3, 0]])
def test_zero_element_tensors_are_served(api, shape):
    """Triton takes a tensor with a 0 dimension and answers zero-element outputs of the model's shape."""
    result = api.client.infer("relu", [api.input("x", np.zeros(shape, np.float32))])
    assert result.as_numpy("y").shape == tuple(shape)


def _assert_compressed_answers(server) -> None:
    """tritonclient decompresses only a response that says Content-Encoding: the server must say it, and
    the bytes must be that encoding's."""
    body = json.dumps({"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": list(range(16))}
                                  for n in ("INPUT0", "INPUT1")]}).encode()
    url = f"http://127.0.0.1:{server.http_port}/v2/models/simple/infer"
    for encoding, decompress in (("gzip", gzip.decompress), ("deflate", zlib.decompress)):
        with httpx.stream("POST", url, content=body, headers={"Accept-Encoding": encoding}) as response:
            raw = b"".join(response.iter_raw())
        assert response.headers["content-encoding"] == encoding
        if encoding == "gzip":  # the header's XFL byte: 2 where compressed at level 9, 4 at level 1
            assert raw[8] == 0, "gzip at zlib's default level, as Triton"
        answer = json.loads(decompress(raw))
        outputs = {output["name"]: output["data"] for output in answer["outputs"]}
        assert outputs["OUTPUT0"] == [2 * i for i in range(16)]


# --- bad input: a clear error naming what was wrong, and the server keeps serving --------------


def infer_error(api, model, inputs, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as error:
        api.client.infer(model, inputs, **kwargs)
    return error.value


def test_unknown_model(api):
    _, _, inputs = simple_inputs(api)
    api.assert_error(infer_error(api, "no_such_model", inputs), "NOT_FOUND", "no_such_model")


def test_unknown_version(api):
    _, _, inputs = simple_inputs(api)
    api.assert_error(infer_error(api, "simple", inputs, model_version="9"), "NOT_FOUND", "version 9")


def test_misnamed_input(api):
    a, b, _ = simple_inputs(api)
    inputs = [api.input("INPUT0", a), api.input("INPUT9", b)]
    api.assert_error(infer_error(api, "simple", inputs), "INVALID_ARGUMENT", "INPUT9", "INPUT1")


def test_missing_input(api):
    """Triton's words, as its own tests check them (L0_input_validation)."""
    a, _, _ = simple_inputs(api)
    api.assert_error(
        infer_error(api, "simple", [api.input("INPUT0", a)]), "INVALID_ARGUMENT",
        "expected 2 inputs but got 1 inputs for model 'simple'. Got input(s) ['INPUT0'], but missing "
        "required input(s) ['INPUT1']. Please provide all required input(s)."
    )
    api.assert_error(
        infer_error(api, "simple", []), "INVALID_ARGUMENT",
        "expected 2 inputs but got 0 inputs for model 'simple'. Got input(s) [], but missing required "
        "input(s) ['INPUT0','INPUT1']. Please provide all required input(s)."
    )


def test_an_optional_input_left_out_takes_the_graphs_default(api):
    """config `optional: true` on an input the graph gives a default (an initializer it may override)."""
    one = np.array([1], np.float32)
    assert api.client.infer("optional", [api.input("a", one)]).as_numpy("y").tolist() == [11]
    both = [api.input("a", one), api.input("b", np.array([2], np.float32))]
    assert api.client.infer("optional", both).as_numpy("y").tolist() == [3]
    api.assert_error(
        infer_error(api, "optional", [api.input("b", one)]), "INVALID_ARGUMENT",
        "expected number of inputs between 1 and 2 but got 1 inputs for model 'optional'. Got input(s) "
        "['b'], but missing required input(s) ['a']. Please provide all required input(s)."
    )


def test_extra_input(api):
    a, b, inputs = simple_inputs(api)
    inputs.append(api.input("EXTRA", a))
    api.assert_error(infer_error(api, "simple", inputs), "INVALID_ARGUMENT", "EXTRA")
    repeated = [api.input("INPUT0", a), api.input("INPUT0", a)]
    api.assert_error(infer_error(api, "simple", repeated), "INVALID_ARGUMENT",
                     "input 'INPUT0' already exists in request")


def test_wrong_datatype(api):
    a, b, _ = simple_inputs(api)
    inputs = [api.input("INPUT0", a.astype(np.float32)), api.input("INPUT1", b)]
    api.assert_error(infer_error(api, "simple", inputs), "INVALID_ARGUMENT", "INPUT0", "FP32", "INT32")


def test_wrong_shape(api):
    inputs = [api.input(n, np.zeros((1, 15), dtype=np.int32)) for n in ("INPUT0", "INPUT1")]
    api.assert_error(infer_error(api, "simple", inputs), "INVALID_ARGUMENT", "INPUT0", "[-1,16]", "[1,15]")


def test_batch_over_max_batch_size(api):
    """Triton's words, which clients match (PyTriton splits a batch where it reads them)."""
    _, _, inputs = simple_inputs(api, batch=9)
    api.assert_error(infer_error(api, "simple", inputs), "INVALID_ARGUMENT",
                     "inference request batch-size must be <= 8 for 'simple'")
    a, b, _ = simple_inputs(api, batch=2)
    uneven = [api.input("INPUT0", a), api.input("INPUT1", b[:1])]
    api.assert_error(infer_error(api, "simple", uneven), "INVALID_ARGUMENT",
                     "input 'INPUT1' batch size does not match other inputs for 'simple'")


def test_unknown_output(api):
    _, _, inputs = simple_inputs(api)
    error = infer_error(api, "simple", inputs, outputs=[api.output("OUTPUT7")])
    api.assert_error(error, "INVALID_ARGUMENT", "OUTPUT7", "OUTPUT0")


def test_broken_model_is_unavailable_with_reason(api):
    rows = {row["name"]: row for row in api.index()}
    assert rows["broken"]["state"] == "UNAVAILABLE"
    assert "model.onnx" in rows["broken"]["reason"] or "protobuf" in rows["broken"]["reason"].lower()
    assert rows["simple"]["state"] == "READY"
    x = np.zeros((1, 1), dtype=np.int64)
    failed = infer_error(api, "broken", [api.input("x", x)])  # Triton's words, then the reason
    api.assert_error(failed, "NOT_FOUND", "Request for unknown model: 'broken' has no available versions",
                     "model.onnx" if "model.onnx" in rows["broken"]["reason"] else "rotobuf")
    one = infer_error(api, "broken", [api.input("x", x)], model_version="1")
    api.assert_error(one, "UNAVAILABLE",
                     "Request for unknown model: 'broken' version 1 is not at ready state")


def test_statistics_of_a_version_not_ready_as_triton_words_it(api):
    with pytest.raises(InferenceServerException) as error:
        api.client.get_inference_statistics("simple", "7")
    api.assert_error(error.value, "INVALID_ARGUMENT",
                     "requested model version is not available for model 'simple'")


def test_load_and_unload(api):
    api.client.unload_model("relu")
    assert not api.client.is_model_ready("relu")
    rows = {row["name"]: row for row in api.index()}
    assert rows["relu"]["state"] == "UNAVAILABLE"
    x = np.ones((1, 2), dtype=np.float32)
    unloaded = infer_error(api, "relu", [api.input("x", x)])
    api.assert_error(unloaded, "NOT_FOUND", "Request for unknown model: 'relu' is not found")
    api.client.load_model("relu")
    assert api.client.is_model_ready("relu")
    np.testing.assert_array_equal(api.client.infer("relu", [api.input("x", x)]).as_numpy("y"), x)


def test_load_with_config_override(api):
    api.client.load_model("relu", config='{"max_batch_size": 2}')
    try:
        assert int(api.config("relu")["max_batch_size"]) == 2
        x = np.ones((3, 2), dtype=np.float32)
        api.assert_error(infer_error(api, "relu", [api.input("x", x)]), "INVALID_ARGUMENT", "batch-size")
        api.client.load_model("relu")  # without config: the override stays, as in Triton
        assert int(api.config("relu")["max_batch_size"]) == 2
    finally:
        api.client.unload_model("relu")  # unloading forgets it
        api.client.load_model("relu")
    assert int(api.config("relu")["max_batch_size"]) == 4


def test_load_unknown_model(api):
    with pytest.raises(InferenceServerException) as error:
        api.client.load_model("no_such_model")
    api.assert_error(error.value, "NOT_FOUND",
                     "failed to load 'no_such_model', failed to poll from model repository")


def test_load_broken_model_names_the_reason(api):
    with pytest.raises(InferenceServerException) as error:
        api.client.load_model("broken")
    api.assert_error(error.value, "INVALID_ARGUMENT", "load failed for model 'broken'")


# --- gRPC streaming and the asyncio client ----------------------------------------------------


def test_grpc_stream_infer(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    results = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    expected = {}
    for index in range(5):
        a = np.full((1, 16), index, dtype=np.int32)
        inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        for tensor in inputs:
            tensor.set_data_from_numpy(a)
        client.async_stream_infer("simple", inputs, request_id=str(index))
        expected[str(index)] = a + a
    bad = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    bad.set_data_from_numpy(np.zeros((1, 16), dtype=np.int32))
    client.async_stream_infer("simple", [bad], request_id="bad")
    answers = [results.get(timeout=30) for _ in range(6)]
    client.stop_stream()
    client.close()
    errors = [error for _, error in answers if error is not None]
    assert len(errors) == 1 and "INPUT1" in errors[0].message()
    for result, error in answers:
        if error is None:
            request_id = result.get_response().id
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), expected.pop(request_id))
    assert not expected


def test_grpc_stream_answers_plain_requests_in_their_order_and_errors_name_their_request(server):
    """As Triton: on one ModelStreamInfer stream a plain model's answers come back in the order of the
    requests, even where a later one finishes first (`padded` waits out a 200 ms batching delay,
    `simple` does not), and an error carries its request's id."""
    from loadtest.client import grpc_message
    from server.protocol import SERVICE_NAME, message

    ones = np.ones((1, 16), np.int32)
    sent = [grpc_message("padded", {"x": np.ones((1, 8), np.float32)}, request_id="slow"),
            grpc_message("simple", {"INPUT0": ones, "INPUT1": ones}, request_id="fast"),
            grpc_message("simple", {"INPUT0": ones}, request_id="bad"),
            b"not a protobuf",
            grpc_message("simple", {"INPUT0": ones, "INPUT1": 2 * ones}, request_id="last")]

    async def run():
        async with grpc.aio.insecure_channel(server.grpc_url) as channel:
            stream = channel.stream_stream(f"/{SERVICE_NAME}/ModelStreamInfer",
                                           response_deserializer=message("ModelStreamInferResponse").FromString)
            return [answer async for answer in stream(iter(sent))]

    answers = asyncio.run(run())
    assert [a.infer_response.id for a in answers] == ["slow", "fast", "bad", "", "last"]
    assert [bool(a.error_message) for a in answers] == [False, False, True, True, False]
    assert "INPUT1" in answers[2].error_message and "malformed" in answers[3].error_message
    last = np.frombuffer(answers[4].infer_response.raw_output_contents[0], np.int32)
    assert last.tolist() == [3] * 16


def relu_stream_unread(server, count: int):
    """A raw ModelStreamInfer call to `relu` and a task writing `count` requests of 256 KB to it (ids 0,
    1, ...), whose answers nobody reads yet."""
    from loadtest.client import grpc_message
    from server.protocol import SERVICE_NAME, message

    tensor = np.ones((1, 1 << 16), np.float32)
    channel = grpc.aio.insecure_channel(server.grpc_url)
    call = channel.stream_stream(f"/{SERVICE_NAME}/ModelStreamInfer",
                                 response_deserializer=message("ModelStreamInferResponse").FromString)()

    async def write():
        for index in range(count):
            await call.write(grpc_message("relu", {"x": tensor}, request_id=str(index)))
        await call.done_writing()

    return channel, call, asyncio.create_task(write())


def relu_inferences(server) -> int:
    stats = httpx.get(f"http://{server.http_url}/v2/models/relu/stats").json()["model_stats"]
    return sum(entry["inference_count"] for entry in stats)


def test_a_stream_whose_client_stops_reading_stops_running_its_requests(server):
    """A client that writes requests but reads no answers must not make the server run them all and hold
    every answer: past its IN_FLIGHT requests a stream reads no more until answers are taken. Once the
    client reads, every answer comes back, in order."""
    from server.api.grpc.stream import IN_FLIGHT

    async def run():
        before = relu_inferences(server)
        channel, call, writing = relu_stream_unread(server, 4 * IN_FLIGHT)
        async with channel:
            await asyncio.sleep(2)
            ran_unread = relu_inferences(server) - before
            answers = [answer async for answer in call]
            await writing
        return ran_unread, answers

    ran_unread, answers = asyncio.run(run())
    # the stream's slots, plus the few answers that fit the connection's buffers before the client reads
    assert ran_unread < 2 * IN_FLIGHT, ran_unread
    assert [answer.infer_response.id for answer in answers] == [str(index) for index in range(4 * IN_FLIGHT)]
    assert not any(answer.error_message for answer in answers)


def test_a_stream_cancelled_while_its_answers_wait_ends_quietly(server):
    """Cancelling a stream whose answers wait to be sent is the client's right: the server logs no error,
    its access line says CANCELLED, and it goes on serving streams. (grpc tells the handler either way:
    the pending write fails, which the server logs in one INFO line, or the handler is cancelled first.)"""
    from server.api.grpc.stream import IN_FLIGHT

    logged, before = len(server.output()), relu_inferences(server)

    async def cancel():
        channel, call, writing = relu_stream_unread(server, 4 * IN_FLIGHT)
        async with channel:
            # every slot taken: answers wait behind the client's full window, and one is being written
            assert await asyncio.to_thread(wait_for, lambda: relu_inferences(server) - before >= IN_FLIGHT)
            call.cancel()
            writing.cancel()
        await asyncio.sleep(0.5)

    asyncio.run(cancel())
    ended = '"target":"ModelStreamInfer","status":"CANCELLED"'  # the access line, once the handler ends
    assert wait_for(lambda: ended in server.output()[logged:]), server.output()[logged:]
    said = server.output()[logged:]
    assert "ERROR" not in said, said
    client = grpcclient.InferenceServerClient(server.grpc_url)
    results = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array([[-1, 2, -3, 4]], np.float32))
    client.async_stream_infer("relu", [tensor])
    result, error = results.get(timeout=30)
    client.stop_stream()
    client.close()
    assert error is None and result.as_numpy("y").tolist() == [[0, 2, 0, 4]]


def test_a_stream_started_with_triton_grpc_error_ends_at_its_first_error_with_its_status(server):
    """Triton's `triton_grpc_error: true` stream metadata: the first error ends the stream with its gRPC
    status (tritonclient hands it to the callback), and nothing after it is answered. Without it, the
    stream answers the error in a message and goes on."""
    ones = np.ones((1, 16), np.int32)

    def inputs(count: int):
        tensors = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")[:count]]
        for tensor in tensors:
            tensor.set_data_from_numpy(ones)
        return tensors

    for headers, expected in (({"triton_grpc_error": "true"}, ["ok", "StatusCode.INVALID_ARGUMENT"]),
                              (None, ["ok", "error", "ok"])):
        client = grpcclient.InferenceServerClient(server.grpc_url)
        results = queue.Queue()
        client.start_stream(callback=lambda result, error, into=results: into.put((result, error)),
                            headers=headers)
        for count in (2, 1, 2):  # the second request lacks INPUT1
            client.async_stream_infer("simple", inputs(count))
        seen = []
        while len(seen) < len(expected):
            result, error = results.get(timeout=30)
            seen.append("ok" if error is None else str(error.status()) if headers else "error")
        with pytest.raises(queue.Empty):
            results.get(timeout=0.5)  # nothing after the error where the stream ended
        client.stop_stream()
        client.close()
        assert seen == expected


def test_grpc_aio_client(server):
    async def run():
        client = grpcaio.InferenceServerClient(server.grpc_url)
        try:
            assert await client.is_server_live()
            a = np.arange(32, dtype=np.int32).reshape(2, 16)
            inputs = [grpcaio.InferInput(n, [2, 16], "INT32") for n in ("INPUT0", "INPUT1")]
            for tensor in inputs:
                tensor.set_data_from_numpy(a)
            results = await asyncio.gather(*(client.infer("simple", inputs) for _ in range(8)))
            for result in results:
                np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros_like(a))
            config = await client.get_model_config("simple", as_json=True)
            assert config["config"]["name"] == "simple"

            async def requests():
                for index in range(3):
                    yield {"model_name": "simple", "inputs": inputs, "request_id": str(index)}

            ids = set()
            async for result, error in client.stream_infer(requests()):
                assert error is None
                ids.add(result.get_response().id)
            assert ids == {"0", "1", "2"}
        finally:
            await client.close()

    asyncio.run(run())


@pytest.mark.parametrize("model, dims", [("scalar", [1]), ("scalar_bare", [1]), ("scalar_square", [1, 1])])
def test_scalar_inputs_and_outputs_travel_as_one_element(api, model, dims):
    result = api.client.infer(model, [api.input("s", np.full(dims, 21.0, np.float32))])
    assert result.as_numpy("doubled").tolist() == np.full(dims, 42.0).tolist()
    config = api.config(model)
    assert [int(d) for d in config["input"][0]["dims"]] == dims and "reshape" in config["input"][0]


def test_large_tensors_come_back_whole_through_the_in_place_paths(api):
    """Past 64 KB a binary answer leaves as views of its arrays (HTTP) and gRPC reads and writes raw
    contents in place: the values must still be exactly the model's."""
    x = np.random.default_rng(3).standard_normal((2, 30_000)).astype(np.float32)  # 240 KB
    outputs = [api.module.InferRequestedOutput("y", binary_data=True) if api.name == "http"
               else api.module.InferRequestedOutput("y")]
    result = api.client.infer("relu", [api.input("x", x)], outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("y"), np.maximum(x, 0))
