"""Every exporter family in every variant: parity, configs the server loads, clear failures."""

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.http as httpclient
from torch import nn
from tritonclient.utils import InferenceServerException

from exporters import bert, cnn, gpt, lstm
from exporters.module import ExportError, export_module
from exporters.parity import ParityError
from server.repository.config import read_config
from tests.conftest import ROOT, start_server, stop_server

VARIANTS = ("fp32", "fp16", "int8")


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    return BertModel(config).eval()


def tiny_gpt(vocab: int = 120, positions: int = 64):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=32, n_layer=2, n_head=4,
                        initializer_range=0.3, eos_token_id=None, bos_token_id=None)
    return GPT2LMHeadModel(config).eval()


def tiny_resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                          layer_type="basic", num_labels=5)
    return cnn.Logits(ResNetForImageClassification(config))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    repository = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    reports = {
        "bert": bert.export_encoder(tiny_bert(), repository, "bert", VARIANTS),
        "cnn": cnn.export(tiny_resnet(), repository, "cnn", VARIANTS, shape=(3, 32, 32)),
        "lstm": lstm.export(lstm.SequenceClassifier(6, 16, 4), repository, "lstm", VARIANTS),
        "gpt": gpt.export(tiny_gpt(), repository, "gpt", VARIANTS),
    }
    return repository, reports


def test_every_family_and_variant_is_published_within_tolerance(exported):
    repository, reports = exported
    for family_reports in reports.values():
        assert [r.variant for r in family_reports] == list(VARIANTS)
        for report in family_reports:
            assert (repository / report.name / "config.pbtxt").exists()
            assert report.path == repository / report.name / "1" / "model.onnx"
            assert report.parity.cosine >= (0.98 if report.variant == "int8" else 0.999), report.summary()
    fp32 = {family: r[0].parity for family, r in reports.items()}
    assert all(p.max_abs < 1e-3 for p in fp32.values()), fp32
    assert fp32["cnn"].top1 == 1.0 and fp32["gpt"].top1 == 1.0  # gpt: greedy tokens equal


def test_int8_variants_hold_int8_weights(exported):
    import onnx

    repository, _ = exported
    for name in ("bert_int8", "lstm_int8", "cnn_int8"):
        model = onnx.load(str(repository / name / "1" / "model.onnx"))
        types = {init.data_type for init in model.graph.initializer}
        assert onnx.TensorProto.INT8 in types, name


def test_gpt_greedy_tokens_match_transformers_generate_for_mixed_lengths(tmp_path):
    model = tiny_gpt()
    path = gpt.export_decoder(model, tmp_path / "gpt.onnx")
    prompts = [[5, 17, 3, 99, 42], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [60, 61]]
    batched = gpt.greedy_onnx(path, prompts, 40)  # the cache buffers grow past 32 columns
    assert batched == gpt.greedy_torch(model, prompts, 40)
    assert gpt.greedy_onnx(path, prompts, 40, io_binding=True) == batched
    assert batched == [gpt.greedy_torch(model, [p], 40)[0] for p in prompts]
    assert len({tuple(tokens) for tokens in batched}) > 1


class PastAndNewPresent(gpt.DecoderWithPast):
    """Optimum's layout: `present` is the past followed by the new tokens' keys and values."""

    def forward(self, input_ids, attention_mask, position_ids, logit_positions, *past):
        logits, *new = super().forward(input_ids, attention_mask, position_ids, logit_positions, *past)
        return (logits, *[torch.cat([old, added], dim=2) for old, added in zip(past, new)])


