"""Stateful models through Triton's sequence batcher, end to end with tritonclient over HTTP and gRPC."""

import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto
from tritonclient.utils import InferenceServerException

from exporters import lstm
from exporters.demo import publish
from tests.conftest import protocol_for, start_server, stop_server
from tests.models import (
    GROWING_STATE_CONFIG,
    growing_state_model,
    sequence_accumulator_config,
    sequence_accumulator_model,
)

BACKLOG = "ortserve_sequences_backlog"
IDLE_RELEASED = "ortserve_sequences_idle_released_total"
COUNTERS = (
    "ortserve_sequences_started_total", "ortserve_sequences_ended_total", "ortserve_sequence_requests_total"
)
FEATURES, STEPS = 4, 21  # 21 steps: whole chunks of 1, 3 and 7
CONTROL_TYPES = {  # model name -> (ONNX type of START/END/READY, config values, (false, true))
    "acc_direct": (TensorProto.FLOAT, "fp32_false_true: [ -1, 5 ]", (-1, 5)),
    "acc_oldest": (TensorProto.INT32, "int32_false_true: [ 0, 7 ]", (0, 7)),
    "acc_bool": (TensorProto.BOOL, "bool_false_true: [ false, true ]", (0, 1)),
}
STRATEGIES = {"acc_direct": "direct { }", "acc_oldest": "oldest { max_candidate_sequences: 8 }",
              "acc_bool": "oldest { max_queue_delay_microseconds: 100 }"}


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return lstm.SequenceClassifier(FEATURES, 12, 3, layers=2).eval()


@pytest.fixture(scope="module")
def sequence_server(tmp_path_factory, classifier):
    root = tmp_path_factory.mktemp("sequences")
    for name, (onnx_type, false_true, _) in CONTROL_TYPES.items():
        publish(root, name, sequence_accumulator_model(onnx_type),
                sequence_accumulator_config(STRATEGIES[name], false_true))
    idle = sequence_accumulator_config("direct { }", "fp32_false_true: [ 0, 1 ]")
    publish(root, "acc_idle", sequence_accumulator_model(TensorProto.FLOAT),
            idle.replace("30000000", "300000"))
    limited = sequence_accumulator_config(
        "oldest { max_candidate_sequences: 1 }", "fp32_false_true: [ 0, 1 ]",
        'parameters { key: "max_sequence_backlog" value { string_value: "1" } }',
    )
    publish(root, "acc_limited", sequence_accumulator_model(TensorProto.FLOAT), limited)
    publish(root, "grow", growing_state_model(), GROWING_STATE_CONFIG)
    lstm.export_streaming(classifier, root, "lstm_oldest")
    shutil.copytree(root / "lstm_oldest", root / "lstm_direct")
    config = root / "lstm_direct" / "config.pbtxt"
    text = config.read_text().replace('name: "lstm_oldest"', 'name: "lstm_direct"')
    config.write_text(text.replace("oldest {\n    max_candidate_sequences: 256\n  }", "direct {\n  }"))
    log = tmp_path_factory.mktemp("logs") / "sequences.log"
    server = start_server(root, log, "--model-control-mode", "explicit", "--load-model", "*",
                          ready_model="grow")
    yield server
    assert stop_server(server) == 0, server.output()


@pytest.fixture(params=["http", "grpc"])
def api(request, sequence_server):
    protocol = protocol_for(request.param, sequence_server)
    yield protocol
    protocol.client.close()
    assert sequence_server.process.poll() is None, "the server must keep serving"


def _step(api, model, value, sequence_id, start=False, end=False, outputs=("OUTPUT", "CONTROLS")):
    array = np.asarray(value, dtype=np.float32)
    result = api.client.infer(model, [api.input("INPUT", array)], sequence_id=sequence_id,
                              sequence_start=start, sequence_end=end,
                              outputs=[api.output(name) for name in outputs])
    return {name: result.as_numpy(name) for name in outputs}


