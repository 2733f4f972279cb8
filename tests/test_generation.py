"""Generation through the real server: parity with transformers, streaming over SSE and gRPC,
stop strings, abort on disconnect, limits."""

import asyncio
import json
import queue
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from httpx_sse import connect_sse
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from exporters import gpt, training
from exporters.demo import SIMPLE_CONFIG, publish, simple_model
from exporters.publish import set_parameters, write_config
from loadtest.run_locust import run_locust
from server.protocol import ModelConfig
from tests.conftest import start_server, stop_server
from tests.test_exporters import tiny_gpt

CONTEXT = 64  # the served context of `gpt`: the limit messages below assume it
PROMPTS = [[5, 17, 3, 99, 42, 8, 8], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [60, 61, 62]]


@pytest.fixture(scope="module")
def generation(tmp_path_factory):
    root = tmp_path_factory.mktemp("generation")
    repository = root / "repository"
    corpus = training.python_corpus(max_bytes=60_000)
    tokenizer = training.train_tokenizer(corpus, 300, root / "tokenizer.json")
    model = tiny_gpt(vocab=300, positions=4096)
    gpt.export(model, repository, "gpt", ["fp32"], tokenizer_file=tokenizer)
    limited = repository / "gpt_limited"  # the whole context: generations long enough to interrupt
    shutil.copytree(repository / "gpt", limited)
    shutil.copytree(repository / "gpt", repository / "gpt_bound")
    shutil.copytree(repository / "gpt", repository / "gpt_lookup")
    for name, limits in (("gpt_limited", {"max_running_sequences": 1, "max_waiting_sequences": 1}),
                         ("gpt_bound", {"io_binding": "true", "prompt_lookup_num_tokens": "3"}),
                         ("gpt_lookup", {"prompt_lookup_num_tokens": "3"}),
                         ("gpt", {"max_sequence_length": CONTEXT})):
        config = text_format.Parse((repository / name / "config.pbtxt").read_text(), ModelConfig())
        write_config(repository, name, set_parameters(config, **limits))
    publish(repository, "simple", simple_model(), SIMPLE_CONFIG)  # for the locust scenario
    server = start_server(repository, root / "server.log", ready_model="gpt_limited")
    yield server, model
    assert stop_server(server) == 0, server.output()


def test_prompt_lookup_on_an_exported_decoder_serves_the_same_greedy_tokens_in_fewer_runs(generation):
    """The exported GPT (position ids, the left-padded cache on the host) checks drafts too: each prompt,
    sent alone, gets the tokens it gets without drafts, with drafts accepted. With the cache on the
    device (gpt_bound, io_binding) drafts are not checked, and its log says so."""
    server, _ = generation
    for prompt in PROMPTS:
        answers = [post(server, f"/v2/models/{name}/generate", greedy(prompt, 40))
                   for name in ("gpt", "gpt_lookup")]
        assert all(answer.status_code == 200 for answer in answers), answers[0].text
        assert answers[0].json()["output_ids"] == answers[1].json()["output_ids"]
    assert metric(server, "ortserve_draft_tokens_accepted_total", model="gpt_lookup") > 0
    assert "prompt_lookup_num_tokens is set, but drafts are checked on a cache on the host" in server.output()


def post(server, path, body, timeout=60):
    return httpx.post(f"http://{server.http_url}{path}", json=body, timeout=timeout)


def greedy(ids, max_tokens=12):
    return {"input_ids": ids, "parameters": {"max_tokens": max_tokens, "temperature": 0}}


@pytest.mark.parametrize("name", ["gpt", "gpt_bound"])  # gpt_bound: the cache in IO-bound buffers
def test_concurrent_greedy_generation_equals_transformers_and_each_prompt_alone(generation, name):
    server, model = generation

    lengths = [40, 12, 45, 25]  # rows leave the batch at different steps; the cache grows past 32 and 64

    async def joining_a_running_sequence():
        """The first prompt streams; the others arrive once it has its first token, so they are
        prefilled while it decodes and join its batch."""
        async with httpx.AsyncClient(base_url=f"http://{server.http_url}", timeout=60) as client:
            body = greedy(PROMPTS[0], lengths[0])
            async with client.stream("POST", f"/v2/models/{name}/generate_stream", json=body) as first:
                lines = first.aiter_lines()
                events = (json.loads(line[6:]) async for line in lines if line.startswith("data: "))
                first_ids = (await anext(events))["output_ids"]
                replies = await asyncio.gather(*[client.post(f"/v2/models/{name}/generate", json=greedy(p, n))
                                                 for p, n in zip(PROMPTS[1:], lengths[1:])])
                first_ids += [token async for event in events for token in event["output_ids"]]
        return [first_ids] + [r.json()["output_ids"] for r in replies]

    together = asyncio.run(joining_a_running_sequence())
    alone = [post(server, f"/v2/models/{name}/generate", greedy(p, n)).json()["output_ids"]
             for p, n in zip(PROMPTS, lengths)]
    expected = [gpt.greedy_torch(model, [p], n)[0] for p, n in zip(PROMPTS, lengths)]
    assert together == expected
    assert alone == expected


