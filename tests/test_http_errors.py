"""Malformed HTTP requests: each gets a 4xx with {"error": ...} naming the problem; serving goes on."""

import gzip
import json
import re
import struct

import httpx
import numpy as np
import pytest

from server.api.http.body import INFLATE_IN_THREAD_FROM
from server.core import jsontext
from server.core.errors import InvalidArgument

SIXTEEN = list(range(16))


@pytest.fixture
def http(server):
    with httpx.Client(base_url=f"http://{server.http_url}", timeout=30) as client:
        yield client
    assert server.process.poll() is None
    # the server keeps serving after every bad request
    with httpx.Client(base_url=f"http://{server.http_url}") as client:
        assert client.post("/v2/models/simple/infer", json=simple_request()).status_code == 200


def simple_request(**overrides) -> dict:
    request = {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": SIXTEEN},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": SIXTEEN},
        ]
    }
    request.update(overrides)
    return request


def binary_request(header: dict, *chunks: bytes, header_length=None) -> tuple[bytes, dict]:
    encoded = json.dumps(header).encode()
    length = len(encoded) if header_length is None else header_length
    return encoded + b"".join(chunks), {"Inference-Header-Content-Length": str(length)}


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for fragment in fragments:
        assert fragment in message, message


def test_json_infer_with_nested_data(http):
    request = simple_request()
    request["inputs"][0]["data"] = [SIXTEEN]
    response = http.post("/v2/models/simple/infer", json=request)
    assert response.status_code == 200
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["OUTPUT0"]["data"] == [2 * x for x in SIXTEEN]
    assert outputs["OUTPUT0"]["shape"] == [1, 16]


def test_binary_output_when_asked(http):
    request = simple_request(outputs=[{"name": "OUTPUT1", "parameters": {"binary_data": True}}])
    response = http.post("/v2/models/simple/infer", json=request)
    length = int(response.headers["Inference-Header-Content-Length"])
    header = json.loads(response.content[:length])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 64
    assert np.frombuffer(response.content[length:], dtype="<i4").tolist() == [0] * 16


def test_malformed_json(http):
    response = http.post("/v2/models/simple/infer", content=b'{"inputs": [')
    assert_error(response, 400, "malformed JSON")


def test_json_not_an_object(http):
    assert_error(http.post("/v2/models/simple/infer", json=[1, 2]), 400, "JSON object")


def test_no_inputs(http):
    assert_error(http.post("/v2/models/simple/infer", json={}), 400, "inputs")


def test_input_without_datatype(http):
    request = simple_request()
    del request["inputs"][0]["datatype"]
    assert_error(http.post("/v2/models/simple/infer", json=request), 400, "datatype")


def test_unknown_datatype(http):
    request = simple_request()
    request["inputs"][0]["datatype"] = "INT33"
    assert_error(http.post("/v2/models/simple/infer", json=request), 400, "INT33", "INT32")


def test_shape_and_data_length_disagree(http):
    request = simple_request()
    request["inputs"][1]["data"] = SIXTEEN[:15]
    assert_error(http.post("/v2/models/simple/infer", json=request), 400, "INPUT1", "16 elements", "15")


def test_data_of_the_wrong_kind(http):
    request = simple_request()
    request["inputs"][0]["data"] = ["a"] * 16
    assert_error(http.post("/v2/models/simple/infer", json=request), 400, "INPUT0", "numbers")


def test_negative_dimension(http):
    request = simple_request()
    request["inputs"][0]["shape"] = [-1, 16]
    assert_error(http.post("/v2/models/simple/infer", json=request), 400, "INPUT0", "dimensions")


def binary_input0_header(size: int) -> dict:
    header = simple_request()
    header["inputs"][0] = {
        "name": "INPUT0",
        "datatype": "INT32",
        "shape": [1, 16],
        "parameters": {"binary_data_size": size},
    }
    return header


def test_binary_size_does_not_match_shape(http):
    raw = np.zeros(16, dtype=np.int32).tobytes()
    body, headers = binary_request(binary_input0_header(60), raw[:60])
    assert_error(  # Triton's words
        http.post("/v2/models/simple/infer", content=body, headers=headers),
        400,
        "input byte size mismatch for input 'INPUT0' for model 'simple'. Expected 64, got 60",
    )


def test_binary_sizes_do_not_add_up(http):
    raw = np.zeros(16, dtype=np.int32).tobytes()
    body, headers = binary_request(binary_input0_header(64), raw, b"trailing")
    assert_error(http.post("/v2/models/simple/infer", content=body, headers=headers), 400, "72 bytes", "64")