@pytest.mark.parametrize("model", list(CONTROL_TYPES))
def test_state_accumulates_and_controls_carry_their_configured_values(api, model):
    false, true = CONTROL_TYPES[model][2]
    sequence_id = 1000 + len(model) + (0 if api.name == "http" else 1)
    steps = [((1.0, 2.0), True, False), ((10.0, 20.0), False, False), ((100.0, 200.0), False, True)]
    total = np.zeros(2, np.float32)
    for value, start, end in steps:
        total += value
        out = _step(api, model, [value], sequence_id, start, end)
        assert np.array_equal(out["OUTPUT"], [total])
        expected = [true if start else false, true if end else false, true, sequence_id]
        assert np.array_equal(out["CONTROLS"], [expected]), out["CONTROLS"]


def test_clients_see_neither_control_nor_state_tensors(api):
    config = api.config("acc_direct")
    assert [t["name"] for t in config["input"]] == ["INPUT"]
    assert sorted(t["name"] for t in config["output"]) == ["CONTROLS", "OUTPUT"]
    assert config["sequence_batching"]["state"][0]["input_name"] == "STATE_IN"
    assert [t["name"] for t in api.metadata("acc_direct")["inputs"]] == ["INPUT"]


def test_a_start_on_a_live_sequence_starts_it_again(api):
    sequence_id = 77 if api.name == "http" else 78
    _step(api, "acc_oldest", [[5.0, 5.0]], sequence_id, start=True)
    _step(api, "acc_oldest", [[5.0, 5.0]], sequence_id)
    again = _step(api, "acc_oldest", [[1.0, 1.0]], sequence_id, start=True, end=True)
    assert np.array_equal(again["OUTPUT"], [[1.0, 1.0]])


def test_state_with_variable_dims_grows_and_string_ids_reach_the_model(api):
    sequence_id = f"stream-{api.name}-α"
    for step in range(1, 4):
        result = api.client.infer("grow", [api.input("INPUT", np.array([step], np.float32))],
                                  sequence_id=sequence_id, sequence_start=step == 1, sequence_end=step == 3)
        assert np.array_equal(result.as_numpy("OUTPUT"), np.arange(1, step + 1, dtype=np.float32))
        assert result.as_numpy("CORRID_OUT")[0] == sequence_id.encode()


def _error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_requests_outside_a_live_sequence_are_refused(api):
    sequence_id = 500 if api.name == "http" else 501
    never = _error(lambda: _step(api, "acc_direct", [[1.0, 1.0]], sequence_id))
    triton = (f"inference request for sequence {sequence_id} to model 'acc_direct' must specify the START "
              "flag on the first request of the sequence")
    api.assert_error(never, "INVALID_ARGUMENT", triton, "never started", "sequence_start")
    _step(api, "acc_direct", [[1.0, 1.0]], sequence_id, start=True)
    _step(api, "acc_direct", [[1.0, 1.0]], sequence_id, end=True)
    after_end = _error(lambda: _step(api, "acc_direct", [[1.0, 1.0]], sequence_id))
    api.assert_error(after_end, "INVALID_ARGUMENT", "not active (ended)")
    no_id = _error(lambda: api.client.infer("acc_direct", [api.input("INPUT", np.ones((1, 2), np.float32))]))
    api.assert_error(no_id, "INVALID_ARGUMENT", "stateful", "sequence_id")
    two_rows = _error(lambda: _step(api, "acc_direct", np.ones((2, 2)), sequence_id + 10, start=True))
    api.assert_error(two_rows, "INVALID_ARGUMENT", "batch size 1")
    text_id = _error(lambda: _step(api, "acc_direct", [[1.0, 1.0]], "text-id", start=True))
    api.assert_error(text_id, "INVALID_ARGUMENT", "UINT64 correlation ids", "text-id")


def test_a_sequence_idle_past_its_limit_is_released(api, sequence_server):
    """The scheduler releases the sequence on its own once idle past the limit (its counter says when),
    and a request after that is refused saying why."""
    sequence_id = 900 if api.name == "http" else 901
    released = _gauge(sequence_server, IDLE_RELEASED, "acc_idle")
    _step(api, "acc_idle", [[1.0, 1.0]], sequence_id, start=True)
    deadline = time.monotonic() + 30
    while _gauge(sequence_server, IDLE_RELEASED, "acc_idle") == released:
        assert time.monotonic() < deadline, "the idle sequence was never released"
        time.sleep(0.05)
    late = _error(lambda: _step(api, "acc_idle", [[1.0, 1.0]], sequence_id))
    api.assert_error(late, "INVALID_ARGUMENT", "released after 300000 us without a request")


