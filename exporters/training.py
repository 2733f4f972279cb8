"""Small models trained here, on data every machine has, so the default repository's answers are real:
a GPT on the Python standard library's sources with its own byte-level BPE tokenizer, and a CNN and an
LSTM on scikit-learn's handwritten digits."""

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exporters import console

END_OF_TEXT = "<|endoftext|>"


def python_corpus(max_bytes: int = 3_000_000) -> list[str]:
    """The standard library's own modules, in a fixed order, up to `max_bytes` of text."""
    texts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        texts.append(text)
        total += len(text)
        if total >= max_bytes:
            break
    return texts


def train_tokenizer(texts: list[str], vocab_size: int, path: Path) -> Path:
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=[END_OF_TEXT],
                                  show_progress=False)
    tokenizer.save(str(path))
    return path


@dataclass
class GptRecipe:
    vocab_size: int = 4096
    context: int = 512
    width: int = 192
    layers: int = 4
    heads: int = 4
    steps: int = 600
    batch: int = 16
    window: int = 128
    learning_rate: float = 2e-3
    seed: int = 0


def train_gpt(recipe: GptRecipe, tokenizer_path: Path, corpus: list[str] | None = None):
    """A GPT-2-architecture model trained on next-token prediction; returns (model, tokenizer path)."""
    from tokenizers import Tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(recipe.seed)
    corpus = corpus or python_corpus()
    train_tokenizer(corpus, recipe.vocab_size, tokenizer_path)
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    eos = tokenizer.token_to_id(END_OF_TEXT)
    ids = np.concatenate([np.array(tokenizer.encode(t).ids + [eos]) for t in corpus])
    data = torch.from_numpy(ids.astype(np.int64))
    config = GPT2Config(
        vocab_size=tokenizer.get_vocab_size(), n_positions=recipe.context, n_embd=recipe.width,
        n_layer=recipe.layers, n_head=recipe.heads, bos_token_id=eos, eos_token_id=eos,
    )
    return _fit_language_model(GPT2LMHeadModel(config), data, recipe, "gpt"), tokenizer_path


def _fit_language_model(model, data: torch.Tensor, recipe, name: str):
    """Next-token prediction on random windows of `data` (token ids), with a progress bar."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.learning_rate, total_steps=recipe.steps)
    generator = torch.Generator().manual_seed(recipe.seed)
    model.train()
    progress = console.bar(recipe.steps, f"{name}: training")
    for _ in range(recipe.steps):
        starts = torch.randint(0, len(data) - recipe.window - 1, (recipe.batch,), generator=generator)
        batch = torch.stack([data[s:s + recipe.window + 1] for s in starts])
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        progress.update()
    progress.close()
    return model.eval()


def digits(seed: int = 0):
    """scikit-learn's 8x8 digits in [0, 1], split 80/20: (x_train, y_train, x_test, y_test)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(images))
    cut = int(len(order) * 0.8)
    train, test = order[:cut], order[cut:]
    return images[train], data.target[train], images[test], data.target[test]


def as_pictures(images: np.ndarray, scale: int = 4) -> np.ndarray:
    """8x8 digits as 1-channel 32x32 pictures (nearest-neighbour upscaling)."""
    return np.kron(images, np.ones((scale, scale), np.float32))[:, None]


def fit_classifier(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, name: str,
                   seed: int = 0, learning_rate: float = 3e-3) -> nn.Module:
    torch.manual_seed(seed)
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), 64):
            chosen = order[start:start + 64]
            loss = nn.functional.cross_entropy(model(inputs[chosen]), labels[chosen])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        console.say(f"{name}: epoch {epoch + 1}/{epochs}, loss {loss.item():.3f}")
    return model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(-1).numpy() == y).mean())


def small_resnet(num_labels: int = 10, channels: int = 1):
    from transformers import ResNetConfig, ResNetForImageClassification

    from exporters.cnn import Logits

    config = ResNetConfig(
        num_channels=channels, embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1],
        layer_type="basic", num_labels=num_labels, downsample_in_first_stage=False,
    )
    return Logits(ResNetForImageClassification(config))


def resnet50(num_labels: int = 1000):
    """ResNet-50's configuration (25M parameters, random weights): for speed, not answers."""
    from transformers import ResNetConfig, ResNetForImageClassification

    from exporters.cnn import Logits

    torch.manual_seed(0)
    return Logits(ResNetForImageClassification(ResNetConfig(num_labels=num_labels)).eval())
