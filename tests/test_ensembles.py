"""Triton's ensembles against a real server process: steps chained and side by side, the composing model
loaded with the ensemble, each step counted in its model's statistics, configs that cannot run refused at
load naming what is wrong, and a step's error naming the ensemble and the step."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto
from tritonclient.utils import InferenceServerException

from exporters.demo import SIMPLE_CONFIG, publish, simple_model
from server.protocol.model_config import ConfigError
from server.repository.config import parse_config
from server.repository.ensemble import ensemble_steps
from tests.conftest import start_server, stop_server
from tests.models import int32_pair, sequence_accumulator_config, sequence_accumulator_model

TENSORS = """
input [ { name: "A", data_type: TYPE_INT32, dims: [ 16 ] },
        { name: "B", data_type: TYPE_INT32, dims: [ 16 ] } ]
output [ { name: "TWICE_A", data_type: TYPE_INT32, dims: [ 16 ] },
         { name: "TWICE_B", data_type: TYPE_INT32, dims: [ 16 ] },
         { name: "DOUBLE_A", data_type: TYPE_INT32, dims: [ 16 ] } ]
"""
# (a + b) + (a - b) = 2a and (a + b) - (a - b) = 2b through two chained steps; a + a beside the first
PIPELINE = f"""
name: "pipeline"
platform: "ensemble"
max_batch_size: 8
{TENSORS}
ensemble_scheduling {{ step [
  {{ model_name: "simple" model_version: -1
     input_map {{ key: "INPUT0" value: "A" }} input_map {{ key: "INPUT1" value: "B" }}
     output_map {{ key: "OUTPUT0" value: "sum" }} output_map {{ key: "OUTPUT1" value: "difference" }} }},
  {{ model_name: "simple" model_version: 1
     input_map {{ key: "INPUT0" value: "sum" }} input_map {{ key: "INPUT1" value: "difference" }}
     output_map {{ key: "OUTPUT0" value: "TWICE_A" }} output_map {{ key: "OUTPUT1" value: "TWICE_B" }} }},
  {{ model_name: "simple"
     input_map {{ key: "INPUT0" value: "A" }} input_map {{ key: "INPUT1" value: "A" }}
     output_map {{ key: "OUTPUT0" value: "DOUBLE_A" }} }}
] }}
"""
MISTYPED = """
name: "mistyped"
platform: "ensemble"
max_batch_size: 8
input [ { name: "X", data_type: TYPE_FP32, dims: [ 16 ] } ]
output [ { name: "Y", data_type: TYPE_INT32, dims: [ 16 ] } ]
ensemble_scheduling { step [ { model_name: "simple"
  input_map { key: "INPUT0" value: "X" } input_map { key: "INPUT1" value: "X" }
  output_map { key: "OUTPUT0" value: "Y" } } ] }
"""
ORPHAN = MISTYPED.replace('"mistyped"', '"orphan"').replace('"simple"', '"absent"')
MISNAMED = MISTYPED.replace('"mistyped"', '"misnamed"').replace('TYPE_FP32', 'TYPE_INT32').replace(
    'key: "INPUT1"', 'key: "INPUT9"')
LOOSE = MISNAMED.replace('"misnamed"', '"loose"').replace('"INPUT9"', '"INPUT1"').replace("[ 16 ]", "[ -1 ]")
STATEFUL = """
name: "stateful"
platform: "ensemble"
max_batch_size: 4
input [ { name: "X", data_type: TYPE_FP32, dims: [ 2 ] } ]
output [ { name: "Y", data_type: TYPE_FP32, dims: [ 2 ] } ]
ensemble_scheduling { step [ { model_name: "accumulator"
  input_map { key: "INPUT" value: "X" } output_map { key: "OUTPUT" value: "Y" } } ] }
"""
NESTED = """
name: "nested"
platform: "ensemble"
max_batch_size: 8
input [ { name: "A", data_type: TYPE_INT32, dims: [ 16 ] },
        { name: "B", data_type: TYPE_INT32, dims: [ 16 ] } ]
