"""A GGUF file's tokenizer (`tokenizer.ggml.*`) as the `tokenizer.json` and `tokenizer_config.json` of
Hugging Face, written with the `tokenizers` library (no transformers).

Byte-level BPE vocabularies (`tokenizer.ggml.model` = gpt2: Llama 3, SmolLM, Qwen) are built as
transformers' GGUF conversion builds them: tokens respelled in GPT-2's byte alphabet, the file's merges,
control tokens added whole as special tokens and user-defined ones as plain added tokens, and the text
split as the pre-tokenizer the file names (`tokenizer.ggml.pre`) splits it. One choice differs on
purpose: pre-tokenizers that llama.cpp splits into single digits first (`smollm`, the model's own
tokenizer.json does the same) split digits here too, where transformers' conversion keeps digit runs."""

import json
from functools import cache
from pathlib import Path

CONTROL, USER_DEFINED = 3, 4

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLITS = {**dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx"), LLAMA3_SPLIT),
          **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), QWEN2_SPLIT)}
SINGLE_DIGITS = ("smollm", "codeshell", "exaone", "minerva")


class TokenizerError(ValueError):
    """The file's tokenizer cannot be written; the message says what it has and what is supported."""


def write_tokenizer(metadata: dict, target: Path) -> None:
    """tokenizer.json and tokenizer_config.json (special tokens, whether BOS is added, the chat
    template) into `target`."""
    kind = metadata.get("tokenizer.ggml.model")
    if "tokenizer.ggml.tokens" not in metadata:
        raise TokenizerError("the file has no tokenizer (no tokenizer.ggml.tokens); the server needs the "
                             "model's tokenizer to serve text")
    if kind != "gpt2":
        raise TokenizerError(f"tokenizer.ggml.model '{kind}' is not supported; supported: 'gpt2' (byte-level "
                             f"BPE: Llama 3, SmolLM, Qwen)")
    tokens = metadata["tokenizer.ggml.tokens"]
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False))
    tokenizer = _byte_level(tokens, metadata.get("tokenizer.ggml.merges", []),
                            metadata.get("tokenizer.ggml.token_type") or [],
                            metadata.get("tokenizer.ggml.pre"))
    special = {name: tokens[metadata[f"tokenizer.ggml.{key}"]]
               for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                                 ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id"))
               if metadata.get(f"tokenizer.ggml.{key}") is not None}
    if add_bos and "bos_token" in special:
        from tokenizers import processors

        bos = special["bos_token"]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))])
    tokenizer.save(str(target / "tokenizer.json"))
    config = {**special, "add_bos_token": add_bos, "add_eos_token": False}
    if metadata.get("tokenizer.chat_template"):
        config["chat_template"] = metadata["tokenizer.chat_template"]
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))


def _byte_level(tokens: list[str], merges: list[str], types: list[int], pre: str | None):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode()): index
             for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab, [tuple(m.split(" ", 1)) for m in merges], dropout=None,
                                     continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    if pre in SPLITS:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    elif pre in SINGLE_DIGITS:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    marked = list(zip(tokens, types))
    # a token marked control but spelled outside the byte alphabet is a mislabel (transformers skips it)
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, kind in marked
                                  if kind == CONTROL and set(t) <= alphabet])
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t, kind in marked
                          if kind == USER_DEFINED and t in vocab])
    return tokenizer


@cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's spelling of bytes as printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    spelled, extra = {b: chr(b) for b in printable}, 0
    for byte in range(256):
        if byte not in spelled:
            spelled[byte] = chr(256 + extra)
            extra += 1
    return spelled
