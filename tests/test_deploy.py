"""The Helm chart, the Dockerfile and the locust scenario, checked with the real tools, offline."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
import yaml

from exporters.demo import SIMPLE_CONFIG, publish, simple_model
from loadtest.run_locust import run_locust
from loadtest.server_process import start_server, stop_server
from tests.kubernetes_kinds import CUSTOM_KINDS, validate_custom

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "ortserve"
KUBERNETES = kubernetes_validate.latest_version()

VALUE_SETS = {
    "cpu": {},
    "three-replicas": {"replicaCount": 3},
    "gpu": {"gpu": {"enabled": True, "count": 2}},
    "autoscaling-queue": {"autoscaling": {"enabled": True}},
    "autoscaling-cpu": {"autoscaling": {"enabled": True, "metric": "cpu"}},
    "servicemonitor": {"serviceMonitor": {"enabled": True}},
    "pvc": {"modelRepository": {"persistentVolumeClaim": {"claimName": "models"}}},
    "init-container": {
        "modelRepository": {"initContainer": {"enabled": True}},
        "server": {"modelControlMode": "explicit", "loadModels": ["simple", "minilm"]},
    },
    "kserve-runtime": {"kserve": {"runtime": {"enabled": True}}},
    "inference-pool": {"inferencePool": {"enabled": True, "endpointPicker": {"name": "ortserve-epp"}}},
}


def render(values: dict) -> dict[str, dict]:
    manifests = helm.Chart.load(CHART).render(values, name="demo", namespace="serving")
    documents = {}
    for path, text in manifests.items():
        if path.endswith(".yaml"):
            for document in yaml.safe_load_all(text):
                if document:
                    documents[document["kind"]] = document
    return documents


def test_chart_lints_strictly():
    for values in VALUE_SETS.values():
        report = helm.lint(CHART, values, strict=True)
        assert not report["errors"] and not report["messages"], report


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_manifests_are_valid_kubernetes(name):
    documents = render(VALUE_SETS[name])
    for document in documents.values():
        if document["apiVersion"].startswith("monitoring.coreos.com"):
            assert document["spec"]["endpoints"][0]["port"] == "metrics"  # a CRD: no schema to check against
            continue
        if document["kind"] in CUSTOM_KINDS:
            validate_custom(document)
            continue
        kubernetes_validate.validate(document, KUBERNETES, strict=True)
    assert {"Deployment", "Service"} <= set(documents)


def container(documents) -> dict:
    return documents["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def test_probes_ports_and_security():
    documents = render({})
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    server = container(documents)
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert [p["containerPort"] for p in server["ports"]] == [8000, 8001, 8002]
    assert [p["port"] for p in documents["Service"]["spec"]["ports"]] == [8000, 8001, 8002]
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] > int(
        next(a for a in server["args"] if a.startswith("--exit-timeout-secs=")).split("=")[1]
    )


@pytest.mark.parametrize("values, budget", [
    ({}, False),
    ({"replicaCount": 3}, True),
    ({"autoscaling": {"enabled": True, "minReplicas": 2}}, True),
    ({"autoscaling": {"enabled": True}}, False),
])
def test_a_disruption_budget_only_where_more_than_one_pod_runs(values, budget):
    documents = render(values)
    assert ("PodDisruptionBudget" in documents) == budget
    if budget:
        assert documents["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


def test_notes_give_a_port_forward_that_matches_the_service():
    notes = helm.Chart.load(CHART).render({"service": {"httpPort": 9000}}, name="demo", namespace="serving")
    text = next(t for p, t in notes.items() if p.endswith("NOTES.txt"))
    assert "kubectl -n serving port-forward svc/demo-ortserve 8000:9000" in text


def test_gpu_values_request_gpus_on_gpu_nodes():
    documents = render(VALUE_SETS["gpu"])
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    assert container(documents)["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert container(documents)["image"].endswith("-gpu")
    assert "nvidia.com/gpu" not in container(render({}))["resources"].get("limits", {})


def test_autoscaling_on_queue_time():
    hpa = render(VALUE_SETS["autoscaling-queue"])["HorizontalPodAutoscaler"]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "avg_time_queue_us"
    assert "replicas" not in render(VALUE_SETS["autoscaling-queue"])["Deployment"]["spec"]


def test_server_flags_follow_values():
    args = container(render(VALUE_SETS["init-container"]))["args"]
    assert "--model-control-mode=explicit" in args
    assert "--min-ready-models=1" in args  # an empty volume never joins the Service
    assert args.count("--load-model=simple") == 1 and "--load-model=minilm" in args
    pod = render(VALUE_SETS["init-container"])["Deployment"]["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["volumeMounts"][0]["mountPath"] == "/models"
    assert not any(arg.startswith("--cache-config") for arg in args)  # no cache unless asked
    cached = container(render({"server": {"responseCacheBytes": 268435456}}))["args"]
    assert "--cache-config=local,size=268435456" in cached


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_promises():
    text = (ROOT / "Dockerfile").read_text()
    for promise in (
        "AS cpu",
        "AS gpu",
        "USER 10001",
        "EXPOSE 8000 8001 8002",
        'VOLUME ["/models"]',
        "HEALTHCHECK",
        "/v2/health/ready",
        "[gpu]",
        "[cpu]",
    ):
        assert promise in text, promise


def test_locust_scenario_against_a_real_server(server, tmp_path):
    rows = run_locust(server.http_url, server.grpc_url, users=4, seconds=4, prefix=tmp_path / "locust",
                      user_classes=("HttpInferUser", "GrpcInferUser"))
    by_name = {row["name"]: row for row in rows}
    assert set(by_name) == {"http json infer", "http binary infer", "grpc infer"}
    for row in rows:
        assert row["requests"] > 0 and row["failures"] == 0, row


def _normalized(name: str) -> str:
    """A distribution's name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_closure(requirements: list[str]) -> set[str]:
    """Normalized names of the distributions `requirements` install, with theirs, as installed here."""
    from importlib import metadata

    from packaging.requirements import Requirement

    found, pending = set(), [(Requirement(r), frozenset({""})) for r in requirements]
    while pending:
        requirement, extras = pending.pop()
        if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in extras):
            continue
        name = _normalized(requirement.name)
        if name in found:
            continue
        found.add(name)
        wanted = frozenset({"", *requirement.extras})
        pending += [(Requirement(r), wanted) for r in metadata.requires(requirement.name) or []]
    return found


