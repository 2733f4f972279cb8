"""Restricted API groups and TLS (one-way and mutual) over HTTP and gRPC, through tritonclient."""

import ssl

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import trustme
from geventhttpclient.response import HTTPConnectionClosed
from tritonclient.utils import InferenceServerException

from exporters.demo import SIMPLE_CONFIG, publish, simple_model
from tests.conftest import start_server, stop_server

RESTRICTED = ["inference,model-config:infer-key=i-secret", "model-repository,statistics:admin-key=a-secret",
              "metadata:meta-key=m-secret"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    publish(root, "simple", simple_model(), SIMPLE_CONFIG)
    return root


@pytest.fixture(scope="module")
def restricted_server(repository, tmp_path_factory):
    flags = ["--model-control-mode", "explicit", "--load-model", "simple"]
    for spec in RESTRICTED:
        flags += ["--http-restricted-api", spec, "--grpc-restricted-protocol", spec]
    flags += ["--grpc-restricted-protocol", "health:health-key=h-secret"]  # HTTP health stays open for probes
    server = start_server(repository, tmp_path_factory.mktemp("logs") / "restricted.log", *flags,
                          ready_model="simple")
    yield server
    assert stop_server(server) == 0, server.output()


def simple_inputs(module):
    inputs = [module.InferInput(name, [1, 16], "INT32") for name in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.arange(16, dtype=np.int32)[None])
    return inputs


CALLS = {  # group -> (header, value, call(client, module, headers))
    "inference": ("infer-key", "i-secret", lambda c, m, h: c.infer("simple", simple_inputs(m), headers=h)),
    "model-config": ("infer-key", "i-secret", lambda c, m, h: c.get_model_config("simple", headers=h)),
    "model-repository": ("admin-key", "a-secret", lambda c, m, h: c.get_model_repository_index(headers=h)),
    "statistics": ("admin-key", "a-secret", lambda c, m, h: c.get_inference_statistics("simple", headers=h)),
    "metadata": ("meta-key", "m-secret", lambda c, m, h: c.get_model_metadata("simple", headers=h)),
    "health": ("health-key", "h-secret", lambda c, m, h: c.is_server_ready(headers=h)),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("group", list(CALLS))
def test_each_restricted_group_needs_its_header(restricted_server, protocol, group):
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(
        restricted_server.http_url if protocol == "http" else restricted_server.grpc_url
    )
    key, value, call = CALLS[group]
    if group == "health" and protocol == "http":
        assert call(client, module, {})  # not restricted on HTTP in this server
        return
    header = key if protocol == "http" else f"triton-grpc-protocol-{key}"  # Triton prefixes gRPC's
    unprefixed = [{key: value}] if protocol == "grpc" else []
    for headers in [{}, {header: "wrong"}, *unprefixed]:
        with pytest.raises(InferenceServerException) as refused:
            call(client, module, headers)
        expected = "403" if protocol == "http" else "StatusCode.UNAVAILABLE"
        assert refused.value.status() == expected, refused.value
        what = "API" if protocol == "http" else "protocol"
        assert f"This {what} is restricted, expecting header '{header}'" in refused.value.message()
    assert call(client, module, {header: value}) is not None
    client.close()


def test_a_bad_restriction_flag_is_refused_at_start(repository, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    done = subprocess.run([sys.executable, "-m", "server", "--model-repository", str(repository),
                           "--http-restricted-api", "inferense:k=v"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "unknown API 'inferense'" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    server_cert = authority.issue_cert("127.0.0.1", "localhost")
    client_cert = authority.issue_cert("client@ortserve.test")
    paths = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key",
             "client": folder / "client.pem"}
    authority.cert_pem.write_to_path(paths["ca"])
    server_cert.cert_chain_pems[0].write_to_path(paths["cert"])
    server_cert.private_key_pem.write_to_path(paths["key"])
    client_cert.private_key_and_cert_chain_pem.write_to_path(paths["client"])
    return paths, client_cert


@pytest.mark.parametrize("mutual", [False, True])
def test_tls_with_tritonclient(repository, tmp_path, certificates, mutual):
    paths, client_cert = certificates
    flags = ["--grpc-use-ssl", "true", "--grpc-server-cert", str(paths["cert"]),
             "--grpc-server-key", str(paths["key"]), "--http-ssl-cert", str(paths["cert"]),
             "--http-ssl-key", str(paths["key"])]
    if mutual:
        flags += ["--grpc-use-ssl-mutual", "true", "--grpc-root-cert", str(paths["ca"]),
                  "--http-ssl-mutual", "true", "--http-ssl-root-cert", str(paths["ca"])]

    def context():
        made = ssl.create_default_context(cafile=str(paths["ca"]))
        if mutual:
            made.load_cert_chain(str(paths["client"]))
        return made

    server = start_server(repository, tmp_path / "tls.log", *flags, verify=_verify(paths, mutual))
    try:
        http = httpclient.InferenceServerClient(server.http_url, ssl=True, ssl_context_factory=context)
        grpc_kwargs = {"ssl": True, "root_certificates": str(paths["ca"])}
        if mutual:
            key = _write(tmp_path / "client.key", client_cert.private_key_pem.bytes())
            chain = _write(tmp_path / "client.crt", client_cert.cert_chain_pems[0].bytes())
            grpc_kwargs.update(private_key=key, certificate_chain=chain)
        grpc = grpcclient.InferenceServerClient(server.grpc_url, **grpc_kwargs)
        for client, module in ((http, httpclient), (grpc, grpcclient)):
            result = client.infer("simple", simple_inputs(module))
            assert np.array_equal(result.as_numpy("OUTPUT0"), 2 * np.arange(16)[None])
        plain = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException):
            plain.is_server_live()
        if mutual:  # a client without a certificate of the authority is turned away
            anonymous = grpcclient.InferenceServerClient(server.grpc_url, ssl=True,
                                                         root_certificates=str(paths["ca"]))
            with pytest.raises(InferenceServerException):
                anonymous.is_server_live()
            stranger = httpclient.InferenceServerClient(
                server.http_url, ssl=True,
                ssl_context_factory=lambda: ssl.create_default_context(cafile=str(paths["ca"])))
            with pytest.raises((OSError, HTTPConnectionClosed)):  # TLS 1.3: the server drops it at once
                stranger.is_server_live()
            anonymous.close()
            stranger.close()
        for client in (http, grpc, plain):  # an idle HTTPS keep-alive connection would hold shutdown
            client.close()
    finally:
        assert stop_server(server) == 0, server.output()


def _verify(paths, mutual):
    if not mutual:
        return paths["ca"]
    made = ssl.create_default_context(cafile=str(paths["ca"]))
    made.load_cert_chain(str(paths["client"]))
    return made


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_tei_routes_are_restricted_with_the_group_their_v2_kin_belong_to():
    """A server that restricts inference restricts TEI's embed, rerank, predict, tokenize and decode too
    (before, they were open whatever the flags said); TEI's /health is health, /info metadata."""
    from server.api.restrictions import http_group

    for path in ("/embed", "/rerank", "/predict", "/tokenize", "/decode", "/tei/minilm/embed",
                 "/tei/minilm/decode"):
        assert http_group("POST", path) == "inference", path
    assert http_group("GET", "/health") == "health"
    assert http_group("GET", "/info") == http_group("GET", "/tei/minilm/info") == "metadata"
    assert http_group("POST", "/tei/minilm/embedding") is None


def test_every_http_route_belongs_to_a_restrictable_group():
    """A route outside every group could not be restricted: a new route must be given its group."""
    import re

    from server.api.http_app import ROUTERS
    from server.api.restrictions import http_group

    for router in ROUTERS:
        for route in router.routes:
            path = re.sub(r"\{[^}]+\}", "m", route.path)
            for method in route.methods:
                assert http_group(method, path) is not None, (method, route.path)