output [ { name: "FOUR_A", data_type: TYPE_INT32, dims: [ 16 ] } ]
ensemble_scheduling { step [
  { model_name: "pipeline" input_map { key: "A" value: "A" } input_map { key: "B" value: "B" }
    output_map { key: "TWICE_A" value: "a2" } output_map { key: "DOUBLE_A" value: "also_a2" } },
  { model_name: "simple" input_map { key: "INPUT0" value: "a2" } input_map { key: "INPUT1" value: "also_a2" }
    output_map { key: "OUTPUT0" value: "FOUR_A" } } ] }
"""


def ensemble(repository, name: str, config: str) -> None:
    (repository / name / "1").mkdir(parents=True)  # an ensemble's version directory is empty
    (repository / name / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    repository = tmp_path_factory.mktemp("ensembles")
    publish(repository, "simple", simple_model(), SIMPLE_CONFIG)
    ensemble(repository, "pipeline", PIPELINE)
    ensemble(repository, "mistyped", MISTYPED)
    ensemble(repository, "misnamed", MISNAMED)
    ensemble(repository, "loose", LOOSE)
    ensemble(repository, "orphan", ORPHAN)
    ensemble(repository, "nested", NESTED)
    publish(repository, "accumulator", sequence_accumulator_model(TensorProto.FLOAT),
            sequence_accumulator_config("oldest {}", "fp32_false_true: [ 0, 1 ]"))
    ensemble(repository, "stateful", STATEFUL)
    # explicit mode, only the ensembles named: the model their steps run loads with them
    process = start_server(repository, repository.parent / "server.log", "--model-control-mode", "explicit",
                           "--load-model", "pipeline", "--load-model", "loose", ready_model="pipeline")
    yield process
    assert stop_server(process) == 0, process.output()


def test_unload_dependents_unloads_the_models_loaded_with_an_ensemble_that_nothing_else_runs(tmp_path):
    """Triton's `unload_dependents`: unloading `nested` also unloads `pipeline` and `simple`, which its
    load brought in, unless they were loaded by name or another loaded ensemble runs them; without the
    parameter they stay."""
    publish(tmp_path, "simple", simple_model(), SIMPLE_CONFIG)
    ensemble(tmp_path, "pipeline", PIPELINE)
    ensemble(tmp_path, "nested", NESTED)
    ensemble(tmp_path, "loose", LOOSE)
    process = start_server(tmp_path, tmp_path / "server.log", "--model-control-mode", "explicit",
                           "--load-model", "nested", ready_model="nested")
    http, grpc = (httpclient.InferenceServerClient(process.http_url),
                  grpcclient.InferenceServerClient(process.grpc_url))

    def ready():
        return {row["name"] for row in http.get_model_repository_index() if row.get("state") == "READY"}

    try:
        assert "model_repository(unload_dependents)" in http.get_server_metadata()["extensions"]
        assert ready() == {"nested", "pipeline", "simple"}
        http.unload_model("nested")
        assert ready() == {"pipeline", "simple"}
        http.load_model("nested")
        http.unload_model("nested", unload_dependents=True)
        assert ready() == set()
        http.load_model("nested")
        http.load_model("loose")  # runs simple too
        grpc.unload_model("nested", unload_dependents=True)
        assert ready() == {"loose", "simple"}
        http.load_model("pipeline")  # simple is now the one loose loaded; pipeline was loaded by name
        http.unload_model("loose", unload_dependents=True)
        assert ready() == {"pipeline", "simple"}  # pipeline still runs simple
        with pytest.raises(InferenceServerException, match="'unload_dependents' must be true or false"):
            http.unload_model("pipeline", headers=None, unload_dependents="yes")
    finally:
        assert stop_server(process) == 0, process.output()


def pipeline_inputs(module, rows: int, seed: int = 0):
    return int32_pair(module, ("A", "B"), rows, seed)


def test_an_ensemble_runs_its_steps_chained_and_side_by_side_over_http_and_grpc(served):
    http = httpclient.InferenceServerClient(served.http_url)
    grpc = grpcclient.InferenceServerClient(served.grpc_url)
    assert http.is_model_ready("simple")  # loaded with the ensemble
    metadata = http.get_model_metadata("pipeline")
    assert metadata["platform"] == "ensemble"
    assert [t["name"] for t in metadata["inputs"]] == ["A", "B"]
    assert metadata["inputs"][0]["shape"] == [-1, 16]
    before = http.get_inference_statistics("simple")["model_stats"][0]["inference_stats"]["success"]["count"]
    for module, client in ((httpclient, http), (grpcclient, grpc)):
        inputs, a, b = pipeline_inputs(module, 3)
        result = client.infer("pipeline", inputs)
        np.testing.assert_array_equal(result.as_numpy("TWICE_A"), 2 * a)
        np.testing.assert_array_equal(result.as_numpy("TWICE_B"), 2 * b)
        np.testing.assert_array_equal(result.as_numpy("DOUBLE_A"), 2 * a)
        only = client.infer("pipeline", inputs, outputs=[module.InferRequestedOutput("TWICE_B")])
        assert only.as_numpy("TWICE_A") is None
        np.testing.assert_array_equal(only.as_numpy("TWICE_B"), 2 * b)
    stats = http.get_inference_statistics("pipeline")["model_stats"][0]["inference_stats"]
    assert stats["success"]["count"] == 4 and stats["fail"]["count"] == 0
    after = http.get_inference_statistics("simple")["model_stats"][0]["inference_stats"]["success"]["count"]
    assert after - before == 4 * 3  # each step is a request to its model
    metrics = httpx.get(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=10).text
    assert 'nv_inference_request_success{model="pipeline",version="1"} 4.0' in metrics
    assert len(http.get_model_config("pipeline")["ensemble_scheduling"]["step"]) == 3
    index = {row["name"]: row["state"] for row in http.get_model_repository_index()}
    assert index == {"pipeline": "READY", "loose": "READY", "simple": "READY", "orphan": "UNAVAILABLE",
                     "mistyped": "UNAVAILABLE", "misnamed": "UNAVAILABLE", "nested": "UNAVAILABLE",
                     "stateful": "UNAVAILABLE", "accumulator": "UNAVAILABLE"}


def test_an_ensemble_step_may_run_another_ensemble(served):
    client = httpclient.InferenceServerClient(served.http_url)
    client.load_model("nested")
    inputs, a, _ = pipeline_inputs(httpclient, 2)
    np.testing.assert_array_equal(client.infer("nested", inputs).as_numpy("FOUR_A"), 4 * a)


def test_concurrent_ensemble_requests_each_get_their_own_answers(served):
    def one(seed):
        inputs, a, b = pipeline_inputs(httpclient, 1 + seed % 4, seed)
        result = httpclient.InferenceServerClient(served.http_url).infer("pipeline", inputs)
        return (np.array_equal(result.as_numpy("TWICE_A"), 2 * a)
                and np.array_equal(result.as_numpy("TWICE_B"), 2 * b))

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(one, range(64)))


def test_a_steps_error_names_the_ensemble_and_the_step_and_bad_inputs_name_the_ensembles_input(served):
    """`loose` takes any length, its step's model 16 elements: only a request shows the mismatch."""
    client = httpclient.InferenceServerClient(served.http_url)
    x = httpclient.InferInput("X", [1, 8], "INT32")
    x.set_data_from_numpy(np.ones((1, 8), np.int32))
    with pytest.raises(InferenceServerException) as error:
        client.infer("loose", [x])
    assert "'INPUT" in str(error.value) and "[-1,16]" in str(error.value).replace(" ", "")
    assert str(error.value).endswith("(in ensemble 'loose', step 'simple')")
    assert error.value.status() == "400"
    wrong = httpclient.InferInput("A", [1, 16], "FP32")
    wrong.set_data_from_numpy(np.ones((1, 16), np.float32))
    with pytest.raises(InferenceServerException, match="'A'"):
        client.infer("pipeline", [wrong, pipeline_inputs(httpclient, 1)[0][1]])
    assert client.is_server_live()


