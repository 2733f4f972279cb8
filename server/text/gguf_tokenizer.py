"""A GGUF file's tokenizer (`tokenizer.ggml.*`) as the `tokenizer.json` and `tokenizer_config.json` of
Hugging Face, written with the `tokenizers` library (no transformers).

Byte-level BPE vocabularies (`tokenizer.ggml.model` = gpt2: Llama 3, SmolLM, Qwen) are built as
transformers' GGUF conversion builds them: tokens respelled in GPT-2's byte alphabet, the file's merges,
control tokens added whole as special tokens and user-defined ones as plain added tokens, and the text
split as the pre-tokenizer the file names (`tokenizer.ggml.pre`) splits it. One choice differs on
purpose: pre-tokenizers that llama.cpp splits into single digits first (`smollm`, the model's own
tokenizer.json does the same) split digits here too, where transformers' conversion keeps digit runs.

Gemma's SentencePiece vocabularies (`tokenizer.ggml.model` = llama in a gemma3 file) are built as
transformers' GemmaTokenizer from the file: BPE with byte fallback, spaces as "▁", merges recovered from
the vocabulary in the order the file lists its tokens."""

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
    architecture = metadata.get("general.architecture")
    if "tokenizer.ggml.tokens" not in metadata:
        raise TokenizerError("the file has no tokenizer (no tokenizer.ggml.tokens); the server needs the "
                             "model's tokenizer to serve text")
    tokens = metadata["tokenizer.ggml.tokens"]
    types = metadata.get("tokenizer.ggml.token_type") or []
    if kind == "gpt2":
        tokenizer = _byte_level(tokens, metadata.get("tokenizer.ggml.merges", []), types,
                                metadata.get("tokenizer.ggml.pre"))
    elif kind == "llama" and architecture == "gemma3":
        unknown = metadata.get("tokenizer.ggml.unknown_token_id")
        tokenizer = _gemma(tokens, types, None if unknown is None else tokens[unknown])
    else:
        raise TokenizerError(f"tokenizer.ggml.model '{kind}' of a {architecture} file is not supported; "
                             "supported: 'gpt2' (byte-level BPE: Llama 3, SmolLM, Qwen) and Gemma 3's "
                             "'llama' (SentencePiece)")
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False))
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
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

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
    # a token marked control but spelled outside the byte alphabet is a mislabel (transformers skips it)
    return _added(tokenizer, tokens, types, vocab, lambda token: set(token) <= alphabet)


def _gemma(tokens: list[str], types: list[int], unknown: str | None):
    """Gemma's SentencePiece vocabulary as transformers' GemmaTokenizer builds it from a GGUF file: runs
    of spaces respelled with "▁", merges of every token split in two known halves, ranked by the order
    of the tokens in the file (a token's own splits: the longer left half first)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tokens = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {token: index for index, token in enumerate(tokens)}
    merges = [(token[:i], token[i:]) for token in tokens for i in range(len(token) - 1, 0, -1)
              if token[:i] in vocab and token[i:] in vocab]
    tokenizer = Tokenizer(models.BPE(vocab, merges, fuse_unk=True, unk_token=unknown, dropout=None,
                                     byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                           decoders.Fuse()])
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    return _added(tokenizer, tokens, types, vocab, lambda token: True)


def _added(tokenizer, tokens: list[str], types: list[int], vocab: dict, spelled):
    """Control tokens added whole as special tokens, user-defined ones as plain added tokens."""
    from tokenizers import AddedToken

    marked = list(zip(tokens, types))
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, kind in marked
                                  if kind == CONTROL and spelled(t)])
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
