"""Automatic prefix caching: greedy outputs are the same with the cache on and off for prompts that share
nothing, part of a prefix or all of it, under eviction, and for requests that join a running batch; the
metrics count what was reused, and OpenAI's usage says it per request. For ortserve's own export and for
onnxruntime-genai's graphs."""

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.generation.prefix_cache import BLOCK
from tests.conftest import start_server, stop_server
from tests.models import copy_model
from tests.test_import_llm import import_llm

NEW_TOKENS = 24
BUDGETS = {"uncached": 0, "cached": 4096, "small": 2 * BLOCK}  # small: two blocks, evicting


@pytest.fixture(scope="module", params=["exported", "genai"])
def servers(request, tmp_path_factory):
    """One tiny Llama exported by ortserve (left-padded cache) or built by onnxruntime-genai's builder
    (GroupQueryAttention, right-padded cache), served as three models with different cache budgets."""
    if request.param == "exported":
        source = request.getfixturevalue("tiny_llama") / "llama"
    else:
        imported = tmp_path_factory.mktemp("imported")
        import_llm(request.getfixturevalue("genai_llama")("fp32"), imported, "llama")
        source = imported / "llama"
    repository = tmp_path_factory.mktemp("prefix")
    for name, budget in BUDGETS.items():
        config = copy_model(source, repository, name) / "config.pbtxt"
        text = config.read_text()
        assert text.count('string_value: "4096"') == 1
        config.write_text(text.replace('string_value: "4096"', f'string_value: "{budget}"'))
    server = start_server(repository, tmp_path_factory.mktemp("logs") / "server.log", ready_model="small")
    yield server
    assert stop_server(server) == 0, server.output()


def generate(server, model, prompt, tokens=NEW_TOKENS):
    body = {"input_ids": prompt, "parameters": {"max_tokens": tokens, "temperature": 0}}
    answer = httpx.post(f"http://{server.http_url}/v2/models/{model}/generate", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    return answer.json()["output_ids"]


def prefix_metrics(server, model) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("ortserve_prefix_cache") and sample.labels.get("model") == model}


def test_outputs_are_the_same_with_and_without_the_cache(servers):
    rng = np.random.default_rng(1)
    system = rng.integers(1, 300, 3 * BLOCK).tolist()  # three whole blocks shared by the next prompts
    prompts = [
        rng.integers(1, 300, 40).tolist(),  # shares nothing
        system + rng.integers(1, 300, 7).tolist(),
        system + rng.integers(1, 300, 11).tolist(),  # all of the shared prefix
        system[:BLOCK + 5] + rng.integers(1, 300, 20).tolist(),  # part of it: one block
        system,  # exactly the cached blocks: the last one is prefilled again for its logits
        system + rng.integers(1, 300, 3).tolist(),
    ]
    for model in ("cached", "small"):
        for prompt in prompts:
            assert generate(servers, model, prompt) == generate(servers, "uncached", prompt), (model, prompt)
    cached = prefix_metrics(servers, "cached")
    assert cached["ortserve_prefix_cache_hits_total"] >= 4
    assert cached["ortserve_prefix_cache_reused_tokens_total"] >= 3 * 3 * BLOCK
    assert cached["ortserve_prefix_cache_bytes"] > 0
    block_bytes = 2 * 2 * 2 * BLOCK * 16 * 4  # layers x key/value x heads x tokens x head size x fp32
    assert cached["ortserve_prefix_cache_bytes"] % block_bytes == 0
    assert prefix_metrics(servers, "small")["ortserve_prefix_cache_bytes"] == 2 * block_bytes  # evicting
    assert prefix_metrics(servers, "uncached")["ortserve_prefix_cache_hits_total"] == 0


def test_requests_that_join_a_running_batch_with_a_cached_prefix(servers):
    rng = np.random.default_rng(2)
    shared = rng.integers(1, 300, 2 * BLOCK).tolist()
    prompts = [shared + rng.integers(1, 300, n).tolist() for n in (1, 9, 17, 4)]
    expected = [generate(servers, "uncached", prompt) for prompt in prompts]
    generate(servers, "cached", shared + [5])  # the shared blocks are cached now

    def staggered(index):
        import time

        time.sleep(0.05 * index)  # later ones join while the first ones decode
        return generate(servers, "cached", prompts[index])

    with ThreadPoolExecutor(len(prompts)) as pool:
        assert list(pool.map(staggered, range(len(prompts)))) == expected


def test_openai_usage_says_how_many_prompt_tokens_came_from_the_cache(served):
    """OpenAI's `prompt_tokens_details.cached_tokens` (Responses: `input_tokens_details`): a prompt sent
    again reads every whole block before its last token from the cache; a conversation continued by
    `previous_response_id` reads the earlier turn's."""
    client = openai.OpenAI(base_url=f"http://{served.http_url}/v1", api_key="unused", max_retries=0)
    text = f"{uuid.uuid4()} " + "The quick brown fox jumps over the lazy dog. " * 6  # new to the cache
    history = [{"role": "user", "content": text}]
    first = client.chat.completions.create(model="tiny", messages=history, max_tokens=2).usage
    assert first.prompt_tokens > 3 * BLOCK and first.prompt_tokens_details.cached_tokens == 0
    reread = (first.prompt_tokens - 1) // BLOCK * BLOCK
    chunks = client.chat.completions.create(model="tiny", messages=history, max_tokens=2, stream=True,
                                            stream_options={"include_usage": True})
    assert [chunk.usage for chunk in chunks][-1].prompt_tokens_details.cached_tokens == reread
    completed = [client.completions.create(model="tiny", prompt=text + " Again.", max_tokens=2).usage
                 for _ in range(2)]
    assert [usage.prompt_tokens_details.cached_tokens for usage in completed] == [
        0, (completed[0].prompt_tokens - 1) // BLOCK * BLOCK]
    turn = client.responses.create(model="tiny", input=f"{uuid.uuid4()} {text}", max_output_tokens=2)
    assert turn.usage.input_tokens_details.cached_tokens == 0
    after = client.responses.create(model="tiny", input="And?", max_output_tokens=2,
                                    previous_response_id=turn.id).usage
    assert after.input_tokens_details.cached_tokens >= (turn.usage.input_tokens - BLOCK) // BLOCK * BLOCK