def test_ensembles_that_do_not_fit_their_steps_models_do_not_load(served):
    client = httpclient.InferenceServerClient(served.http_url)
    with pytest.raises(InferenceServerException) as error:
        client.load_model("orphan")
    assert "load failed for model 'orphan'" in str(error.value)
    assert "step 'absent' cannot run: Request for unknown model: 'absent' is not found" in str(error.value)
    assert not client.is_model_ready("orphan")
    with pytest.raises(InferenceServerException, match="step 'accumulator' runs a stateful model"):
        client.load_model("stateful")
    with pytest.raises(InferenceServerException) as error:
        client.load_model("mistyped")
    assert "tensor 'X' is FP32 but step 'simple' takes it as 'INPUT" in str(error.value)
    with pytest.raises(InferenceServerException) as error:
        client.load_model("misnamed")
    assert "maps 'INPUT9', which is not an input of model 'simple' (its inputs: INPUT0, INPUT1)" in str(
        error.value)


STEP = ('{{ model_name: "m" input_map {{ key: "x" value: "{0}" }} '
        'output_map {{ key: "y" value: "{1}" }} }}')


@pytest.mark.parametrize("steps, fragment", [
    ("", "needs ensemble_scheduling with at least one step"),
    (STEP.format("A", "C") + "," + STEP.format("A", "C"),
     "tensor 'C' is written by step 'm' and by step 'm'"),
    (STEP.format("A", "A"), "writes 'A', an input of the ensemble"),
    (STEP.format("A", "C") + "," + STEP.format("B", "D"),
     "step 'm' can never run: tensors B are written by no step before them"),
    (STEP.format("A", "D") + "," + STEP.format("D", "E"), "output 'C' is not written by any step"),
    (STEP.format("A", "C") + "," + STEP.format("E", "D") + "," + STEP.format("D", "E"), "can never run"),
    ('{ model_name: "m" input_map { key: "x" value: "A" } }', "needs an input_map and an output_map"),
    (STEP.format("A", "C").replace('"m"', '"m" model_version: -2'), "has model_version -2"),
])
def test_ensemble_configs_that_cannot_run_are_refused_naming_the_problem(tmp_path, steps, fragment):
    text = f"""name: "e" platform: "ensemble" max_batch_size: 2
        input [ {{ name: "A", data_type: TYPE_FP32, dims: [ 1 ] }} ]
        output [ {{ name: "C", data_type: TYPE_FP32, dims: [ 1 ] }} ]
        {"ensemble_scheduling { step [ " + steps + " ] }" if steps else ""}"""
    with pytest.raises(ConfigError) as error:
        ensemble_steps(parse_config(text, tmp_path / "e"))
    assert fragment in str(error.value)