def test_the_serving_image_installs_every_package_the_server_imports():
    """The image installs the wheel with its `cpu` extra only: no export or dev tools. Imports inside a
    `try` are optional (NVML, uvloop) and the wheel's own packages come with it."""
    import ast
    from importlib import metadata

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = _installed_closure(project["dependencies"] + project["optional-dependencies"]["cpu"])
    providers = metadata.packages_distributions()
    missing = {}
    for path in (ROOT / "server").rglob("*.py"):
        tree = ast.parse(path.read_text())
        tries = [t for t in ast.walk(tree) if isinstance(t, ast.Try)]
        optional = {id(n) for t in tries for statement in t.body for n in ast.walk(statement)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.partition(".")[0]
                if top in ("server", "exporters", "loadtest") or top in sys.stdlib_module_names:
                    continue
                names = {_normalized(d) for d in providers.get(top, [top])}
                if not names & installed:
                    missing.setdefault(top, path.relative_to(ROOT).as_posix())
    assert not missing, f"imported by the server but not installed by its dependencies: {missing}"


def test_make_run_follows_the_port_variables():
    printed = subprocess.run(["make", "-n", "run", "HTTP_PORT=9100", "GRPC_PORT=9101", "METRICS_PORT=9102"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "--http-port 9100 --grpc-port 9101 --metrics-port 9102" in printed
    assert "http://localhost:9100" in printed and "curl -s localhost:9100/v2/models/simple/infer" in printed


def test_version_flag():
    shown = subprocess.run([sys.executable, "-c", "from server.cli import main; main(['--version'])"],
                           cwd=ROOT, capture_output=True, text=True)
    assert shown.returncode == 0 and shown.stdout.startswith("ortserve ")


def test_the_load_test_runs_from_a_wheel_in_a_fresh_environment_against_a_server_elsewhere(server, tmp_path):
    """The wheel alone (no checkout on the path; its dependencies borrowed from this environment's
    site-packages, so nothing is downloaded), from another directory, against the running server; the
    summary's counts are locust's own."""
    import site

    from tests.conftest import ROOT

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True)
    wheel = next((tmp_path / "dist").glob("ortserve-*.whl"))
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    fresh_python = fresh / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    fresh_site = subprocess.run([fresh_python, "-c", purelib], capture_output=True, text=True,
                                check=True).stdout.strip()
    (Path(fresh_site) / "borrowed.pth").write_text(site.getsitepackages()[0] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(fresh_python), "install", "--quiet",
                    "--no-deps", str(wheel)], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    done = subprocess.run([fresh_python, "-m", "loadtest.run_locust", "--host", f"http://{server.http_url}",
                           "--grpc", server.grpc_url, "--users", "2", "--seconds", "3",
                           "HttpInferUser", "GrpcInferUser"],
                          cwd=work, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    where = subprocess.run([fresh_python, "-c", "import loadtest; print(loadtest.__file__)"], cwd=work,
                           capture_output=True, text=True).stdout
    assert where.startswith(fresh_site), where  # the wheel's copy, not the checkout
    summary = r"^\| \S+ (.+?) \| (\d+) \| (\d+) \| [\d.]+ \| \d+ \| (\d+) \| (\d+) \|$"
    ours = {name: rest for name, *rest in re.findall(summary, done.stdout, re.M)}
    report = (work / "loadtest-results" / "locust.html").read_text()  # locust's own final statistics
    own = (r'"name": "([^"]+)", "num_failures": (\d+), "num_requests": (\d+), '
           r'"response_time_percentile_0.95": (\d+), "response_time_percentile_0.99": (\d+)')
    theirs = {name: [requests, failures, p95, p99] for name, failures, requests, p95, p99
              in re.findall(own, report)}
    assert set(ours) == {"http json infer", "http binary infer", "grpc infer"}, done.stdout
    assert ours == {name: theirs[name] for name in ours}, (ours, theirs)
    assert f"locust's report: {(work / 'loadtest-results' / 'locust.html').as_uri()}" in done.stdout


KSERVE = ROOT / "deploy" / "kserve"


def test_kserve_manifests_have_the_fields_kserve_publishes_and_the_chart_renders_the_same_runtime():
    runtime = yaml.safe_load((KSERVE / "ortserve-runtime.yaml").read_text())
    service = yaml.safe_load((KSERVE / "inferenceservice.yaml").read_text())
    for document in (runtime, service):
        validate_custom(document)
    rendered = render(VALUE_SETS["kserve-runtime"])["ClusterServingRuntime"]
    rendered["metadata"].pop("labels")
    assert rendered == runtime  # deploy/kserve/ is what the chart renders
    spec = runtime["spec"]
    formats = {(f["name"], f["version"]) for f in spec["supportedModelFormats"]}
    assert formats == {("onnx", "1"), ("triton", "2")}
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    assert spec["annotations"] == {"prometheus.kserve.io/port": "8002",
                                   "prometheus.kserve.io/path": "/metrics"}
    args = spec["containers"][0]["args"]
    assert "--model-repository=/mnt/models" in args and "--model-name={{.Name}}" in args
    assert service["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]


def test_a_manifest_with_a_field_its_kind_lacks_is_refused():
    runtime = yaml.safe_load((KSERVE / "ortserve-runtime.yaml").read_text())
    runtime["spec"]["supportedModelFormat"] = runtime["spec"].pop("supportedModelFormats")  # a typo
    with pytest.raises(jsonschema.ValidationError, match="supportedModelFormat"):
        validate_custom(runtime)
    pool = render(VALUE_SETS["inference-pool"])["InferencePool"]
    pool["spec"]["endpointPickerRef"]["port"] = 9002  # v1 wants {"number": 9002}
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(pool)
    runtime = yaml.safe_load((KSERVE / "ortserve-runtime.yaml").read_text())
    runtime["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_custom(runtime)


def test_the_inference_pool_selects_the_charts_pods_on_the_http_port():
    documents = render(VALUE_SETS["inference-pool"])
    pool = documents["InferencePool"]["spec"]
    assert pool["selector"]["matchLabels"] == documents["Deployment"]["spec"]["selector"]["matchLabels"]
    assert pool["targetPorts"] == [{"number": 8000}]
    assert pool["endpointPickerRef"] == {"name": "ortserve-epp", "port": {"number": 9002},
                                         "failureMode": "FailClose"}
    assert "InferencePool" not in render({}) and "ClusterServingRuntime" not in render({})
    with pytest.raises(Exception, match="the endpoint picker's Service"):
        render({"inferencePool": {"enabled": True}})


@pytest.mark.parametrize("shape", ["model.onnx", "model directory", "repository"])
def test_the_kserve_runtimes_command_serves_what_kserve_mounts_at_mnt_models(tmp_path, shape):
    """The runtime container's own arguments, with /mnt/models a directory shaped as KServe fills it and
    {{.Name}} an InferenceService's name; only the ports are the test's."""
    runtime = yaml.safe_load((KSERVE / "ortserve-runtime.yaml").read_text())
    args = runtime["spec"]["containers"][0]["args"]
    assert args[0] == "serve"
    mnt = tmp_path / "mnt" / "models"
    if shape == "model.onnx":
        mnt.mkdir(parents=True)
        onnx.save(simple_model(), mnt / "model.onnx")
    elif shape == "model directory":
        publish(mnt.parent, "models", simple_model(), SIMPLE_CONFIG.replace('name: "simple"\n', ""))
    else:
        publish(mnt, "adder", simple_model(), SIMPLE_CONFIG.replace('name: "simple"\n', ""))
    own = [arg.replace("/mnt/models", str(mnt)).replace("{{.Name}}", "adder") for arg in args[1:]
           if not arg.startswith(("--http-port", "--grpc-port", "--metrics-port"))]
    server = start_server(mnt, tmp_path / "server.log", *own, ready_model="adder")
    try:
        client = httpclient.InferenceServerClient(server.http_url)
        inputs = [httpclient.InferInput(name, [1, 16], "INT32") for name in ("INPUT0", "INPUT1")]
        for tensor in inputs:
            tensor.set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
        result = client.infer("adder", inputs)
        assert result.as_numpy("OUTPUT0").tolist() == [[2 * i for i in range(16)]]
        assert [model["name"] for model in client.get_model_repository_index()] == ["adder"]
    finally:
        assert stop_server(server) == 0, server.output()