def test_seeded_sampling_is_reproducible(generation):
    server, _ = generation
    body = {"text_input": "def ", "parameters": {"max_tokens": 20, "temperature": 1.0, "seed": 11}}
    first = post(server, "/v2/models/gpt/generate", body).json()
    again = post(server, "/v2/models/gpt/generate", body).json()
    reseeded = {**body, "parameters": {**body["parameters"], "seed": 12}}
    other = post(server, "/v2/models/gpt/generate", reseeded)
    assert first["text_output"] == again["text_output"]
    assert first["output_ids"] != other.json()["output_ids"]


def test_triton_generate_stream_pieces_add_up_to_the_whole_text(generation):
    server, _ = generation
    body = {"text_input": "import ", "max_tokens": 10, "temperature": 0}
    whole = post(server, "/v2/models/gpt/generate", body).json()
    with httpx.Client(timeout=60) as client, connect_sse(
        client, "POST", f"http://{server.http_url}/v2/models/gpt/generate_stream", json=body
    ) as source:
        events = [json.loads(e.data) for e in source.iter_sse()]
    assert len(events) > 1  # streamed in pieces (tokens that pile up behind a slow client go together)
    assert [i for e in events for i in e["output_ids"]] == whole["output_ids"]
    assert whole["model_version"] == events[0]["model_version"] == "1"
    assert "".join(e["text_output"] for e in events) == whole["text_output"]
    assert events[-1]["finish_reason"] == "length" and "finish_reason" not in events[0]
    assert events[-1]["usage"]["completion_tokens"] == 10


def test_openai_completions_json_and_stream(generation):
    server, _ = generation
    body = {"model": "gpt", "prompt": ["class ", "for "], "max_tokens": 6, "temperature": 0}
    reply = post(server, "/v1/completions", body).json()
    assert [c["index"] for c in reply["choices"]] == [0, 1]
    assert reply["usage"]["completion_tokens"] == 12
    assert reply["usage"]["total_tokens"] == reply["usage"]["prompt_tokens"] + 12
    with httpx.Client(timeout=60) as client, connect_sse(
        client, "POST", f"http://{server.http_url}/v1/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    ) as source:
        data = [e.data for e in source.iter_sse()]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    texts = ["".join(c["text"] for c in choices if c["index"] == i) for i in (0, 1)]
    assert texts == [c["text"] for c in reply["choices"]]
    assert chunks[-1]["usage"] == reply["usage"]
    models = httpx.get(f"http://{server.http_url}/v1/models").json()
    assert {m["id"] for m in models["data"]} == {"gpt", "gpt_bound", "gpt_limited", "gpt_lookup"}


def test_grpc_stream_sends_tokens_as_they_come_and_model_infer_the_whole_text(generation):
    server, _ = generation
    client = grpcclient.InferenceServerClient(server.grpc_url)
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"while "], dtype=object))
    parameters = {"max_tokens": 7, "temperature": 0}
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    client.async_stream_infer("gpt", [text], parameters=parameters)
    pieces, tokens = [], []
    while True:
        result, error = responses.get(timeout=60)
        assert error is None, error
        pieces.append(result.as_numpy("text_output")[0].decode())
        tokens.append(len(result.as_numpy("output_ids")))
        final = result.get_response().parameters.get("triton_final_response")
        if final is not None and final.bool_param:
            break
    client.stop_stream()
    whole = client.infer("gpt", [text], parameters=parameters)
    # the first token goes out alone; later ones as they come, several in one response when they come
    # faster than the stream sends (this model's steps take well under a millisecond)
    assert tokens[0] == 1 and len(pieces) >= 2 and sum(tokens) == 7
    assert "".join(pieces) == whole.as_numpy("text_output")[0].decode()
    assert whole.get_response().parameters["finish_reason"].string_param == "length"