def test_binary_size_past_the_end(http):
    body, headers = binary_request(binary_input0_header(64), b"\0" * 10)
    assert_error(
        http.post("/v2/models/simple/infer", content=body, headers=headers),
        400,
        "INPUT0",
        "64 bytes",
        "10 remain",
    )


def test_header_length_past_the_body(http):
    body, headers = binary_request(simple_request(), header_length=10**6)
    assert_error(
        http.post("/v2/models/simple/infer", content=body, headers=headers),
        400,
        "Inference-Header-Content-Length",
    )


def test_bytes_element_length_past_the_end(http):
    raw = struct.pack("<I", 100) + b"abc"
    header = {
        "inputs": [
            {
                "name": "INPUT0",
                "datatype": "BYTES",
                "shape": [1, 4],
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    body, headers = binary_request(header, raw)
    assert_error(
        http.post("/v2/models/simple_string/infer", content=body, headers=headers),
        400,
        "INPUT0",
        "100 bytes",
    )


def test_bytes_in_json(http):
    request = {
        "inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 4], "data": ["a", "b", "c", "d"]}]
    }
    response = http.post("/v2/models/simple_string/infer", json=request)
    assert response.json()["outputs"][0]["data"] == ["a", "b", "c", "d"]
    request["inputs"][0]["data"] = [1, 2, 3, 4]
    assert_error(http.post("/v2/models/simple_string/infer", json=request), 400, "strings")


def test_body_over_the_limit(http):
    # the test server runs with --max-request-bytes 1048576
    response = http.post("/v2/models/simple/infer", content=b" " * (2 * 1024 * 1024))
    assert_error(response, 400, "Request JSON size of 2097152 bytes exceeds the maximum allowed value of "
                 "1048576 bytes. Use --http-max-input-size to increase the limit.")
    raw = http.post("/v2/models/simple/infer", content=b"\0" * (2 * 1024 * 1024),
                    headers={"Inference-Header-Content-Length": "0"})
    assert_error(raw, 400, "Request size of 2097152 bytes exceeds the maximum allowed value")


def test_compressed_body_over_the_limit(http):
    bomb = gzip.compress(b" " * (4 * 1024 * 1024))  # 4 KB: one repeated byte inflates about 1000-fold
    bits = gzip.compress(np.random.default_rng(0).integers(0, 2, 2 << 20, dtype=np.uint8).tobytes())
    # both large enough to be inflated in a thread; the second under the limit before it is inflated
    assert INFLATE_IN_THREAD_FROM <= len(bomb) and INFLATE_IN_THREAD_FROM <= len(bits) < 1 << 20
    for body in (bomb, bits):
        response = http.post("/v2/models/simple/infer", content=body, headers={"Content-Encoding": "gzip"})
        assert_error(response, 400, "Request JSON size once decompressed (gzip) exceeds the maximum allowed "
                     "value of 1048576 bytes")


def test_unsupported_and_corrupt_encoding(http):
    body = json.dumps(simple_request()).encode()
    response = http.post("/v2/models/simple/infer", content=body, headers={"Content-Encoding": "br"})
    assert_error(response, 400, "br", "gzip")
    response = http.post("/v2/models/simple/infer", content=body, headers={"Content-Encoding": "gzip"})
    assert_error(response, 400, "gzip")


def test_unknown_route_and_method(http):
    assert_error(http.get("/v2/no/such/route"), 404, "Not Found")
    response = http.get("/v2/models/simple/infer")
    assert_error(response, 405, "GET", "POST")
    assert response.headers["allow"] == "POST"


def test_non_numeric_version(http):
    assert_error(http.post("/v2/models/simple/versions/x1/infer", json=simple_request()), 400, "x1")


def test_repository_index_body(http):
    assert_error(http.post("/v2/repository/index", content=b"{"), 400, "malformed JSON")
    rows = http.post("/v2/repository/index", json={"ready": True}).json()
    assert rows and all(row["state"] == "READY" for row in rows)


def test_health_endpoints(http):
    assert http.get("/v2/health/live").status_code == 200
    assert http.get("/v2/models/simple/ready").status_code == 200
    assert http.get("/v2/models/nope/ready").status_code == 400


def _nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@pytest.mark.parametrize("depth", [101, 5000])
def test_json_nested_too_deep_is_refused_on_every_route(http, depth):
    deep = _nested(depth)
    for path, body in (
        ("/v2/models/simple/infer", f'{{"inputs": [{{"name": "INPUT0", "data": {deep}}}]}}'),
        ("/v2/repository/index", f'{{"ready": {deep}}}'),
        ("/v2/repository/models/simple/load", f'{{"parameters": {{"config": {deep}}}}}'),
    ):
        response = http.post(path, content=body.encode())
        assert_error(response, 400, "JSON nesting depth exceeds maximum allowed limit (100)")


def test_json_nested_within_the_limit_is_parsed(http):
    request = simple_request()
    # the document, its inputs, the input, 96 levels, the values: 100 levels
    request["inputs"][0]["data"] = json.loads(_nested(96).replace("1", json.dumps(SIXTEEN)))
    response = http.post("/v2/models/simple/infer", json=request)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [2 * x for x in SIXTEEN]


def test_json_with_more_brackets_than_the_limit_each_shallow_is_parsed():
    shallow = [[i] for i in range(300)]  # 301 opening brackets, 2 levels
    assert jsontext.loads(json.dumps(shallow).encode()) == shallow
    too_deep = re.escape("JSON nesting depth exceeds maximum allowed limit (100)")
    with pytest.raises(InvalidArgument, match=too_deep):
        jsontext.loads(json.dumps([shallow, json.loads(_nested(100))]))


def test_json_that_only_pythons_parser_takes_reads_as_before():
    """Bodies go through orjson first; what it refuses and Python's json module takes (NaN, Infinity, a
    lone surrogate) still reads, integers past 64 bits (which orjson would round) read whole, and what
    both refuse is named in Python's words."""
    value = jsontext.loads(b'{"a": [NaN, Infinity, -Infinity, 1.5]}')
    assert np.isnan(value["a"][0]) and value["a"][1:] == [float("inf"), float("-inf"), 1.5]
    assert jsontext.loads(b'{"s": "\\ud800"}') == {"s": "\ud800"}
    for whole in (2**64, -(2**63) - 1, 10**30):  # orjson would read these as floats, rounded
        assert jsontext.loads(f'{{"n": [1.5, {whole}]}}'.encode()) == {"n": [1.5, whole]}
    with pytest.raises(InvalidArgument, match=r"malformed JSON in request body: Expecting ',' delimiter"):
        jsontext.loads(b"[1, 2")


def test_json_tensor_elements_of_the_wrong_kind_are_named(http):
    for datatype, values, fragment in (("INT64", [1] * 15 + [-(2**63) - 1],
                                        f"{-(2**63) - 1} is outside {-(2**63)}..{2**63 - 1}"),
                                       ("UINT64", [1] * 15 + [2**64], f"{2**64} is outside 0..{2**64 - 1}"),
                                       ("INT32", [1] * 15 + [True], "its elements must be numbers"),
                                       ("INT32", [1] * 15 + ["2"], "its elements must be numbers"),
                                       ("BOOL", [True] * 15 + [1], "its elements must be true or false"),
                                       ("BYTES", ["a"] * 15 + [1], "its elements must be strings")):
        for data in (values, [values[:8], [values[8:]]]):  # flat, and nested to different depths
            request = {"inputs": [{"name": "INPUT0", "datatype": datatype, "shape": [1, 16], "data": data}]}
            response = http.post("/v2/models/simple/infer", json=request)
            assert_error(response, 400, f"input 'INPUT0' is {datatype}: {fragment}")


def test_body_that_is_not_utf8(http):
    response = http.post("/v2/models/simple/infer", content=b'{"inputs": "\xff\xfe"}')
    assert_error(response, 400, "inference request is not UTF-8 (byte 0xff at position 12)")


@pytest.mark.parametrize("values, fragment", [
    ([0.5] + SIXTEEN[1:], "input 'INPUT0' is INT32: 0.5 is not an integer"),
    ([2**31] + SIXTEEN[1:], "input 'INPUT0' is INT32: 2147483648 is outside -2147483648..2147483647"),
])
def test_numbers_must_fit_the_datatype(http, values, fragment):
    request = simple_request()
    request["inputs"][0]["data"] = values
    assert_error(http.post("/v2/models/simple/infer", json=request), 400, fragment)


def test_booleans_must_be_json_booleans(http):
    request = simple_request(outputs=[{"name": "OUTPUT0", "parameters": {"binary_data": "false"}}])
    assert_error(http.post("/v2/models/simple/infer", json=request), 400, "'binary_data' must be true")
    request = simple_request(parameters={"binary_data_output": "no"})
    assert_error(http.post("/v2/models/simple/infer", json=request), 400, "'binary_data_output' must be true")


def _raw(http, model: str, body, **headers):
    return http.post(f"/v2/models/{model}/infer", content=body,
                     headers={"Inference-Header-Content-Length": "0", **headers})


def _binary_output(response) -> tuple[dict, bytes]:
    length = int(response.headers["Inference-Header-Content-Length"])
    return json.loads(response.content[:length]), response.content[length:]


def test_raw_binary_request_takes_the_one_input_with_the_batch_from_the_byte_count(http):
    scores = np.array([[0, 0, 9, 0, 0], [5, 0, 0, 0, 0]], dtype="<f4")
    header, data = _binary_output(_raw(http, "classifier", scores.tobytes()))
    assert header["outputs"][0]["shape"] == [2, 5]
    assert np.frombuffer(data, dtype="<f4").reshape(2, 5).argmax(axis=1).tolist() == [2, 0]
    chunked = _raw(http, "classifier", iter([scores.tobytes()[:13], scores.tobytes()[13:]]))
    assert _binary_output(chunked)[1] == data
    zipped = _raw(http, "classifier", gzip.compress(scores.tobytes()), **{"Content-Encoding": "gzip"})
    assert _binary_output(zipped)[1] == data


def test_raw_binary_request_deduces_the_one_variable_dim_and_takes_bytes_whole(http):
    values = np.array([-1, 2, -3, 4, 5], dtype="<f4")
    header, data = _binary_output(_raw(http, "relu", values.tobytes()))  # x: FP32 [batch, n]
    assert header["outputs"][0]["shape"] == [1, 5]
    assert np.frombuffer(data, dtype="<f4").tolist() == [0, 2, 0, 4, 5]
    text = "é, with its length prefix the server's to add".encode()
    header, data = _binary_output(_raw(http, "string_one", text))  # INPUT0: BYTES [batch, 1]
    assert header["outputs"][0]["shape"] == [1, 1]
    assert data == struct.pack("<I", len(text)) + text


@pytest.mark.parametrize("model, body, fragment", [
    ("simple", b"\0" * 128, "Raw request must only have 1 input (found 1) to be deduced but got 2 inputs in "
                             "'simple' model configuration"),
    ("relu_grid", b"\0" * 16, "The shape of the raw input 'x' can not be deduced because there are more "
                              "than one variable-sized dimension"),
    ("simple_string", b"abcd", "For BYTE datatype raw input 'INPUT0', the model must have input shape [1]"),
    ("relu", b"\0" * 6, "6 bytes does not hold whole items of input 'x' of model 'relu' (FP32 [-1] each)"),
    ("classifier", b"\0" * 36, "36 bytes does not hold whole items of input 'scores' of model 'classifier'"),
    ("classifier", b"", "0 bytes does not hold whole items"),
])
def test_raw_binary_request_that_does_not_fit(http, model, body, fragment):
    assert_error(_raw(http, model, body), 400, fragment)


def test_every_refusal_has_a_json_error_body(http):
    big = {"parameters": {"config": "{}", "file:1/model.onnx": "A" * (2 * 1024 * 1024)}}
    for response in (
        http.post("/v2/repository/models/simple/load", json=big),
        http.post("/v2/repository/models/simple/load", content=b"{" * 10),
        http.get("/v2/no/such/route"),
        http.put("/v2/models/simple/infer", json={}),
        http.post("/v2/models/simple/infer", content=b"\xff\xfe"),
        http.post("/v2/models/simple/infer", content=b"x" * 2048,
                  headers={"Inference-Header-Content-Length": "9"}),
    ):
        assert 400 <= response.status_code < 500, response.text
        assert isinstance(response.json()["error"], str), response.text


def test_binary_bytes_input_with_the_wrong_element_count_is_refused_in_tritons_words(http):
    data = b"".join(struct.pack("<I", 1) + c for c in (b"a", b"b", b"c"))
    header = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 4],
                                     "parameters": {"binary_data_size": len(data)}}]}).encode()
    response = http.post("/v2/models/simple_string/infer", content=header + data,
                         headers={"Inference-Header-Content-Length": str(len(header))})
    assert_error(response, 400, "expected 4 string elements for inference input 'INPUT0' for model "
                                "'simple_string', got 3")