def test_sequences_beyond_the_slots_wait_and_beyond_the_backlog_are_refused(api, sequence_server):
    base = 1200 if api.name == "http" else 1300
    _step(api, "acc_limited", [[1.0, 1.0]], base, start=True)  # holds the only slot
    other = protocol_for(api.name, sequence_server)  # clients are not shared across threads
    waiting = ThreadPoolExecutor(1).submit(_step, other, "acc_limited", [[2.0, 2.0]], base + 1, True, True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _gauge(sequence_server, BACKLOG, "acc_limited"):
        time.sleep(0.05)
    full = _error(lambda: _step(api, "acc_limited", [[3.0, 3.0]], base + 2, start=True))
    api.assert_error(full, "UNAVAILABLE", "2 live sequences", "retry later")
    assert not waiting.done()
    _step(api, "acc_limited", [[1.0, 1.0]], base, end=True)  # frees the slot for the waiting one
    assert np.array_equal(waiting.result(timeout=10)["OUTPUT"], [[2.0, 2.0]])


def _gauge(server, name: str, model: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text
    line = next(line for line in text.splitlines() if line.startswith(f'{name}{{model="{model}"'))
    return float(line.split()[-1])


def _torch_steps(classifier, sequence: np.ndarray, chunk: int) -> np.ndarray:
    """The classifier's output after every chunk: PyTorch on the whole prefix at once."""
    with torch.no_grad():
        return np.stack([classifier(torch.from_numpy(sequence[None, :end])).numpy()[0]
                         for end in range(chunk, STEPS + 1, chunk)])


@pytest.mark.parametrize("model", ["lstm_oldest", "lstm_direct"])
def test_lstm_streamed_in_chunks_matches_the_whole_sequence(sequence_server, classifier, model):
    """16 sequences at once, chunks of 1, 3 and 7 steps, half over HTTP and half over gRPC."""
    sequences = np.random.default_rng(1).standard_normal((16, STEPS, FEATURES)).astype(np.float32)
    base = 10_000 if model == "lstm_oldest" else 20_000

    def stream(index: int) -> np.ndarray:
        module = httpclient if index % 2 else grpcclient
        url = sequence_server.http_url if index % 2 else sequence_server.grpc_url
        client = module.InferenceServerClient(url)
        chunk, outputs = (1, 3, 7)[index % 3], []
        for start in range(0, STEPS, chunk):
            tensor = module.InferInput("sequence", [1, chunk, FEATURES], "FP32")
            tensor.set_data_from_numpy(sequences[index : index + 1, start : start + chunk])
            result = client.infer(model, [tensor], sequence_id=base + index, sequence_start=start == 0,
                                  sequence_end=start + chunk == STEPS)
            outputs.append(result.as_numpy("output")[0])
        client.close()
        return np.stack(outputs)

    with ThreadPoolExecutor(16) as pool:
        served = list(pool.map(stream, range(16)))
    for index, outputs in enumerate(served):
        expected = _torch_steps(classifier, sequences[index], (1, 3, 7)[index % 3])
        np.testing.assert_allclose(outputs, expected, atol=1e-5, rtol=0)
    stats = httpclient.InferenceServerClient(sequence_server.http_url).get_inference_statistics(model)
    sizes = [batch["batch_size"] for batch in stats["model_stats"][0]["batch_stats"]]
    assert max(sizes) > 1, f"sequences never shared a batch: {sizes}"


def test_sequence_metrics(sequence_server, api):
    sequence_id = 3000 if api.name == "http" else 3001
    before = {name: _gauge(sequence_server, name, "acc_bool") for name in COUNTERS}
    _step(api, "acc_bool", [[1.0, 1.0]], sequence_id, start=True)
    assert _gauge(sequence_server, "ortserve_sequences_live", "acc_bool") == 1
    _step(api, "acc_bool", [[1.0, 1.0]], sequence_id, end=True)
    assert _gauge(sequence_server, "ortserve_sequences_live", "acc_bool") == 0
    after = {name: _gauge(sequence_server, name, "acc_bool") for name in before}
    assert [after[name] - before[name] for name in before] == [1, 1, 2]
