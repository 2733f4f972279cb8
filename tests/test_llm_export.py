"""Llama-family decoders (and GPT-2) exported from tiny random checkpoints: served greedy tokens equal
`transformers` `generate`, for prompts of different lengths sent at once, in fp32; the int8 variant serves
what it computes in process; the CLI exports a checkpoint directory with its own tokenizer."""

import itertools
import json
import multiprocessing
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from exporters import gpt
from server.text import corpus
from tests.conftest import start_server, stop_server
from tests.models import copy_model

VOCAB = 320
NEW_TOKENS = 32
# (model type, extra config): grouped-query attention where the family has it, rope scaling for llama
FAMILIES = {
    "llama": {"num_key_value_heads": 2, "rope_theta": 500000.0,
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
    "mistral": {"num_key_value_heads": 2, "sliding_window": 96},
    "qwen2": {"num_key_value_heads": 2},
    "qwen3": {"num_key_value_heads": 2},
    "phi3": {"num_key_value_heads": 2},
    "gemma": {"num_key_value_heads": 1},
    "gpt2": {},
}
PROMPTS = [[5, 9, 17], list(range(20, 61)), [7], list(range(100, 112))]


def tiny_decoder(kind: str, positions: int = 128):
    from transformers import AutoConfig, AutoModelForCausalLM

    if kind == "gpt2":
        config = AutoConfig.for_model("gpt2", vocab_size=VOCAB, n_positions=128, n_embd=64, n_layer=2,
                                      n_head=4, initializer_range=0.3, eos_token_id=None, bos_token_id=None)
    else:
        config = AutoConfig.for_model(
            kind, vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, head_dim=16, max_position_embeddings=positions, initializer_range=0.3,
            eos_token_id=None, bos_token_id=None, pad_token_id=None, **FAMILIES[kind],
        )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def export_family(kind: str, repository: Path) -> None:
    gpt.export(tiny_decoder(kind), repository, kind, ("fp32", "fp16", "int8", "int4"), new_tokens=8,
               progress=lambda _: None)  # parity-checked


@pytest.fixture(scope="module")
def decoders(request, tmp_path_factory):
    repository = tmp_path_factory.mktemp("decoders")
    others = [kind for kind in FAMILIES if kind != "llama"]
    # torch.export is single-threaded Python: two processes export the other families while this one
    # exports (or finds) the Llama the other test modules share
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        exports = pool.map(export_family, others, itertools.repeat(repository))
        shared = request.getfixturevalue("tiny_llama")
        list(exports)
    for model in shared.iterdir():
        shutil.copytree(model, repository / model.name)
    models = {kind: tiny_decoder(kind) for kind in FAMILIES}
    server = start_server(repository, tmp_path_factory.mktemp("logs") / "server.log", ready_model="llama")
    yield models, repository, server
    assert stop_server(server) == 0, server.output()


def served_greedy(server, name: str, prompts: list[list[int]]) -> list[list[int]]:
    def one(prompt):
        body = {"input_ids": prompt, "parameters": {"max_tokens": NEW_TOKENS, "temperature": 0}}
        answer = httpx.post(f"http://{server.http_url}/v2/models/{name}/generate", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        return answer.json()["output_ids"]

    with ThreadPoolExecutor(len(prompts)) as pool:  # at once, so the prompts share decode steps
        return list(pool.map(one, prompts))


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_served_greedy_tokens_equal_transformers_generate(decoders, kind):
    models, repository, server = decoders
    model = models[kind]
    expected = [gpt.greedy_torch(model, [prompt], NEW_TOKENS)[0] for prompt in PROMPTS]
    assert served_greedy(server, kind, PROMPTS) == expected
    # one prompt at a time: dynamic int8 quantizes activations with one scale per tensor, so the rows
    # sharing a batch change each other's numbers
    for variant in ("int8", "int4"):
        quantized = repository / f"{kind}_{variant}" / "1" / "model.onnx"
        for prompt in PROMPTS[:2]:
            alone = gpt.greedy_onnx(quantized, [prompt], NEW_TOKENS)
            assert served_greedy(server, f"{kind}_{variant}", [prompt]) == alone


def test_int4_holds_its_matmul_weights_in_four_bits_and_its_embedding_and_head_in_eight(decoders):
    """As llama.cpp's Q4_1 with its embedding at 8 bits: the only float MatMul weights left are the
    blocks' offsets, applied to block sums."""
    import onnx

    _, repository, _ = decoders
    graph = onnx.load(str(repository / "llama_int4" / "1" / "model.onnx")).graph
    weights = {initializer.name for initializer in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    float_weighted = [node for node in graph.node if node.op_type == "MatMul" and node.input[1] in weights]
    offsets = [node for node in float_weighted if node.input[1].endswith(".offsets")]
    assert offsets and len(offsets) == len(float_weighted)
    assert all(producers[node.input[0]].op_type == "ReduceSum" for node in offsets)  # the block sums
    quantized = [node for node in graph.node if node.op_type == "MatMulNBits"]
    bits = [next(a.i for a in node.attribute if a.name == "bits") for node in quantized]
    assert sorted(bits) == [4] * (2 * 7) + [8]  # q, k, v, o, gate, up, down per layer; the lm_head
    head = next(node for node, width in zip(quantized, bits) if width == 8)
    assert producers["logits"].input[0] == head.output[0]  # through an Identity named as before
    gathers = [node.op_type for node in graph.node if "Gather" in node.op_type]
    assert gathers.count("GatherBlockQuantized") == 1


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_prompt_and_generated_logprobs_equal_transformers_log_softmax(decoders, kind):
    """OpenAI's echo with logprobs (how evaluation harnesses score text): every token after the first,
    the prompt's and the generated ones, with its top 5, as transformers computes them."""
    models, _, server = decoders
    prompt = PROMPTS[1]
    body = {"model": kind, "prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 5, "echo": True}
    answer = httpx.post(f"http://{server.http_url}/v1/completions", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    served = answer.json()["choices"][0]["logprobs"]
    full = prompt + gpt.greedy_torch(models[kind], [prompt], 8)[0]
    with torch.no_grad():
        logits = models[kind](torch.tensor([full])).logits[0, :-1]
    expected = torch.log_softmax(logits.double(), dim=-1).numpy()
    assert served["tokens"] == [f"token_id:{t}" for t in full]
    assert served["token_logprobs"][0] is None and served["top_logprobs"][0] is None
    np.testing.assert_allclose(served["token_logprobs"][1:], expected[np.arange(len(full) - 1), full[1:]],
                               atol=1e-3)
    for position, top in enumerate(served["top_logprobs"][1:]):
        best = np.argsort(-expected[position])[:5]
        assert list(top) == [f"token_id:{i}" for i in best]
        np.testing.assert_allclose(list(top.values()), expected[position, best], atol=1e-3)


def test_the_cache_holds_the_key_value_heads_only(decoders):
    import onnx

    _, repository, _ = decoders
    graph = onnx.load(str(repository / "llama" / "1" / "model.onnx")).graph
    past = next(i for i in graph.input if i.name == "past_key_values.0.key")
    dims = [d.dim_value or d.dim_param for d in past.type.tensor_type.shape.dim]
    assert dims[1] == 2 and dims[3] == 16  # 2 key/value heads of 16 for 4 query heads


def test_a_prompt_beyond_the_sliding_window_gets_a_clear_error(decoders):
    _, _, server = decoders
    body = {"input_ids": list(range(1, 100)), "parameters": {"max_tokens": 1}}
    answer = httpx.post(f"http://{server.http_url}/v2/models/mistral/generate", json=body, timeout=60)
    assert answer.status_code == 400
    assert "the prompt has 99 tokens; this model allows at most 95" in answer.json()["error"]


CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")
LLAMA2 = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
          "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant') }}"
          "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}"
          "{% endfor %}")
CHAT = [{"role": "system", "content": "You answer in Python."},
        {"role": "user", "content": "How do I open a file?"},
        {"role": "assistant", "content": "Use open()."},
        {"role": "user", "content": [{"type": "text", "text": "And read "}, {"type": "text", "text": "it?"}]}]


def trained_tokenizer(chat_template: str | None = CHATML, added: tuple[str, ...] = ()):
    """A byte-level BPE trained here on real text, with ChatML's special tokens, as transformers wraps it;
    `added`: tokens of their own that are text, not special (as Qwen's `<tool_call>`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - len(added),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<s>", "<|im_start|>", "<|im_end|>"])
    tokenizer.train_from_iterator(corpus.paragraphs(), trainer)
    tokenizer.add_tokens(list(added))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="<|im_end|>",
                                   chat_template=chat_template)


def checkpoint_with_tokenizer(target: Path, kind: str, chat_template: str | None = CHATML,
                              positions: int = 128, added: tuple[str, ...] = ()) -> Path:
    tiny_decoder(kind, positions).save_pretrained(str(target))
    trained_tokenizer(chat_template, added).save_pretrained(str(target))
    return target


@pytest.fixture(scope="module")
def chat_server(request, tmp_path_factory):
    """A qwen2 checkpoint directory with its own tokenizer and chat template, exported by the CLI."""
    root = tmp_path_factory.mktemp("chat")
    checkpoint = checkpoint_with_tokenizer(root / "checkpoint", "qwen2")
    repository = root / "repository"
    with subprocess.Popen([sys.executable, "-m", "exporters", "llm", "--checkpoint", str(checkpoint),
                           "--repository", str(repository), "--name", "tiny"], stderr=subprocess.PIPE,
                          text=True) as cli:
        shared = request.getfixturevalue("tiny_llama")  # exported meanwhile unless a module did before
        _, errors = cli.communicate(timeout=600)
    assert cli.returncode == 0, errors
    copy_model(shared / "llama", repository, "ids_only")
    server = start_server(repository, root / "server.log", ready_model="tiny")
    yield checkpoint, repository, server
    assert stop_server(server) == 0, server.output()


def test_the_cli_exports_a_checkpoint_directory_that_answers_text_with_its_own_tokenizer(chat_server):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint, repository, server = chat_server
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in (repository / "tiny").iterdir()}
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint)).eval()
    prompt = "Return the path of the file."
    expected = tokenizer.decode(gpt.greedy_torch(model, [tokenizer(prompt)["input_ids"]], 16)[0])
    body = {"text_input": prompt, "parameters": {"max_tokens": 16, "temperature": 0, "ignore_eos": True}}
    answer = httpx.post(f"http://{server.http_url}/v2/models/tiny/generate", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["text_output"] == expected


@pytest.mark.parametrize("template", [CHATML, LLAMA2])
def test_the_chat_prompt_is_rendered_as_transformers_renders_it(tmp_path, template):
    from server.core.types import ChatOptions
    from server.text.chat import ChatTemplate

    tokenizer = trained_tokenizer(template)
    tokenizer.save_pretrained(str(tmp_path))
    chat = ChatTemplate.from_model_dir(tmp_path)
    turns = CHAT[1:] if template == LLAMA2 else CHAT
    flat = [{**m, "content": "And read it?"} if isinstance(m["content"], list) else m for m in turns]
    expected = tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=True)
    assert chat.render(turns) == expected
    opened = [*flat, PREFIX]  # vLLM's continue_final_message: the answer goes on from the prefix
    continued = tokenizer.apply_chat_template(opened, tokenize=False, continue_final_message=True)
    open_ended = ChatOptions(add_generation_prompt=False, continue_final_message=True)
    assert chat.render(opened, open_ended) == continued
    assert continued.endswith(PREFIX["content"])
    if template == LLAMA2:
        with pytest.raises(Exception, match="Conversation roles must alternate"):
            chat.render([CHAT[1], CHAT[1]])


PREFIX = {"role": "assistant", "content": "You call"}


def test_template_variables_and_continuing_the_last_message_are_checked():
    from server.core.errors import InvalidArgument
    from server.core.types import ChatOptions
    from server.text.chat import ChatTemplate

    thinking = ChatTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
                            "{% if add_generation_prompt %}<assistant>{% if enable_thinking is defined and "
                            "not enable_thinking %}<think></think>{% endif %}{% endif %}", {})
    asked = [{"role": "user", "content": "Hi"}]
    assert thinking.render(asked).endswith("<assistant>")
    quiet = ChatOptions(template_kwargs={"enable_thinking": False})
    assert thinking.render(asked, quiet).endswith("<assistant><think></think>")
    assert thinking.render([*asked, PREFIX], ChatOptions(False, True)) == "<user>Hi</user><assistant>You call"
    with pytest.raises(InvalidArgument, match="must be an assistant message"):
        thinking.render(asked, ChatOptions(False, True))


def test_chat_completions_equal_transformers_and_stream_the_same_text(chat_server):
    import openai
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint, _, server = chat_server
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint)).eval()
    flat = [{**m, "content": "And read it?"} if isinstance(m["content"], list) else m for m in CHAT]
    ids = tokenizer.apply_chat_template(flat, tokenize=True, add_generation_prompt=True, return_dict=False)
    expected_ids = gpt.greedy_torch(model, [ids], 24)[0]
    client = openai.OpenAI(base_url=f"http://{server.http_url}/v1", api_key="unused", max_retries=0)
    whole = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=24, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == tokenizer.decode(expected_ids, skip_special_tokens=True)
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(ids), 24)
    assert whole.choices[0].finish_reason == "length"
    stream = client.chat.completions.create(
        model="tiny", messages=CHAT, max_completion_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    opened = [*flat, PREFIX]
    prefix_ids = tokenizer.apply_chat_template(opened, tokenize=True, continue_final_message=True,
                                               return_dict=False)
    continued = client.chat.completions.create(model="tiny", messages=opened, max_tokens=4, temperature=0,
                                               extra_body={"continue_final_message": True,
                                                           "add_generation_prompt": False,
                                                           "chat_template_kwargs": {"unused": 1}})
    assert continued.usage.prompt_tokens == len(prefix_ids)  # the prompt ends in the prefix, no end of turn
    for extra, fragment in (({"continue_final_message": True, "add_generation_prompt": True}, "both be true"),
                            ({"chat_template_kwargs": {"messages": []}}, "cannot set messages"),
                            ({"continue_final_message": True}, "must be an assistant message")):
        with pytest.raises(openai.BadRequestError, match=fragment):
            client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=1, extra_body=extra)
    assert chunks[-1].usage.completion_tokens == 24 and not chunks[-1].choices


def test_vllm_tokenize_and_detokenize_read_prompts_and_chats_as_the_model_does(chat_server):
    from transformers import AutoTokenizer

    from server.repository.config import read_config

    checkpoint, repository, server = chat_server
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    url = f"http://{server.http_url}"
    flat = [{**m, "content": "And read it?"} if isinstance(m["content"], list) else m for m in CHAT]
    chat = httpx.post(f"{url}/tokenize", json={"model": "tiny", "messages": flat}, timeout=60).json()
    ids = tokenizer.apply_chat_template(flat, tokenize=True, add_generation_prompt=True, return_dict=False)
    context = int(read_config(repository / "tiny").parameters["max_sequence_length"].string_value)
    assert chat == {"count": len(ids), "max_model_len": context, "tokens": ids, "token_strs": None}
    opened = [*flat, PREFIX]
    continued = httpx.post(f"{url}/tokenize", json={"model": "tiny", "messages": opened,
                                                    "continue_final_message": True,
                                                    "add_generation_prompt": False}, timeout=60).json()
    assert continued["tokens"] == tokenizer.apply_chat_template(opened, tokenize=True, return_dict=False,
                                                                continue_final_message=True)
    text = "Return the path of the file."
    prompt = httpx.post(f"{url}/tokenize", json={"model": "tiny", "prompt": text}, timeout=60).json()
    assert prompt["tokens"] == tokenizer(text)["input_ids"]
    back = httpx.post(f"{url}/detokenize", json={"model": "tiny", "tokens": ids}, timeout=60)
    assert back.json() == {"prompt": tokenizer.decode(ids)}  # special tokens written out
    for path, body, fragment in (
            ("/detokenize", {"model": "tiny", "tokens": [10 ** 6]}, "outside the vocabulary of"),
            ("/detokenize", {"model": "tiny", "tokens": "abc"}, "'tokens' must be a list of token ids"),
            ("/tokenize", {"model": "tiny", "prompt": text, "echo": True}, "field 'echo' is not supported"),
            ("/tokenize", {"model": "ids_only", "prompt": text}, "has no tokenizer"),
            ("/tokenize", {"model": "tiny", "messages": []}, "'messages' must be a non-empty list")):
        refused = httpx.post(f"{url}{path}", json=body, timeout=60)
        assert refused.status_code == 400 and fragment in refused.text, refused.text


@pytest.mark.parametrize("body, fragment", [
    ({"model": "ids_only", "messages": CHAT}, "this model has no chat template"),
    ({"model": "tiny", "messages": CHAT, "top_logprobs": 2}, "'top_logprobs' needs 'logprobs': true"),
    ({"model": "tiny", "messages": CHAT, "tools": [{"type": "function"}]}, "tools[0] must be"),
    ({"model": "tiny", "messages": CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]},
     "this model's chat template takes no tools"),
    ({"model": "tiny", "messages": CHAT, "presence_penalty": 3}, "'presence_penalty' must be a number >= -2"),
    ({"model": "tiny", "messages": []}, "'messages' must be a non-empty list"),
    ({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role must be one of"),
    ({"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text parts"),
    ({"model": "tiny", "messages": CHAT, "n": 0}, "'n' must be an integer from 1 to 16"),
])
def test_chat_errors_name_what_is_wrong_in_openai_shape(chat_server, body, fragment):
    _, _, server = chat_server
    answer = httpx.post(f"http://{server.http_url}/v1/chat/completions", json=body, timeout=60)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"


def test_the_cli_refuses_a_checkpoint_without_tokenizer_or_of_another_type(tmp_path):
    from transformers import BertConfig, BertModel

    bare = tmp_path / "bare"
    tiny_decoder("llama").save_pretrained(str(bare))
    encoder = tmp_path / "encoder"
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(str(encoder))
    wrong_type = "is a 'bert' model; the gpt exporter supports gpt2, llama, mistral"
    for checkpoint, fragment in ((bare, "has no tokenizer the exporter can read"), (encoder, wrong_type)):
        done = subprocess.run([sys.executable, "-m", "exporters", "gpt", "--checkpoint", str(checkpoint),
                               "--repository", str(tmp_path / "repository"), "--name", "x"],
                              capture_output=True, text=True)
        assert done.returncode != 0 and fragment in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "repository" / "x").exists()


def test_completions_take_token_id_prompts_and_v1_answers_in_openai_shape(chat_server):
    from transformers import AutoTokenizer

    checkpoint, _, server = chat_server
    base = f"http://{server.http_url}/v1"
    ids = AutoTokenizer.from_pretrained(str(checkpoint))("Open the file")["input_ids"]
    body = {"model": "tiny", "max_tokens": 8, "temperature": 0}
    by_text = httpx.post(f"{base}/completions", json={**body, "prompt": "Open the file"}).json()
    by_ids = httpx.post(f"{base}/completions", json={**body, "prompt": [ids, ids]}).json()
    assert [c["text"] for c in by_ids["choices"]] == [by_text["choices"][0]["text"]] * 2
    assert by_ids["usage"]["prompt_tokens"] == 2 * len(ids)
    assert httpx.get(f"{base}/models/tiny").json()["id"] == "tiny"
    for path in ("/models/absent", "/nothing"):
        answer = httpx.get(base + path)
        assert answer.status_code == 404 and answer.json()["error"]["type"] == "invalid_request_error"
    wrong = httpx.post(f"{base}/completions", json={**body, "prompt": [1.5]})
    assert wrong.status_code == 400 and "'prompt' must be a string" in wrong.json()["error"]["message"]


def test_logprobs_equal_transformers_log_softmax(chat_server):
    import openai
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint, _, server = chat_server
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint)).eval()
    client = openai.OpenAI(base_url=f"http://{server.http_url}/v1", api_key="unused", max_retries=0)
    chat = client.chat.completions.create(model="tiny", messages=CHAT[:2], max_tokens=12, temperature=0,
                                          logprobs=True, top_logprobs=5, extra_body={"ignore_eos": True})
    ids = tokenizer.apply_chat_template(CHAT[:2], tokenize=True, add_generation_prompt=True,
                                        return_dict=False)
    generated = gpt.greedy_torch(model, [ids], 12)[0]
    with torch.no_grad():
        logits = model(torch.tensor([ids + generated])).logits[0, len(ids) - 1:-1]
    expected = torch.log_softmax(logits.double(), dim=-1).numpy()
    served = chat.choices[0].logprobs.content
    assert len(served) == 12
    for position, (entry, token) in enumerate(zip(served, generated)):
        assert entry.token == tokenizer.decode([token], skip_special_tokens=False)
        assert abs(entry.logprob - expected[position, token]) < 1e-3
        top = np.argsort(-expected[position])[:5]
        assert [t.token for t in entry.top_logprobs] == [tokenizer.decode([i], skip_special_tokens=False)
                                                         for i in top]
        top_served = [t.logprob for t in entry.top_logprobs]
        np.testing.assert_allclose(top_served, expected[position, top], atol=1e-3)
    completion = httpx.post(f"http://{server.http_url}/v1/completions", json={
        "model": "tiny", "prompt": [ids], "max_tokens": 4, "temperature": 0, "logprobs": 2}).json()
    legacy = completion["choices"][0]["logprobs"]
    assert len(legacy["tokens"]) == 4 and all(len(top) <= 2 for top in legacy["top_logprobs"])
    chosen = [expected[i, t] for i, t in enumerate(generated[:4])]
    np.testing.assert_allclose(legacy["token_logprobs"], chosen, atol=1e-3)
    assert legacy["text_offset"][0] == 0


def test_logit_bias_and_penalties_reach_the_sampler(chat_server):
    _, _, server = chat_server
    base = {"model": "tiny", "messages": CHAT[:2], "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    forced = httpx.post(f"http://{server.http_url}/v1/chat/completions",
                        json={**base, "logit_bias": {"42": 100}, "logprobs": True}).json()
    tokens = [t["token"] for t in forced["choices"][0]["logprobs"]["content"]]
    assert len(tokens) == 6 and len(set(tokens)) == 1
    outside = httpx.post(f"http://{server.http_url}/v1/chat/completions",
                         json={**base, "logit_bias": {"999": 1}})
    assert outside.status_code == 400 and "logit_bias names token 999" in outside.json()["error"]["message"]
    two = {**base, "logit_bias": {"42": 100, "43": 100}, "logprobs": True}  # the rest never wins

    def chosen(body):
        answer = httpx.post(f"http://{server.http_url}/v1/chat/completions", json=body).json()
        return [t["token"] for t in answer["choices"][0]["logprobs"]["content"]]

    plain, penalized = chosen(two), chosen({**two, "frequency_penalty": 2.0})
    assert len(set(plain + penalized)) == 2  # the bias holds: only the two ever win

    def most(tokens):
        return max(tokens.count(t) for t in set(tokens))

    assert most(penalized) < most(plain)  # repeats cost a token its lead (the exact sums: units)



def test_n_choices_are_sequences_of_their_own_with_the_next_seeds(chat_server):
    _, _, server = chat_server
    base = {"model": "tiny", "messages": CHAT[:2], "max_tokens": 8, "temperature": 1.0, "ignore_eos": True}

    def chat(**extra):
        url = f"http://{server.http_url}/v1/chat/completions"
        answer = httpx.post(url, json={**base, **extra}, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()

    three = chat(n=3, seed=7)
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in three["choices"]]
    assert texts == [chat(seed=7 + i)["choices"][0]["message"]["content"] for i in range(3)]
    assert len(set(texts)) > 1
    single = chat(seed=7)["usage"]
    assert three["usage"]["prompt_tokens"] == single["prompt_tokens"]  # the prompt counts once
    assert three["usage"]["completion_tokens"] == 3 * 8
    streamed = httpx.post(f"http://{server.http_url}/v1/chat/completions",
                          json={**base, "n": 3, "seed": 7, "stream": True}, timeout=60).text
    chunks = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
    for index, text in enumerate(texts):
        pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks
                  if c["choices"][0]["index"] == index]
        assert "".join(pieces) == text
    completions = httpx.post(f"http://{server.http_url}/v1/completions", json={
        "model": "tiny", "prompt": ["a", "b c"], "n": 2, "max_tokens": 4, "temperature": 0}).json()
    assert [c["index"] for c in completions["choices"]] == [0, 1, 2, 3]
    assert completions["choices"][0]["text"] == completions["choices"][1]["text"]  # greedy: the same


def test_echo_puts_the_prompt_before_each_choice_and_scores_it_with_no_new_tokens(chat_server):
    _, _, server = chat_server
    url = f"http://{server.http_url}/v1/completions"
    base = {"model": "tiny", "prompt": "Open the file", "temperature": 0}
    plain = httpx.post(url, json={**base, "max_tokens": 6}).json()["choices"][0]
    echoed = httpx.post(url, json={**base, "max_tokens": 6, "echo": True, "logprobs": 1}).json()
    choice = echoed["choices"][0]
    assert choice["text"] == "Open the file" + plain["text"]
    scored = httpx.post(url, json={**base, "max_tokens": 0, "echo": True, "logprobs": 1}).json()
    prompt_part = scored["choices"][0]["logprobs"]
    assert scored["choices"][0]["text"] == "Open the file"
    assert scored["usage"]["completion_tokens"] == 0
    assert choice["logprobs"]["token_logprobs"][:len(prompt_part["tokens"])] == prompt_part["token_logprobs"]
    assert len(choice["logprobs"]["tokens"]) == len(prompt_part["tokens"]) + 6
    streamed = httpx.post(url, json={**base, "max_tokens": 6, "echo": True, "stream": True}).text
    chunks = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
    assert chunks[0]["choices"][0]["text"] == "Open the file"
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]


def test_best_of_returns_the_choice_with_the_highest_mean_logprob(chat_server):
    _, _, server = chat_server
    url = f"http://{server.http_url}/v1/completions"
    base = {"model": "tiny", "prompt": "def", "max_tokens": 6, "temperature": 1.0, "ignore_eos": True}
    candidates = [httpx.post(url, json={**base, "seed": 3 + i, "logprobs": 0}).json()["choices"][0]
                  for i in range(4)]
    means = [np.mean(c["logprobs"]["token_logprobs"]) for c in candidates]
    assert len(set(means)) > 1
    answer = httpx.post(url, json={**base, "seed": 3, "best_of": 4, "n": 2}).json()
    ranked = [candidates[i]["text"] for i in np.argsort(means)[::-1][:2]]
    assert [c["text"] for c in answer["choices"]] == ranked
    assert all(c["logprobs"] is None for c in answer["choices"])  # ranked on them, not asked for
    assert answer["usage"]["completion_tokens"] == 4 * 6  # every candidate was generated
    for body, fragment in (({"best_of": 1, "n": 2}, "'best_of' must be an integer from n (2) to 16"),
                           ({"best_of": 2, "stream": True}, "cannot be streamed"),
                           ({"echo": "yes"}, "'echo' must be true or false"),
                           ({"max_tokens": 0}, "parameter 'max_tokens' must be an integer >= 1")):
        wrong = httpx.post(url, json={**base, **body})
        assert wrong.status_code == 400 and fragment in wrong.json()["error"]["message"], wrong.text