def test_stop_string_across_tokens_ends_the_text_before_it(generation):
    server, _ = generation
    body = {"input_ids": PROMPTS[0], "parameters": {"max_tokens": 20, "temperature": 0}}
    full = post(server, "/v2/models/gpt/generate", body).json()
    text = full["text_output"]
    pieces = [post(server, "/v2/models/gpt/generate", {**body, "parameters": {**body["parameters"],
                                                                              "max_tokens": n}}).json()
              for n in range(1, 21)]
    lengths = [len(p["text_output"]) for p in pieces]
    # a stop string that starts inside one token's text and ends inside a later one's
    start = next(i for i in range(1, len(lengths)) if lengths[i] - lengths[i - 1] >= 1 and lengths[i - 1] > 0)
    stop = text[lengths[start - 1] - 1: lengths[start] + 1]
    assert len(stop) >= 3
    cut = text.find(stop)
    stopped = post(server, "/v2/models/gpt/generate",
                   {**body, "parameters": {**body["parameters"], "stop": [stop]}}).json()
    assert stopped["finish_reason"] == "stop"
    assert stopped["text_output"] == text[:cut]


def test_min_tokens_holds_stop_tokens_back_and_a_stop_string_can_stay_in_the_text(generation):
    """vLLM's `min_tokens` and `include_stop_str_in_output`, through the engine's prefill and decode runs
    (Triton's generate) and OpenAI's completions."""
    server, _ = generation
    body = greedy(PROMPTS[0], 12)
    first = post(server, "/v2/models/gpt/generate", body).json()["output_ids"][0]

    def generate(**parameters):
        reply = post(server, "/v2/models/gpt/generate", {**body, "parameters": {**body["parameters"],
                                                                                **parameters}})
        assert reply.status_code == 200, reply.text
        return reply.json()

    ended = generate(stop_token_ids=[first])
    assert (ended["output_ids"], ended["finish_reason"]) == ([], "stop")
    held = generate(stop_token_ids=[first], min_tokens=4)["output_ids"]
    assert len(held) >= 4 and first not in held[:4]

    completion = {"model": "gpt", "prompt": PROMPTS[0], "max_tokens": 12, "temperature": 0}
    text = post(server, "/v1/completions", completion).json()["choices"][0]["text"]
    stop = text[3:5]
    cut = text.find(stop)
    for include, expected in ((False, text[:cut]), (True, text[:cut + len(stop)])):
        choice = post(server, "/v1/completions", {**completion, "stop": [stop],
                                                  "include_stop_str_in_output": include}).json()["choices"][0]
        assert (choice["text"], choice["finish_reason"]) == (expected, "stop")


def metric(server, name, **labels):
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def assert_one_abort(server, model, aborts, aborted) -> None:
    """The server counts exactly one more aborted sequence (soon) and none runs on."""
    for _ in range(100):
        if aborts() > aborted:
            break
        time.sleep(0.05)
    assert aborts() == aborted + 1
    assert metric(server, "ortserve_generation_running_sequences", model=model) == 0


def test_a_client_that_disconnects_aborts_its_sequence(generation):
    server, _ = generation
    model = "gpt_limited"
    aborts = partial(metric, server, "ortserve_generation_finished_total", model=model, finish_reason="abort")
    aborted = aborts()
    body = {"input_ids": [1, 2], "parameters": {"max_tokens": 4000, "temperature": 0, "ignore_eos": True}}
    with httpx.Client(timeout=60) as client, connect_sse(
        client, "POST", f"http://{server.http_url}/v2/models/{model}/generate_stream", json=body
    ) as source:
        next(source.iter_sse())
    assert_one_abort(server, model, aborts, aborted)
    assert post(server, "/v2/models/gpt/generate", greedy([3], 2)).status_code == 200


@pytest.mark.parametrize("path, body", [
    ("/v2/models/gpt_limited/generate", {"input_ids": [1, 2]}),
    ("/v1/completions", {"model": "gpt_limited", "prompt": [[1, 2]]}),
])
def test_a_client_that_leaves_a_whole_generation_aborts_it(generation, path, body):
    server, _ = generation
    model = "gpt_limited"
    aborts = partial(metric, server, "ortserve_generation_finished_total", model=model, finish_reason="abort")
    aborted = aborts()
    settings = {"max_tokens": 4000, "temperature": 0, "ignore_eos": True}
    body = {**body, "parameters": settings} if path.startswith("/v2") else {**body, **settings}
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {server.http_url}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode()
    running = partial(metric, server, "ortserve_generation_running_sequences", model=model)
    with socket.create_connection(("127.0.0.1", server.http_port)) as client:
        client.sendall(head + payload)
        deadline = time.monotonic() + 30
        while running() == 0:  # the client leaves once its sequence runs, long before its 4000 tokens
            assert time.monotonic() < deadline, "the sequence never ran"
            time.sleep(0.01)
    assert_one_abort(server, model, aborts, aborted)


