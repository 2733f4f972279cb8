"""Decoders (GPT-2, and the Llama family through `exporters/llama.py`) to one ONNX graph with KV cache,
checked by greedy decoding.

The graph takes `input_ids`, `attention_mask` (past and new tokens), `position_ids`, `logit_positions`
(which new tokens' logits to return: the last one to generate, all of them to score a prompt) and
`past_key_values.{i}.key|value` and returns `logits` and `present.{i}.key|value`, the new tokens' keys
and values; a zero-length past is the prefill. Its config.pbtxt describes the generation interface the
server offers for it (text in, text out, decoupled), not the graph's tensors.
"""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from google.protobuf import text_format
from torch import nn

from exporters import llama, parity
from exporters.attention import attention_bias
from exporters.module import (
    VARIANTS,
    ExportError,
    ExportReport,
    build_variant,
    check_model_type,
    check_variants,
    step,
    variant_name,
)
from exporters.publish import model_path, set_parameters
from server.generation.decoder import Decoder
from server.generation.interface import GENERATION_INTERFACE, generation_parameters
from server.protocol import ModelConfig
from server.text import corpus

SUPPORTED = ("gpt2", *llama.FAMILIES)
DECODER_VARIANTS = (*VARIANTS, "int4")  # int4: weight-only MatMulNBits, the largest lever on CPUs
CHAT_FILES = ("tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
GENERATION_CONFIG = 'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n' + GENERATION_INTERFACE


class DecoderWithPast(nn.Module):
    """Flat past tensors in; the next token's logits and the new tokens' keys and values out, around a
    GPT-2 model.

    Attention is written here, over the past and the new tokens apart, so the graph never copies the
    whole cache into a new tensor each step; the server keeps the cache in its own buffers.
    The 4-D mask is built with tensor operations, so the traced graph stays right for every past length
    and padding."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, logit_positions, *past):
        gpt = self.model.transformer
        hidden = gpt.wte(input_ids) + gpt.wpe(position_ids)
        bias = attention_bias(attention_mask, input_ids.shape[1])
        present = []
        for layer, block in enumerate(gpt.h):
            layer_past = past[2 * layer:2 * layer + 2]
            attended, key, value = _attention(block.attn, block.ln_1(hidden), bias, *layer_past)
            hidden = hidden + attended
            hidden = hidden + block.mlp(block.ln_2(hidden))
            present += [key, value]
        kept = gpt.ln_f(hidden.index_select(1, logit_positions))
        return (self.model.lm_head(kept), *present)


def _attention(attn: nn.Module, hidden, bias, past_key, past_value):
    """GPT-2 self-attention of the new tokens over the past and themselves: the output after c_proj and
    the new tokens' keys and values."""
    rows, new = hidden.shape[:2]
    query, key, value = (
        t.view(rows, new, attn.num_heads, attn.head_dim).transpose(1, 2)
        for t in attn.c_attn(hidden).split(attn.split_size, dim=2)
    )
    scores = torch.cat([query @ past_key.transpose(-1, -2), query @ key.transpose(-1, -2)], dim=-1)
    weights = torch.softmax(scores * attn.scaling + bias, dim=-1)
    past = past_key.shape[2]
    out = weights[..., :past] @ past_value + weights[..., past:] @ value
    return attn.c_proj(out.transpose(1, 2).reshape(rows, new, -1)), key, value


def io_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    return past, [name.replace("past_key_values", "present") for name in past]


def load(checkpoint: str | Path):
    """The causal LM and its tokenizer; ExportError when the checkpoint has no tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_type(checkpoint, "gpt", SUPPORTED)
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint)).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    except (OSError, ValueError, TypeError) as error:
        raise ExportError(
            f"checkpoint '{checkpoint}' has no tokenizer the exporter can read ({error}); a decoder is "
            "served with its checkpoint's tokenizer.json"
        ) from None
    return model, tokenizer


def export_decoder(model: nn.Module, path: Path, opset: int = 18) -> Path:
    """torch.export (dynamo): a smaller graph than the TorchScript trace, and a decode step of one row
    is mostly per-op cost."""
    config = model.config
    _, kv_heads, head_dim = llama.cache_shape(config)
    past_names, present_names = io_names(config.num_hidden_layers)
    batch, past_len, new = 2, 3, 4
    mask = torch.ones(batch, past_len + new, dtype=torch.long)
    mask[0, :2] = 0  # trace with padding, so no all-ones shortcut is baked in
    example = (
        torch.ones(batch, new, dtype=torch.long),
        mask,
        torch.arange(past_len, past_len + new).repeat(batch, 1),
        torch.tensor([1, new - 1]),
        *[torch.zeros(batch, kv_heads, past_len, head_dim) for _ in past_names],
    )
    rows, sequence, past, kept = (torch.export.Dim(n) for n in ("batch", "sequence", "past_sequence", "kept"))
    total = torch.export.Dim.AUTO  # past_sequence + sequence
    shapes = ({0: rows, 1: sequence}, {0: rows, 1: total}, {0: rows, 1: sequence}, {0: kept},
              tuple({0: rows, 2: past} for _ in past_names))
    wrapped = DecoderWithPast if config.model_type == "gpt2" else llama.RotaryDecoderWithPast
    wrapper = wrapped(model).eval()
    try:
        with torch.no_grad():
            torch.onnx.export(
                wrapper, example, str(path),
                input_names=["input_ids", "attention_mask", "position_ids", "logit_positions", *past_names],
                output_names=["logits", *present_names], dynamic_shapes=shapes,
                opset_version=opset, dynamo=True, external_data=False, verbose=False,
            )
    except Exception as error:
        raise ExportError(f"{type(model).__name__} could not be exported to ONNX: {error}") from error
    finally:
        wrapper.eval()  # export restores the wrapper's mode; keep the model in eval for parity runs
    return path


def greedy_onnx(path: Path, prompts: list[list[int]], new_tokens: int, io_binding: bool = False):
    """Greedy continuation of every prompt, batched with left padding, as the server decodes (with the
    cache in ONNX Runtime's buffers through IO binding, or in the server's own)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    decoder = Decoder(session, io_binding)
    logits, cache = decoder.prefill(prompts)
    generated = [[] for _ in prompts]
    for _ in range(new_tokens):
        tokens = logits.argmax(axis=-1).tolist()
        for row, token in enumerate(tokens):
            generated[row].append(token)
        logits = decoder.decode(tokens, cache)
    return generated


def left_padded(prompts: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of the prompts, padded on the left to the longest."""
    length = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (length - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def greedy_torch(model: nn.Module, prompts: list[list[int]], new_tokens: int, pad_id: int = 0):
    """transformers' `generate(do_sample=False)` on the batch, left padded."""
    ids, mask = left_padded(prompts, pad_id)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, pad_token_id=pad_id, eos_token_id=None,
        )
    return out[:, ids.shape[1]:].tolist()


def prefill_logits(path: Path, prompts: list[list[int]]) -> np.ndarray:
    decoder = Decoder(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    return decoder.prefill(prompts)[0]


def generation_config(model: nn.Module, tokenizer_file: str | None, max_running: int = 16) -> ModelConfig:
    config = text_format.Parse(GENERATION_CONFIG, ModelConfig())
    generation = getattr(model, "generation_config", None)  # generation_config.json: Llama 3 has several
    eos = getattr(generation, "eos_token_id", None)
    eos = model.config.eos_token_id if eos is None else eos
    eos = eos if isinstance(eos, list) else [] if eos is None else [eos]
    parameters = generation_parameters(llama.context_length(model.config), eos, tokenizer_file,
                                       max_running=max_running)
    return set_parameters(config, **parameters)


def default_prompts(vocab_size: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab_size, size=n).tolist() for n in (5, 1, 11, 8)]


def export(
    model: nn.Module,
    repository: Path,
    name: str,
    variants=("fp32",),
    tokenizer_file: Path | None = None,
    prompts: list[list[int]] | None = None,
    new_tokens: int = 12,
    progress=None,
) -> list[ExportReport]:
    """Exports the causal LM; fp32 must reproduce transformers' greedy tokens exactly for a batch of
    prompts of different lengths, fp16, int8 and int4 must keep the prefill logits' cosine tolerance
    and, with a tokenizer, their perplexity on real text within `parity.PERPLEXITY_LIMITS` of fp32's."""
    chosen = check_variants(variants, DECODER_VARIANTS)
    model = model.eval()
    prompts = prompts or default_prompts(model.config.vocab_size)
    expected_tokens = greedy_torch(model, prompts, new_tokens)
    text = text_chunks(tokenizer_file, llama.context_length(model.config)) if tokenizer_file else None
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        with step(f"{name}: exporting fp32 decoder with KV cache", progress):
            fp32 = export_decoder(model, work / "fp32.onnx")
        expected_logits = [[_torch_prefill(model, prompts)]]
        built, reference = [], None
        for variant in chosen:
            with step(f"{name}: building and checking {variant}", progress):
                path = build_variant(fp32, variant, work, "blocks", None)
                tokens = greedy_onnx(path, prompts, new_tokens)
                report = parity.compare(variant, expected_logits, [[prefill_logits(path, prompts)]])
                report.top1 = _token_agreement(expected_tokens, tokens)
                if variant == "fp32" and tokens != expected_tokens:
                    raise parity.ParityError(
                        f"fp32 export's greedy tokens differ from transformers' generate: "
                        f"{tokens} != {expected_tokens}"
                    )
                parity.check(report, expected_logits, parity.Tolerance(
                    max_abs=parity.TOLERANCES[variant].max_abs,
                    min_cosine=parity.TOLERANCES[variant].min_cosine,
                ))
                if text:
                    reference = reference or parity.perplexity(scorer(fp32), text)
                    own = reference if variant == "fp32" else parity.perplexity(scorer(path), text)
                    report.perplexity = own
                    parity.check_perplexity(report, reference)
            built.append((variant, path, report))
        return [_publish(path, repository, variant_name(name, variant), variant, report, model,
                         tokenizer_file) for variant, path, report in built]


def text_chunks(tokenizer_file: Path, context: int, chunks: int = 4, length: int = 256) -> list[list[int]]:
    """Real English text (the standard library's docstrings) in the checkpoint's tokens: `chunks` runs
    of `length` tokens (at most the context)."""
    from tokenizers import Tokenizer

    text = "\n\n".join(corpus.paragraphs())
    ids = Tokenizer.from_file(str(tokenizer_file)).encode(text, add_special_tokens=False).ids
    length = min(length, context)
    return [ids[i * length:(i + 1) * length] for i in range(chunks)]


def scorer(path: Path):
    """`score(chunk)` of the exported graph: the logits that predicted each token after the first."""
    decoder = Decoder(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    return decoder.score


def _publish(path, repository, name, variant, report, model, tokenizer_file) -> ExportReport:
    target = model_path(repository, name)
    shutil.copyfile(path, target)
    config = generation_config(model, tokenizer_file and Path(tokenizer_file).name)
    config.name = name
    (target.parent.parent / "config.pbtxt").write_text(text_format.MessageToString(config))
    if tokenizer_file:
        for file in (Path(tokenizer_file), *_chat_files(Path(tokenizer_file).parent)):
            shutil.copyfile(file, target.parent.parent / file.name)
    return ExportReport(name, variant, target, target.stat().st_size, report)


def _chat_files(directory: Path) -> list[Path]:
    """The tokenizer's settings beside its tokenizer.json: special tokens and the chat template."""
    return [directory / name for name in CHAT_FILES if (directory / name).exists()]


def _torch_prefill(model: nn.Module, prompts: list[list[int]]) -> np.ndarray:
    ids, mask = left_padded(prompts)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    return logits[:, -1, :].numpy()


def _token_agreement(expected: list[list[int]], actual: list[list[int]]) -> float:
    pairs = [(a, b) for want, got in zip(expected, actual) for a, b in zip(want, got)]
    return sum(a == b for a, b in pairs) / max(len(pairs), 1)
