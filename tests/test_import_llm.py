"""Decoders exported elsewhere, served as they are (`ortserve import-llm`): onnxruntime-genai's builder
(GroupQueryAttention, right-padded cache; fp32 and int4) and Optimum (run in a virtual environment of its
own: it needs transformers < 4.58). Served greedy tokens, for prompts of different lengths sent at once,
equal the exporting package's own: onnxruntime-genai's generator, or transformers where Optimum runs."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from loadtest.peer_servers import environment
from tests.conftest import start_server, stop_server
from tests.test_generation import metric
from tests.test_llm_export import checkpoint_with_tokenizer

ORTSERVE = str(Path(sys.executable).parent / "ortserve")
PROMPTS = [[5, 9, 17], list(range(20, 61)), [7], list(range(100, 112))]
NEW_TOKENS = 16
OPTIMUM = ["optimum-onnx==0.1.0", "transformers<4.58", "torch==2.13.0", "onnxruntime==1.32.0"]


def import_llm(source: Path, repository: Path, name: str, *flags: str) -> None:
    done = subprocess.run([ORTSERVE, "import-llm", str(source), "--repository", str(repository),
                           "--name", name, *flags], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def genai_greedy(model_dir: Path, prompt: list[int]) -> list[int]:
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + NEW_TOKENS)  # ends at eos
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    while not generator.is_done():
        generator.generate_next_token()
    return [int(token) for token in generator.get_sequence(0)][len(prompt):]


def served_greedy(server, name: str, ignore_eos: bool) -> list[list[int]]:
    def one(prompt):
        body = {"input_ids": prompt, "parameters": {"max_tokens": NEW_TOKENS, "temperature": 0,
                                                    "ignore_eos": ignore_eos}}
        answer = httpx.post(f"http://{server.http_url}/v2/models/{name}/generate", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        return answer.json()["output_ids"]

    with ThreadPoolExecutor(len(PROMPTS)) as pool:  # at once: right-padded rows share every step
        return list(pool.map(one, PROMPTS))


@pytest.fixture(scope="module")
def genai_models(genai_llama, tmp_path_factory):
    built = {precision: genai_llama(precision) for precision in ("fp32", "int4")}
    root = tmp_path_factory.mktemp("genai-served")
    repository = root / "repository"
    for precision, source in built.items():
        import_llm(source, repository, f"genai_{precision}")
    import_llm(built["fp32"], repository, "genai_fp32_lookup", "--prompt-lookup", "3")
    server = start_server(repository, root / "server.log", ready_model="genai_int4")
    yield built, server
    assert stop_server(server) == 0, server.output()


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_genai_builder_models_serve_its_generators_greedy_tokens(genai_models, precision):
    built, server = genai_models
    # each prompt alone in onnxruntime-genai (the int4 kernels quantize activations per row)
    expected = [genai_greedy(built[precision], prompt) for prompt in PROMPTS]
    assert served_greedy(server, f"genai_{precision}", ignore_eos=False) == expected  # both end at eos


def test_prompt_lookup_on_a_genai_graph_serves_its_generators_greedy_tokens(genai_models):
    """The builder's graphs return every position's logits (no `logit_positions`): a sequence running
    alone checks its drafts in one run of them and still serves the generator's tokens."""
    built, server = genai_models
    for prompt in PROMPTS:  # one at a time: a sequence drafts while it runs alone
        body = {"input_ids": prompt, "parameters": {"max_tokens": NEW_TOKENS, "temperature": 0}}
        answer = httpx.post(f"http://{server.http_url}/v2/models/genai_fp32_lookup/generate", json=body,
                            timeout=120)
        assert answer.status_code == 200, answer.text
        assert answer.json()["output_ids"] == genai_greedy(built["fp32"], prompt)
    assert metric(server, "ortserve_draft_tokens_accepted_total", model="genai_fp32_lookup") > 0


def genai_decoder(model_dir: Path, slots: int):
    import json

    import onnxruntime as ort

    from server.generation.gqa import GqaDecoder

    head_size = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]["head_size"]
    return GqaDecoder(ort.InferenceSession(str(model_dir / "model.onnx")), head_size, slots)