def test_the_inference_gateways_gauges_follow_a_generation_load(generation):
    """vllm:* gauges, as Kubernetes' inference gateway reads them: gpt_limited runs one sequence at a time
    (max_running_sequences 1), so a second request waits; its context fills the token capacity (one
    sequence of the whole context) as it grows, and all falls back to 0 when the load ends. The second
    request's wait is counted as queue time (what the Helm chart's autoscaling rule reads)."""
    server, _ = generation
    gauge = partial(metric, server, model_name="gpt_limited")
    config = httpx.get(f"http://{server.http_url}/v2/models/gpt_limited/config").json()
    capacity = min(16 * 1024, int(config["parameters"]["max_sequence_length"]["string_value"]))
    assert metric(server, "vllm:cache_config_info", model_name="gpt_limited", block_size="16",
                  num_gpu_blocks=str(capacity // 16)) == 1
    queued = partial(metric, server, "nv_inference_queue_duration_us_total", model="gpt_limited")
    queued_before = queued()
    long = {"input_ids": [1, 2, 3], "parameters": {"max_tokens": 4000, "temperature": 0, "ignore_eos": True}}
    waiter = ThreadPoolExecutor(1)
    with httpx.Client(timeout=60) as client, connect_sse(
            client, "POST", f"http://{server.http_url}/v2/models/gpt_limited/generate_stream", json=long
    ) as source:
        events = source.iter_sse()
        for _ in range(5):
            next(events)
        early = gauge("vllm:kv_cache_usage_perc")
        assert gauge("vllm:num_requests_running") == 1 and 0 < early < 1
        waiting = waiter.submit(post, server, "/v2/models/gpt_limited/generate", greedy([4], 2))
        deadline = time.monotonic() + 30
        while gauge("vllm:num_requests_waiting") < 1:
            assert time.monotonic() < deadline, "the second request never waited"
            time.sleep(0.01)
        seen_waiting = time.monotonic()
        for _ in range(200):
            next(events)
        scraped = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text
        later = {sample.name: sample.value for family in text_string_to_metric_families(scraped)
                 for sample in family.samples if sample.labels.get("model_name") == "gpt_limited"}
        assert later["vllm:kv_cache_usage_perc"] > early
        assert later["vllm:kv_cache_usage_perc"] == later["vllm:gpu_cache_usage_perc"]  # the older name
        held = time.monotonic() - seen_waiting
    assert waiting.result().status_code == 200  # it ran once the first was closed
    assert queued() - queued_before >= held * 1e6  # its wait is queue time, as Triton counts it
    deadline = time.monotonic() + 30
    while gauge("vllm:num_requests_running") or gauge("vllm:kv_cache_usage_perc"):
        assert time.monotonic() < deadline, "the gauges stayed up after the load"
        time.sleep(0.05)
    assert gauge("vllm:num_requests_waiting") == 0


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"input_ids": list(range(1, 65))}, "the prompt has 64 tokens; this model allows at most 63"),
        ({"input_ids": [1, 2], "max_tokens": 63}, "max_tokens 63 is beyond the context"),
        ({"text_input": "x", "temperature": -0.5}, "parameter 'temperature' must be a number >= 0"),
        ({"text_input": "x", "top_p": 1.5}, "parameter 'top_p'"),
        ({"input_ids": [1, 999]}, "input_ids must be a non-empty list of token ids in [0, 300)"),
        ({"parameters": {}}, "needs text_input (or input_ids)"),
        ({"text_input": "x", "ignore_eos": "false"}, "'ignore_eos' must be true or false, got 'false'"),
        ({"text_input": "x", "max_token": 4}, "unknown generation parameter 'max_token'"),
        ({"text_input": "x", "parameters": {"temprature": 0}}, "unknown generation parameter 'temprature'"),
        ({"text_input": "x", "stop": json.loads("[" * 101 + "]" * 101)},
         "JSON nesting depth exceeds maximum allowed limit (100)"),
    ],
)
def test_limits_and_bad_values_are_refused_with_the_reason(generation, body, fragment):
    server, _ = generation
    reply = post(server, "/v2/models/gpt/generate", body)
    assert reply.status_code == 400
    assert fragment in reply.json()["error"]


