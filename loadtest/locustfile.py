"""Locust users for ortserve: HTTP infer (binary and JSON), gRPC infer through tritonclient, and
streaming generation (reporting time to first token as its own entry).

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000   (gRPC at ORTSERVE_GRPC, default :8001)

Infer requests go to the `simple` model of the default repository (ORTSERVE_MODEL to change it),
generation to `gpt` (ORTSERVE_GENERATION_MODEL).
"""

import json
import os
import time
from urllib.parse import urlparse

import numpy as np
import tritonclient.grpc as grpcclient
from locust import HttpUser, User, between, events, task

MODEL = os.environ.get("ORTSERVE_MODEL", "simple")
GENERATION_MODEL = os.environ.get("ORTSERVE_GENERATION_MODEL", "gpt")
A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.ones((1, 16), dtype=np.int32)
EXPECTED = (A + B).ravel().tolist()


def _json_body() -> dict:
    return {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": A.ravel().tolist()},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": B.ravel().tolist()},
        ],
        "outputs": [{"name": "OUTPUT0"}],
    }


def _binary_body() -> tuple[bytes, dict]:
    header = {
        "inputs": [
            {"name": name, "datatype": "INT32", "shape": [1, 16], "parameters": {"binary_data_size": 64}}
            for name in ("INPUT0", "INPUT1")
        ],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
    }
    encoded = json.dumps(header).encode()
    return encoded + A.tobytes() + B.tobytes(), {"Inference-Header-Content-Length": str(len(encoded))}


class HttpInferUser(HttpUser):
    wait_time = between(0, 0.01)

    @task
    def json_infer(self):
        with self.client.post(
            f"/v2/models/{MODEL}/infer", json=_json_body(), name="http json infer", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text}")
            elif response.json()["outputs"][0]["data"] != EXPECTED:
                response.failure("wrong answer")

    @task
    def binary_infer(self):
        body, headers = _binary_body()
        with self.client.post(
            f"/v2/models/{MODEL}/infer",
            data=body,
            headers=headers,
            name="http binary infer",
            catch_response=True,
        ) as response:
            length = int(response.headers.get("Inference-Header-Content-Length", 0))
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text}")
            elif np.frombuffer(response.content[length:], dtype="<i4").tolist() != EXPECTED:
                response.failure("wrong answer")


class GrpcInferUser(User):
    """A locust user on tritonclient.grpc; each call is reported to locust as a request."""

    wait_time = between(0, 0.01)

    def on_start(self):
        default = f"{urlparse(self.host).hostname or '127.0.0.1'}:8001"
        self.client = grpcclient.InferenceServerClient(os.environ.get("ORTSERVE_GRPC", default))
        self.inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        self.inputs[0].set_data_from_numpy(A)
        self.inputs[1].set_data_from_numpy(B)

    def on_stop(self):
        self.client.close()

    @task
    def grpc_infer(self):
        start, error, size = time.perf_counter(), None, 0
        try:
            result = self.client.infer(MODEL, self.inputs)
            output = result.as_numpy("OUTPUT0")
            size = output.nbytes
            if output.ravel().tolist() != EXPECTED:
                error = AssertionError("wrong answer")
        except Exception as failure:  # every failure is reported to locust, none is raised
            error = failure
        events.request.fire(
            request_type="grpc",
            name="grpc infer",
            response_time=(time.perf_counter() - start) * 1000,
            response_length=size,
            exception=error,
            context={},
        )


class GenerationUser(HttpUser):
    """Streams a completion over server-sent events; the first token's arrival is reported as
    "generation time to first token", the whole stream as "generate_stream"."""

    wait_time = between(0, 0.05)
    body = {"text_input": "def main(", "parameters": {"max_tokens": 16, "temperature": 0.8}}

    @task
    def generate_stream(self):
        start, first, error, pieces = time.perf_counter(), None, None, 0
        with self.client.post(
            f"/v2/models/{GENERATION_MODEL}/generate_stream", json=self.body, stream=True,
            name="generate_stream", catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text}")
                return
            for line in response.iter_lines():
                if not line.startswith(b"data: "):
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    error = event["error"]
                    break
                if first is None:
                    first = time.perf_counter()
                    events.request.fire(
                        request_type="SSE", name="generation time to first token",
                        response_time=(first - start) * 1000, response_length=0, exception=None, context={},
                    )
                pieces += 1
            if error is not None or pieces == 0:
                response.failure(error or "no tokens")
