"""Llama-family decoders (llama, mistral, qwen2, qwen3, phi3, gemma) in the KV-cache graph contract of
`exporters/gpt.py`: the same inputs and outputs, with the cache holding the key/value heads only.

The checkpoint's own modules do the work where they can (embeddings, Gemma's scaled ones included;
RMSNorms; gated MLPs; the rotary embedding with its `rope_theta` and `rope_scaling`); attention is written
here, over the past and the new tokens apart, with the query heads of a group laid side by side so that
grouped-query attention reads each cached key/value head once, never repeated."""

import importlib

import torch
from torch import nn

from exporters.attention import attention_bias

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma")


class RotaryDecoderWithPast(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.core = model.model
        self.rotate = importlib.import_module(type(model).__module__).apply_rotary_pos_emb

    def forward(self, input_ids, attention_mask, position_ids, logit_positions, *past):
        hidden = self.core.embed_tokens(input_ids)
        cos, sin = self.core.rotary_emb(hidden, position_ids)
        bias = attention_bias(attention_mask, input_ids.shape[1])
        present = []
        for index, layer in enumerate(self.core.layers):
            layer_past = past[2 * index:2 * index + 2]
            attended, key, value = self._attention(
                layer.self_attn, layer.input_layernorm(hidden), cos, sin, bias, *layer_past
            )
            hidden = hidden + attended
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
            present += [key, value]
        kept = self.core.norm(hidden.index_select(1, logit_positions))
        return (self.model.lm_head(kept), *present)

    def _attention(self, attn: nn.Module, hidden, cos, sin, bias, past_key, past_value):
        rows, new = hidden.shape[:2]
        heads, kv_heads, size = cache_shape(self.model.config)
        query, key, value = _projections(attn, hidden, heads * size, kv_heads * size)
        query = query.view(rows, new, heads, size)
        key = key.view(rows, new, kv_heads, size)
        if hasattr(attn, "q_norm"):  # qwen3: RMSNorm over each head
            query, key = attn.q_norm(query), attn.k_norm(key)
        query, key = self.rotate(query.transpose(1, 2), key.transpose(1, 2), cos, sin)
        value = value.view(rows, new, kv_heads, size).transpose(1, 2)
        groups = heads // kv_heads
        # [rows, heads, new, d] -> [rows, kv_heads, groups * new, d]: a group's queries share its key head
        grouped = query.reshape(rows, kv_heads, groups * new, size)
        scores = torch.cat([grouped @ past_key.transpose(-1, -2), grouped @ key.transpose(-1, -2)], dim=-1)
        scores = scores.view(rows, heads, new, -1) * attn.scaling + bias
        weights = torch.softmax(scores, dim=-1).view(rows, kv_heads, groups * new, -1)
        past = past_key.shape[2]
        out = weights[..., :past] @ past_value + weights[..., past:] @ value
        out = out.view(rows, heads, new, size).transpose(1, 2).reshape(rows, new, heads * size)
        return attn.o_proj(out), key, value


def _projections(attn: nn.Module, hidden, query_size: int, kv_size: int):
    if hasattr(attn, "qkv_proj"):  # phi3: one fused projection
        return attn.qkv_proj(hidden).split([query_size, kv_size, kv_size], dim=-1)
    return attn.q_proj(hidden), attn.k_proj(hidden), attn.v_proj(hidden)


def cache_shape(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size) of a decoder config, GPT-2's included."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    size = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv_heads, size


def context_length(config) -> int:
    """The longest sequence served: the position embeddings, or a sliding window where the checkpoint
    uses one (this graph attends to the whole past, so it serves only what fits in the window)."""
    window = getattr(config, "sliding_window", None)
    if config.model_type in ("qwen2", "qwen3") and not getattr(config, "use_sliding_window", False):
        window = None
    return min(config.max_position_embeddings, window or config.max_position_embeddings)