def test_the_genai_cache_is_written_in_place_while_rows_join_and_leave(genai_models):
    """Rows joining and leaving a running batch keep each row's greedy tokens equal to its prompt run
    alone; decode steps and joins within the reserved slots and columns keep the first prefill's
    buffers, and joining rows are prefilled straight into the running rows' free slots. A row whose
    budget passes the reserved columns gets a new slab that the running rows move to."""
    import numpy as np

    from server.generation.gqa import RightPaddedKV
    from server.generation.protocols import KVCache, TokenDecoder

    decoder = genai_decoder(genai_models[0]["fp32"], slots=4)
    assert isinstance(decoder, TokenDecoder) and isinstance(decoder.empty(1), KVCache)

    def alone(prompt, steps):
        logits, cache = decoder.prefill([prompt], reach=len(prompt) + steps)
        tokens = [int(logits[0].argmax())]
        for _ in range(steps - 1):
            tokens.append(int(decoder.decode([tokens[-1]], cache)[0].argmax()))
        return tokens

    expected = [alone(prompt, 20) for prompt in PROMPTS]
    reach = max(len(p) for p in PROMPTS) + 20
    running, tokens, cache, placed = [], {}, None, []

    def join(rows, beyond=0):
        nonlocal cache
        # budgets that differ a little (as prompts of different lengths have) share the rounded room
        logits, joining = decoder.prefill([PROMPTS[row] for row in rows], reach=reach + rows[0] + beyond,
                                          beside=cache)
        placed.append(cache is not None and np.shares_memory(joining.slab[0], cache.slab[0]))
        cache = RightPaddedKV.concatenate([cache, joining] if cache else [joining])
        running.extend(rows)
        tokens.update({row: [int(row_logits.argmax())] for row, row_logits in zip(rows, logits)})

    def decode(steps):
        for _ in range(steps):
            step = decoder.decode([tokens[row][-1] for row in running], cache)
            for row, row_logits in zip(running, step):
                tokens[row].append(int(row_logits.argmax()))

    join([0])
    buffers = [buffer.ctypes.data for buffer in cache.slab]  # a prefill's slab has room for every slot
    assert cache.slots == 4
    decode(3)
    join([1])  # joined in place
    decode(2)
    join([2, 3])  # joined in place
    decode(4)
    cache = cache.filter([1, 3])  # rows 0 and 2 leave: row 3 moves down behind row 1
    running = [1, 3]
    decode(5)
    assert [buffer.ctypes.data for buffer in cache.slab] == buffers
    assert [len(tokens[row]) for row in range(4)] == [10, 12, 5, 10]
    columns = cache.capacity
    join([0], beyond=columns)  # more columns than the slab has: a new one
    decode(4)
    assert cache.slab[0].ctypes.data != buffers[0] and cache.capacity > columns
    assert placed == [False, True, True, False]
    assert [len(tokens[row]) for row in range(4)] == [5, 16, 5, 14]
    assert all(tokens[row] == expected[row][:len(tokens[row])] for row in range(4))


def test_a_genai_cache_reserved_too_small_grows(genai_models):
    decoder = genai_decoder(genai_models[0]["fp32"], slots=2)
    prompt = PROMPTS[1]
    runs = []
    for reach in (len(prompt) + 1, len(prompt) + 40):  # the first grows as it decodes, the second never
        logits, cache = decoder.prefill([prompt], reach=reach)
        tokens, first = [int(logits[0].argmax())], cache.slab[0]
        for _ in range(39):
            tokens.append(int(decoder.decode([tokens[-1]], cache)[0].argmax()))
        runs.append((tokens, cache.slab[0] is first))
    assert runs[0][0] == runs[1][0]
    assert [kept for _, kept in runs] == [False, True]


