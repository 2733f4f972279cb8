import functools
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from loadtest.server_process import ServerProcess, free_port, free_ports, start_server, stop_server  # noqa: F401
from tests.models import build_repository

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repository(tmp_path_factory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="session")
def genai_llama(tmp_path_factory):
    """onnxruntime-genai's builds of one tiny random Llama with its tokenizer, by precision: each built on
    first use and shared by every test module that serves or decodes them."""
    pytest.importorskip("onnxruntime_genai", reason="the genai extra (CPU runtime only)")
    from loadtest.bench_genai import genai_build
    from tests.test_llm_export import checkpoint_with_tokenizer

    root = tmp_path_factory.mktemp("genai")
    checkpoint = checkpoint_with_tokenizer(root / "checkpoint", "llama")
    return functools.cache(lambda precision: genai_build(checkpoint, root / precision, precision))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """test_llm_export's tiny random Llama exported once in every variant (llama, llama_fp16, llama_int8,
    llama_int4), for each test module that serves it: copy a model out with `copy_model`."""
    from tests.test_llm_export import export_family

    repository = tmp_path_factory.mktemp("tiny_llama")
    export_family("llama", repository)
    return repository


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """A server of a small random Qwen2 chat model with a Hermes-style template (`tiny`; `<tool_call>`,
    `</tool_call>`, `<think>` and `</think>` are tokens of their own, as in Qwen 3's tokenizer), the same
    model with a template that takes no tools (`plain`), one whose template opens each answer with
    `<think>`, as DeepSeek-R1's (`thinker`), and one whose call markers are special tokens, as Hermes 2
    Pro's (`hermes_pro`), for the modules that test the OpenAI APIs' structured outputs,
    tool calls and reasoning."""
    import subprocess
    import sys

    from tests.test_llm_export import CHATML, checkpoint_with_tokenizer
    from tests.test_structured_outputs import HERMES, THINKING, with_special_markers, with_template

    root = tmp_path_factory.mktemp("structured")
    checkpoint = checkpoint_with_tokenizer(root / "checkpoint", "qwen2", HERMES, positions=2048,
                                           added=("<tool_call>", "</tool_call>", "<think>", "</think>"))
    repository = root / "repository"
    subprocess.run([sys.executable, "-m", "exporters", "llm", "--checkpoint", str(checkpoint),
                    "--repository", str(repository), "--name", "tiny"], check=True, capture_output=True,
                   timeout=600)
    with_template(repository, "tiny", "plain", CHATML)
    with_template(repository, "tiny", "thinker", THINKING)
    with_special_markers(repository, "tiny", "hermes_pro")
    process = start_server(repository, root / "server.log", ready_model="plain")
    yield process
    assert stop_server(process) == 0, process.output()


@pytest.fixture(scope="session")
def server(repository, tmp_path_factory):
    """One server for the API tests: explicit mode with every model loaded at start."""
    log = tmp_path_factory.mktemp("logs") / "server.log"
    process = start_server(
        repository,
        log,
        "--model-control-mode",
        "explicit",
        "--load-model",
        "*",
        "--max-request-bytes",
        str(1024 * 1024),
        ready_model="simple",
    )
    yield process
    assert stop_server(process) == 0, process.output()


HTTP_STATUS = {
    "INVALID_ARGUMENT": "400",
    "NOT_FOUND": "404",
    "UNAVAILABLE": "503",
}


@dataclass
class Protocol:
    name: str
    module: object
    client: object

    def input(self, name, array, datatype=None, binary=True):
        tensor = self.module.InferInput(name, list(array.shape), datatype or np_to_triton_dtype(array.dtype))
        if self.name == "http":
            tensor.set_data_from_numpy(array, binary_data=binary)
        else:
            tensor.set_data_from_numpy(array)
        return tensor

    def output(self, name, class_count=0, binary=True):
        if self.name == "http":
            return self.module.InferRequestedOutput(name, binary_data=binary, class_count=class_count)
        return self.module.InferRequestedOutput(name, class_count=class_count)

    def config(self, model):
        if self.name == "http":
            return self.client.get_model_config(model)
        return self.client.get_model_config(model, as_json=True)["config"]

    def metadata(self, model, version=""):
        if self.name == "http":
            return self.client.get_model_metadata(model, version)
        return self.client.get_model_metadata(model, version, as_json=True)

    def statistics(self, model):
        if self.name == "http":
            return self.client.get_inference_statistics(model)["model_stats"]
        return self.client.get_inference_statistics(model, as_json=True)["model_stats"]

    def index(self):
        if self.name == "http":
            return self.client.get_model_repository_index()
        return self.client.get_model_repository_index(as_json=True).get("models", [])

    def assert_error(self, error: InferenceServerException, code: str, *fragments: str):
        expected = HTTP_STATUS[code] if self.name == "http" else f"StatusCode.{code}"
        assert error.status() == expected, error
        for fragment in fragments:
            assert fragment in error.message(), error.message()


def protocol_for(kind: str, server: ServerProcess) -> Protocol:
    """A fresh tritonclient of `kind` ("http" or "grpc") on `server`."""
    if kind == "http":
        return Protocol("http", httpclient, httpclient.InferenceServerClient(server.http_url, concurrency=16))
    return Protocol("grpc", grpcclient, grpcclient.InferenceServerClient(server.grpc_url))


@pytest.fixture(params=["http", "grpc"])
def api(request, server):
    protocol = protocol_for(request.param, server)
    yield protocol
    protocol.client.close()
    assert server.process.poll() is None, "the server must keep serving"


os.environ.setdefault("PYTHONUNBUFFERED", "1")