def test_unused_ensemble_inputs_are_refused(tmp_path):
    text = """name: "e" platform: "ensemble"
        input [ { name: "A", data_type: TYPE_FP32, dims: [ 1 ] },
                { name: "B", data_type: TYPE_FP32, dims: [ 1 ] } ]
        output [ { name: "C", data_type: TYPE_FP32, dims: [ 1 ] } ]
        ensemble_scheduling { step [ { model_name: "m" input_map { key: "x" value: "A" }
                                       output_map { key: "y" value: "C" } } ] }"""
    with pytest.raises(ConfigError, match="input 'B' is not taken by any step"):
        ensemble_steps(parse_config(text, tmp_path / "e"))


def test_an_output_whose_step_writes_another_datatype_is_refused():
    from server.core.types import TensorSpec
    from server.repository.ensemble import EnsembleStep, check_tensors

    step = EnsembleStep("m", "", {"x": "A"}, {"y": "C"})
    specs = [TensorSpec("A", "FP32", (1,))], [TensorSpec("C", "FP16", (1,))]
    model = [TensorSpec("x", "FP32", (1,))], [TensorSpec("y", "FP32", (1,))]
    with pytest.raises(ConfigError, match="output 'C' is FP16 in its config but its step writes FP32"):
        check_tensors("e", *specs, [step], [model])
    check_tensors("e", specs[0], [TensorSpec("C", "FP32", (1,))], [step], [model])  # fits: no error