def test_a_graph_whose_present_holds_the_past_too_decodes_the_same_tokens(tmp_path, monkeypatch):
    model = tiny_gpt()
    monkeypatch.setattr(gpt, "DecoderWithPast", PastAndNewPresent)
    path = gpt.export_decoder(model, tmp_path / "gpt.onnx")
    prompts = [[5, 17, 3], [7, 1, 2, 3, 4, 5, 6]]
    expected = gpt.greedy_torch(model, prompts, 40)
    assert gpt.greedy_onnx(path, prompts, 40) == expected
    assert gpt.greedy_onnx(path, prompts, 40, io_binding=True) == expected


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="needs onnxruntime-gpu and a GPU")
def test_on_cuda_the_cache_stays_on_the_gpu_and_the_logits_match_the_cpu(tmp_path):
    from server.generation.decoder import Decoder

    path = str(gpt.export_decoder(tiny_gpt(), tmp_path / "gpt.onnx"))
    cpu = Decoder(ort.InferenceSession(path, providers=["CPUExecutionProvider"]))
    on_gpu = [("CUDAExecutionProvider", {"use_tf32": 0}), "CPUExecutionProvider"]  # fp32 matmuls, as on CPU
    cuda = Decoder(ort.InferenceSession(path, providers=on_gpu))
    assert cuda.kernels is not None and cpu.kernels is None  # io_binding auto: on where the graph is on CUDA
    prompts = [[5, 17, 3], [7, 1, 2, 3, 4, 5, 6]]
    (expected, host_cache), (logits, device_cache) = cpu.prefill(prompts), cuda.prefill(prompts)
    for _ in range(20):
        np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-3)
        tokens = expected.argmax(axis=-1).tolist()
        expected, logits = cpu.decode(tokens, host_cache), cuda.decode(tokens, device_cache)
    assert {value.device_name() for value in device_cache.past} == {"cuda"}


def test_server_answers_each_export_as_in_process_onnx_runtime(exported, tmp_path):
    repository, _ = exported
    server = start_server(repository, tmp_path / "server.log", ready_model="lstm_int8")
    try:
        client = httpclient.InferenceServerClient(server.http_url)
        rng = np.random.default_rng(1)
        feeds = {
            "cnn": {"pixel_values": rng.standard_normal((2, 3, 32, 32)).astype(np.float32)},
            "lstm": {"sequence": rng.standard_normal((3, 9, 6)).astype(np.float32)},
            "bert": bert.token_cases(200, shapes=((2, 11),))[0],
        }
        for family, inputs in feeds.items():
            for variant in VARIANTS:
                name = family if variant == "fp32" else f"{family}_{variant}"
                path = repository / name / "1" / "model.onnx"
                expected = ort.InferenceSession(str(path)).run(None, inputs)
                request = []
                for key, array in inputs.items():
                    tensor = httpclient.InferInput(key, list(array.shape), "FP32" if array.dtype == np.float32
                                                   else "INT64")
                    tensor.set_data_from_numpy(array)
                    request.append(tensor)
                result = client.infer(name, request)
                config = client.get_model_config(name)
                for output, want in zip(config["output"], expected):
                    np.testing.assert_allclose(result.as_numpy(output["name"]), want, rtol=1e-5, atol=1e-5)
        _bert_refuses_what_its_checkpoint_cannot_take(client)
    finally:
        stop_server(server)


def _bert_refuses_what_its_checkpoint_cannot_take(client):
    """tiny_bert: 64 positions, 200 token ids, 2 token types, declared by the exporter in the config."""
    def bert_request(length, token=1, token_type=0):
        inputs = []
        for key, value in (("input_ids", token), ("attention_mask", 1), ("token_type_ids", token_type)):
            tensor = httpclient.InferInput(key, [1, length], "INT64")
            tensor.set_data_from_numpy(np.full((1, length), value, np.int64))
            inputs.append(tensor)
        return inputs

    for inputs, fragment in (
        (bert_request(65), "input 'input_ids' has 65 positions; model 'bert' takes at most 64"),
        (bert_request(5, token=200), "input 'input_ids' holds 200, outside 0..199"),
        (bert_request(5, token_type=2), "input 'token_type_ids' holds 2, outside 0..1"),
        (bert_request(0), "input 'input_ids' of model 'bert' is empty (shape [1, 0])"),
    ):
        with pytest.raises(InferenceServerException) as refused:
            client.infer("bert", inputs)
        assert refused.value.status() == "400" and fragment in refused.value.message(), refused.value
    assert client.infer("bert", bert_request(64)).as_numpy("sentence_embedding").shape == (1, 32)