def test_a_genai_prefill_that_reuses_cached_prefixes_equals_one_without(genai_models):
    """Rows of one prefill with cached prefixes of different lengths (none, one block, two) decode the
    same tokens as when their prompts run whole."""
    import numpy as np

    decoder = genai_decoder(genai_models[0]["fp32"], slots=3)
    prompts = [list(range(20, 61)), [5, 9, 17] * 7, list(range(100, 140))]

    def greedy(logits, cache, steps=10):
        tokens = [[int(row.argmax())] for row in logits]
        for _ in range(steps - 1):
            for row, row_logits in zip(tokens, decoder.decode([row[-1] for row in tokens], cache)):
                row.append(int(row_logits.argmax()))
        return tokens

    logits, whole = decoder.prefill(prompts, reach=60)
    cached = [(held, [np.array(part[:, :held]) for part in decoder.row_past(whole, row)] if held else None)
              for row, held in enumerate([32, 0, 16])]
    expected = greedy(logits, whole)
    assert greedy(*decoder.prefill(prompts, cached, reach=60)) == expected


def test_a_genai_models_logprobs_are_each_steps_own(genai_models):
    """Decode steps run ahead of the event loop in one reused logits buffer: each streamed token's log
    probability is still its own step's, equal to the decoder's log-softmax run alone."""
    import numpy as np

    built, server = genai_models
    decoder, prompt, count = genai_decoder(built["fp32"], slots=1), PROMPTS[1], 24
    logits, cache = decoder.prefill([prompt], reach=len(prompt) + count)
    expected = []
    for _ in range(count):
        row = logits[0].astype(np.float64)
        token = int(row.argmax())
        expected.append((token, row[token] - row.max() - np.log(np.exp(row - row.max()).sum())))
        logits = decoder.decode([token], cache)
    body = {"model": "genai_fp32", "prompt": [prompt], "max_tokens": count, "temperature": 0,
            "logprobs": 1, "ignore_eos": True}
    answer = httpx.post(f"http://{server.http_url}/v1/completions", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    served = answer.json()["choices"][0]["logprobs"]["token_logprobs"]
    assert len(served) == count
    np.testing.assert_allclose(served, [logprob for _, logprob in expected], atol=1e-4)


def test_a_directory_that_cannot_be_served_says_what_is_not_understood(tmp_path, genai_models):
    import shutil

    built, _ = genai_models
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "notes.txt").write_text("no model here")
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(built["fp32"], no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    cases = ((bare, "holds neither genai_config.json"), (no_tokenizer, "has no tokenizer.json"))
    for source, fragment in cases:
        done = subprocess.run([ORTSERVE, "import-llm", str(source), "--repository", str(tmp_path / "r"),
                               "--name", "x"], capture_output=True, text=True)
        assert done.returncode == 1 and fragment in done.stderr and "Traceback" not in done.stderr


OPTIMUM_GREEDY = """
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
prompts, tokens = json.loads(sys.argv[2]), int(sys.argv[3])
print(json.dumps([model.generate(torch.tensor([p]), max_new_tokens=tokens, min_new_tokens=tokens,
                                 do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(p):].tolist()
                  for p in prompts]))
"""


def test_an_optimum_export_serves_transformers_greedy_tokens(tmp_path):
    import json
    import shutil

    python, why = environment("optimum", OPTIMUM)  # built once, kept under .bench/
    assert python, why
    checkpoint = checkpoint_with_tokenizer(tmp_path / "checkpoint", "llama")
    # the reference tokens come from the transformers of Optimum's environment (it reads the checkpoint
    # with the defaults Optimum exports it with), computed while Optimum exports
    with subprocess.Popen([python, "-c", OPTIMUM_GREEDY, str(checkpoint), json.dumps(PROMPTS),
                           str(NEW_TOKENS)], stdout=subprocess.PIPE, text=True) as greedy:
        exported = tmp_path / "optimum"
        done = subprocess.run([python, "-m", "optimum.exporters.onnx", "--model", str(checkpoint), "--task",
                               "text-generation-with-past", str(exported)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        expected, _ = greedy.communicate(timeout=300)
    assert greedy.returncode == 0
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the checkpoint's own tokenizer files
        shutil.copyfile(checkpoint / name, exported / name)
    import_llm(exported, tmp_path / "repository", "optimum")
    server = start_server(tmp_path / "repository", tmp_path / "server.log", ready_model="optimum")
    try:
        assert served_greedy(server, "optimum", ignore_eos=True) == json.loads(expected)
    finally:
        assert stop_server(server) == 0, server.output()
