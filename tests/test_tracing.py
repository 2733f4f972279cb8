"""Triton's trace extension exported through OpenTelemetry, received here by a local OTLP/HTTP endpoint,
and Triton's logging extension, against real server processes."""

import gzip
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from tritonclient.utils import InferenceServerException

from exporters import gpt, training
from loadtest.server_process import start_server, stop_server
from server.tracing.settings import TraceSetting, TraceSettings, setting_from_config
from server.tracing.spans import OtlpExport
from tests.models import build_repository
from tests.test_exporters import tiny_gpt

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
TIMESTAMPS = ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
              "COMPUTE_END", "REQUEST_END"]


class Collector:
    """An OTLP/HTTP traces endpoint: the spans it has received, by name."""

    def __init__(self):
        spans = self.spans = []

        class Receive(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                export = ExportTraceServiceRequest.FromString(body)
                for resource in export.resource_spans:
                    service = {a.key: a.value.string_value for a in resource.resource.attributes}
                    for scope in resource.scope_spans:
                        spans.extend((service, span) for span in scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Receive)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_port}/v1/traces"

    def wait(self, name: str, count: int, timeout: float = 15.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [span for _, span in self.spans if span.name == name]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        names = [span.name for _, span in self.spans]
        raise AssertionError(f"{len(found)} '{name}' spans of {count} arrived: {names}")


def attributes(span) -> dict:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


@pytest.fixture(scope="module")
def collector():
    receiver = Collector()
    yield receiver
    receiver.http.shutdown()


@pytest.fixture(scope="module")
def traced(tmp_path_factory, collector):
    """Simple, a tiny generation model; traced from the start: every request, spans sent every 50 ms."""
    root = tmp_path_factory.mktemp("traced")
    repository = build_repository(root / "repository")
    corpus = training.python_corpus(max_bytes=20_000)
    tokenizer = training.train_tokenizer(corpus, 300, root / "tokenizer.json")
    gpt.export(tiny_gpt(vocab=300, positions=256), repository, "gpt", ["fp32"], tokenizer_file=tokenizer)
    server = start_server(
        repository, root / "server.log", "--model-control-mode", "explicit", "--load-model", "simple",
        "--load-model", "gpt", "--load-model", "relu",
        "--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1",
        "--trace-config", f"opentelemetry,url={collector.url}",
        "--trace-config", "opentelemetry,resource=service.name=ortserve-test",
        "--trace-config", "opentelemetry,bsp_schedule_delay=50", ready_model="gpt")
    yield server
    assert stop_server(server) == 0, server.output()


def simple_inputs(module):
    inputs = [module.InferInput(name, [1, 16], "INT32") for name in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
    return inputs


def test_an_infer_request_is_one_span_with_tritons_timestamps_in_order_continuing_the_callers_trace(
        traced, collector):
    before = len(collector.wait("InferRequest", 0))
    client = httpclient.InferenceServerClient(traced.http_url)
    client.infer("simple", simple_inputs(httpclient), headers={"traceparent": TRACEPARENT}, request_id="r1")
    grpc = grpcclient.InferenceServerClient(traced.grpc_url)
    grpc.infer("simple", simple_inputs(grpcclient), headers={"traceparent": TRACEPARENT})
    spans = collector.wait("InferRequest", before + 2)[before:]
    service = next(service for service, span in collector.spans if span is spans[0])
    assert service["service.name"] == "ortserve-test"
    for span, protocol in zip(spans, ("http", "grpc")):
        assert span.trace_id.hex() == TRACE_ID and span.parent_span_id.hex() == PARENT_ID
        found = attributes(span)
        assert found["triton.model_name"] == "simple" and found["triton.model_version"] == "1"
        assert found["ortserve.protocol"] == protocol and found["ortserve.batch_size"] >= 1
        assert [event.name for event in span.events] == TIMESTAMPS
        times = [event.time_unix_nano for event in span.events]
        assert times == sorted(times) and span.start_time_unix_nano == times[0]
        assert span.end_time_unix_nano == times[-1]
        assert abs(times[0] / 1e9 - time.time()) < 60  # wall-clock time, not a monotonic clock's
    assert attributes(spans[0])["ortserve.request_id"] == "r1"
    compute = [span for _, span in collector.spans if span.name == "compute"
               and span.parent_span_id == spans[0].span_id]
    events = {event.name: event.time_unix_nano for event in spans[0].events}
    assert compute and compute[0].start_time_unix_nano == events["COMPUTE_START"]
    assert compute[0].end_time_unix_nano == events["COMPUTE_END"]


def test_a_generation_is_one_span_with_its_first_token(traced, collector):
    before = len(collector.wait("GenerateRequest", 0))
    response = httpx.post(f"http://{traced.http_url}/v2/models/gpt/generate",
                          json={"input_ids": [5, 6, 7], "max_tokens": 6, "ignore_eos": True},
                          headers={"traceparent": TRACEPARENT}, timeout=60)
    assert response.status_code == 200, response.text
    [span] = collector.wait("GenerateRequest", before + 1)[before:]
    assert span.trace_id.hex() == TRACE_ID
    assert [event.name for event in span.events] == ["REQUEST_START", "QUEUE_START", "COMPUTE_START",
                                                     "FIRST_TOKEN", "REQUEST_END"]
    times = [event.time_unix_nano for event in span.events]
    assert times == sorted(times)
    found = attributes(span)
    assert found["ortserve.generated_tokens"] == 6 and found["ortserve.prompt_tokens"] == 3
    assert found["ortserve.outcome"] == "success" and found["ortserve.finish_reason"] == "length"
    first = times[3] - times[0]
    assert found["ortserve.time_to_first_token_ms"] == pytest.approx(first / 1e6, abs=0.01)


def test_settings_per_model_sample_by_rate_and_count_and_fall_back_when_cleared(traced, collector):
    http = httpclient.InferenceServerClient(traced.http_url)
    grpc = grpcclient.InferenceServerClient(traced.grpc_url)
    assert http.get_trace_settings() == {
        "trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1", "log_frequency": "0",
        "trace_file": "", "trace_mode": "opentelemetry"}
    updated = http.update_trace_settings("relu", {"trace_rate": "2", "trace_count": "2"})
    assert updated["trace_rate"] == "2" and updated["trace_count"] == "2"
    x = httpclient.InferInput("x", [1, 3], "FP32")
    x.set_data_from_numpy(np.ones((1, 3), np.float32))
    def spans_of(model):
        spans = collector.wait("InferRequest", 0)
        return [span for span in spans if attributes(span)["triton.model_name"] == model]

    before, simple = len(spans_of("relu")), len(spans_of("simple"))
    for _ in range(6):  # traced: the 1st and the 3rd; then the count is spent
        http.infer("relu", [x])
    http.infer("simple", simple_inputs(httpclient))  # the global setting still traces simple; its span
    deadline = time.monotonic() + 15  # ends last, so once it is in, the relu spans are
    while len(spans_of("simple")) == simple and time.monotonic() < deadline:
        time.sleep(0.05)
    relu = spans_of("relu")
    assert len(relu) - before == 2
    assert http.get_trace_settings("relu")["trace_count"] == "0"
    assert http.get_trace_settings()["trace_count"] == "-1"  # the global count is not the model's
    # over gRPC, as tritonclient sends them: an empty value clears the model's setting
    cleared = grpc.update_trace_settings("relu", {"trace_rate": None, "trace_count": None}, as_json=True)
    assert cleared["settings"]["trace_rate"]["value"] == ["1"]
    assert cleared["settings"]["trace_count"]["value"] == ["-1"]
    off = grpc.update_trace_settings(settings={"trace_level": ["OFF"]}, as_json=True)
    assert off["settings"]["trace_level"]["value"] == ["OFF"]
    assert http.get_trace_settings("relu")["trace_level"] == ["OFF"]  # follows the global one
    http.update_trace_settings(settings={"trace_level": None})  # back to the level it started with
    assert http.get_trace_settings()["trace_level"] == ["TIMESTAMPS"]


@pytest.mark.parametrize("settings, fragment", [
    ({"trace_level": ["TENSORS"]}, "TENSORS (tensor contents in traces) is not served"),
    ({"trace_level": ["LOUD"]}, "is not a level"),
    ({"trace_rate": "0"}, "'trace_rate' must be an integer >= 1"),
    ({"trace_count": "many"}, "'trace_count' must be an integer >= -1"),
    ({"trace_mode": "triton"}, "trace_mode 'triton' is not served"),
    ({"trace_file": "/tmp/trace.json"}, "trace_file is not used in trace mode 'opentelemetry'"),
    ({"trace_colour": "1"}, "unknown trace setting 'trace_colour'"),
])
def test_bad_trace_settings_are_refused_with_the_reason(traced, settings, fragment):
    response = httpx.post(f"http://{traced.http_url}/v2/trace/setting", json=settings)
    assert response.status_code == 400 and fragment in response.json()["error"], response.text
    unknown = httpx.get(f"http://{traced.http_url}/v2/models/nope/trace/setting")
    assert unknown.status_code == 404 and "Request for unknown model: 'nope'" in unknown.json()["error"]


def test_logging_settings_change_what_the_server_logs_at_run_time(traced, tmp_path):
    http = httpclient.InferenceServerClient(traced.http_url)
    grpc = grpcclient.InferenceServerClient(traced.grpc_url)
    assert http.get_log_settings() == {
        "log_file": "", "log_info": True, "log_warning": True, "log_error": True, "log_verbose_level": 0,
        "log_format": "default"}
    http.update_log_settings({"log_info": False})
    http.unload_model("relu")
    http.update_log_settings({"log_info": True, "log_file": str(tmp_path / "server.log")})
    loads = traced.output().count("loaded model 'relu'")
    http.load_model("relu")
    settings = grpc.update_log_settings({"log_format": "ISO8601", "log_file": ""}, as_json=True)["settings"]
    assert settings["log_format"]["string_param"] == "ISO8601" and settings["log_info"]["bool_param"] is True
    assert "unloaded model 'relu'" not in traced.output()  # INFO was off
    moved = (tmp_path / "server.log").read_text()
    assert "loaded model 'relu'" in moved and traced.output().count("loaded model 'relu'") == loads
    with pytest.raises(InferenceServerException) as refused:
        http.update_log_settings({"log_verbose_level": -1})
    assert "'log_verbose_level' must be an integer >= 0" in refused.value.message()
    http.update_log_settings({"log_format": "default"})
    assert json.loads(json.dumps(http.get_log_settings()))["log_format"] == "default"


def test_trace_config_flags_read_as_tritons_and_name_what_is_wrong():
    setting, options = setting_from_config([
        "level=TIMESTAMPS", "rate=5", "count=3", "mode=opentelemetry",
        "opentelemetry,url=collector:4318/v1/traces", "opentelemetry,resource=deployment=blue",
        "opentelemetry,bsp_max_export_batch_size=64"])
    assert setting == TraceSetting(trace_level="TIMESTAMPS", trace_rate=5, trace_count=3)
    export = OtlpExport.from_options(options)
    assert export.url == "http://collector:4318/v1/traces"
    assert dict(export.resource) == {"service.name": "ortserve", "deployment": "blue"}
    assert dict(export.batching) == {"max_export_batch_size": 64}
    for items, fragment in ((["triton,file=/tmp/t.json"], "trace mode 'triton' (trace files) is not served"),
                            (["rate=0"], "'trace_rate' must be an integer >= 1"),
                            (["colour=red"], "unknown setting"),
                            (["level"], "must be [<mode>,]<setting>=<value>")):
        with pytest.raises(ValueError, match=re.escape(fragment)):
            setting_from_config(items)
    with pytest.raises(ValueError, match=re.escape("unknown option(s) bsp_speed")):
        OtlpExport.from_options({"bsp_speed": "1"})


def test_a_scope_traces_the_first_request_then_one_in_every_rate_while_its_count_lasts():
    settings = TraceSettings(TraceSetting(trace_level="TIMESTAMPS", trace_rate=3, trace_count=3))
    assert [settings.sampled("any") for _ in range(10)] == [True, False, False] * 3 + [False]
    assert settings.get()["trace_count"] == "0"
    off = TraceSettings(TraceSetting())
    assert not off.on and not off.sampled("any")
    off.update("one", {"trace_level": ["TIMESTAMPS"], "trace_rate": "1"})
    assert off.on and off.sampled("one") and not off.sampled("other")
    off.update("one", {"trace_level": None, "trace_rate": None})
    assert not off.on and off.get("one") == off.get()