class PlantedBreak(nn.Module):
    """Adds 1 only in the exported graph, as a wrong export would."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        out = self.linear(x)
        return out + 1 if torch.onnx.is_in_onnx_export() else out


def test_a_planted_parity_break_fails_the_export_and_publishes_nothing(tmp_path):
    with pytest.raises(ParityError, match=r"fp32 export is outside its tolerance.*max abs diff 1"):
        export_module(PlantedBreak(), {"x": torch.randn(2, 4)}, tmp_path, "broken", output_names=["y"])
    assert not (tmp_path / "broken").exists()


class NotTraceable(nn.Module):
    def forward(self, x):
        return torch.linalg.svd(x).S  # no ONNX operator for a singular value decomposition


def test_a_module_that_cannot_be_exported_gets_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="NotTraceable could not be exported to ONNX"):
        export_module(NotTraceable(), {"x": torch.randn(2, 4, 4)}, tmp_path, "nope", output_names=["y"])


def test_unknown_variant_is_refused(tmp_path):
    with pytest.raises(ExportError, match="unknown variants.*choose from fp32, fp16, int8"):
        export_module(nn.Linear(2, 2), {"x": torch.randn(1, 2)}, tmp_path, "m", output_names=["y"],
                      variants=["bf16"])


def test_cli_refuses_an_unsupported_checkpoint_and_exports_an_lstm(tmp_path):
    checkpoint = tmp_path / "gpt2"
    tiny_gpt().save_pretrained(checkpoint)
    wrong = subprocess.run(
        [sys.executable, "-m", "exporters", "bert", "--checkpoint", str(checkpoint),
         "--repository", str(tmp_path / "repo"), "--name", "x"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert wrong.returncode == 1
    assert "is a 'gpt2' model; the bert exporter supports bert" in wrong.stderr
    torch.manual_seed(0)
    torch.save(lstm.SequenceClassifier(5, 8, 3), tmp_path / "lstm.pt")
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from server.cli import main; sys.exit(main())",
         "export", "lstm", "--checkpoint", str(tmp_path / "lstm.pt"),
         "--repository", str(tmp_path / "repo"), "--name", "seq", "--variants", "fp32,int8"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "repo" / "seq_int8" / "1" / "model.onnx").exists()
    assert "seq_int8" in done.stdout


def test_cli_exports_the_streaming_form_of_an_lstm(tmp_path):
    torch.manual_seed(0)
    torch.save(lstm.SequenceClassifier(5, 8, 3, layers=2), tmp_path / "lstm.pt")
    done = subprocess.run(
        [sys.executable, "-m", "exporters", "lstm", "--streaming", "--checkpoint", str(tmp_path / "lstm.pt"),
         "--repository", str(tmp_path / "repo"), "--name", "stream", "--variants", "fp32,int8"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    config = read_config(tmp_path / "repo" / "stream")
    states = config.sequence_batching.state
    assert [(s.input_name, s.output_name, list(s.dims)) for s in states] == [
        ("hidden_in", "hidden_out", [2, 8]), ("cell_in", "cell_out", [2, 8])]
    assert [t.name for t in config.input] == ["sequence"]
    assert [t.name for t in config.output] == ["output"]
    assert config.sequence_batching.HasField("oldest")
    assert (tmp_path / "repo" / "stream_int8" / "config.pbtxt").exists()


def test_the_perplexity_gate_refuses_a_variant_that_loses_the_text_and_says_by_how_much():
    from exporters.parity import ParityReport, check_perplexity, perplexity

    uniform = perplexity(lambda chunk: np.zeros((len(chunk) - 1, 50)), [[1, 2, 3, 4]])
    assert uniform == pytest.approx(50)  # no information: the vocabulary's size
    kept = ParityReport("int4", 0.1, 0.99, None, perplexity=10.4)
    check_perplexity(kept, 10.0)
    assert kept.perplexity_change == pytest.approx(0.04)
    lost = ParityReport("int4", 0.1, 0.99, None, perplexity=10.6)
    with pytest.raises(ParityError, match=r"int4 export's perplexity on real text is 10.600, \+6.0% over"):
        check_perplexity(lost, 10.0)


def test_decoders_with_a_tokenizer_report_perplexity_on_real_text_per_variant(tmp_path):
    from tests.test_llm_export import checkpoint_with_tokenizer

    checkpoint = checkpoint_with_tokenizer(tmp_path / "checkpoint", "llama")
    model, _ = gpt.load(checkpoint)
    reports = gpt.export(model, tmp_path / "repository", "tiny", ("fp32", "int8", "int4"),
                         tokenizer_file=checkpoint / "tokenizer.json")
    changes = {report.variant: report.parity.perplexity_change for report in reports}
    assert changes["fp32"] == 0 and all(abs(changes[v]) < 0.05 for v in ("int8", "int4"))
    assert all(report.parity.perplexity > 1 and "perplexity" in report.summary() for report in reports)