def test_openai_errors_use_openai_shape(generation):
    server, _ = generation
    reply = post(server, "/v1/completions", {"model": "gpt", "prompt": "x", "temperature": "hot"})
    assert reply.status_code == 400
    assert "temperature" in reply.json()["error"]["message"]
    assert reply.json()["error"]["type"] == "invalid_request_error"
    missing = post(server, "/v1/completions", {"model": "nope", "prompt": "x"})
    assert missing.status_code == 404
    unsupported = post(server, "/v1/completions", {"model": "gpt", "prompt": "x", "suffix": "y"})
    assert unsupported.status_code == 400
    assert "'suffix' is not supported" in unsupported.json()["error"]["message"]
    neutral = {"model": "gpt", "prompt": "x", "max_tokens": 2, "presence_penalty": 0, "logit_bias": {},
               "logprobs": None, "echo": False, "best_of": 1, "user": "someone"}
    assert post(server, "/v1/completions", neutral).status_code == 200  # what clients send by default


def test_generation_models_refuse_outputs_they_do_not_have(generation):
    server, _ = generation
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    prompt = grpcclient.InferInput("text_input", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"def "], dtype=object))
    with pytest.raises(InferenceServerException) as refused:
        client.infer("gpt", [prompt], outputs=[grpcclient.InferRequestedOutput("logits")])
    assert "unexpected output 'logits' for generation model 'gpt'" in refused.value.message()
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_too_many_waiting_sequences_get_503(generation):
    server, _ = generation
    long = {"input_ids": [1], "parameters": {"max_tokens": 63, "temperature": 0, "ignore_eos": True}}

    async def burst():
        async with httpx.AsyncClient(base_url=f"http://{server.http_url}", timeout=60) as client:
            send = partial(client.post, "/v2/models/gpt_limited/generate")
            return await asyncio.gather(*[send(json=long) for _ in range(6)])

    replies = asyncio.run(burst())
    codes = sorted(r.status_code for r in replies)
    assert 200 in codes and 503 in codes, codes
    refused = next(r for r in replies if r.status_code == 503)
    assert "too many sequences waiting" in refused.json()["error"]


def test_locust_scenario_with_every_user_type_including_generation(generation, tmp_path):
    server, _ = generation
    rows = run_locust(server.http_url, server.grpc_url, users=4, seconds=4, prefix=tmp_path / "locust")
    by_name = {row["name"]: row for row in rows}
    assert set(by_name) == {"http json infer", "http binary infer", "grpc infer", "generate_stream",
                            "generation time to first token"}
    for row in rows:
        assert row["requests"] > 0 and row["failures"] == 0, row


def test_every_dashboard_metric_is_served_with_a_generation_model(generation):
    from tests.test_metrics import assert_served, dashboard_metrics

    server, _ = generation
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text
    served = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert_served(served, dashboard_metrics())


def test_generation_traffic_moves_token_counters_and_the_statistics_extension(generation):
    server, _ = generation
    generated = metric(server, "ortserve_generation_tokens_total", model="gpt")
    prompt = metric(server, "ortserve_prompt_tokens_total", model="gpt")
    success = metric(server, "nv_inference_request_success_total", model="gpt")
    reply = post(server, "/v2/models/gpt/generate", greedy([4, 5, 6], 5))
    assert reply.status_code == 200
    assert metric(server, "ortserve_generation_tokens_total", model="gpt") == generated + 5
    assert metric(server, "ortserve_prompt_tokens_total", model="gpt") == prompt + 3
    assert metric(server, "nv_inference_request_success_total", model="gpt") == success + 1
    stats = httpx.get(f"http://{server.http_url}/v2/models/gpt/stats").json()["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == success + 1


def test_a_generation_config_with_a_bad_limit_makes_only_that_model_unavailable(generation, tmp_path):
    server, _ = generation
    repository = tmp_path / "repository"
    source = next(p for p in (server.log.parent / "repository").iterdir() if p.name == "gpt")
    shutil.copytree(source, repository / "gpt_bad")
    config = text_format.Parse((repository / "gpt_bad" / "config.pbtxt").read_text(), ModelConfig())
    set_parameters(config, max_running_sequences=0)
    write_config(repository, "gpt_bad", config)
    publish(repository, "simple", simple_model(), SIMPLE_CONFIG)
    other = start_server(repository, tmp_path / "server.log", "--strict-readiness", "false",
                         ready_model="simple")
    try:
        index = httpx.post(f"http://{other.http_url}/v2/repository/index").json()
        bad = next(row for row in index if row["name"] == "gpt_bad")
        assert bad["state"] == "UNAVAILABLE"
        assert "'max_running_sequences' must be an integer >= 1, got '0'" in bad["reason"]
    finally:
        stop_server(other)
