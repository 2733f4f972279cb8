"""The attention mask of a decoder with a KV cache, shared by the GPT-2 and Llama-family exports."""

import torch


def attention_bias(attention_mask, new: int):
    """[rows, 1, new, past + new]: 0 where a new token may attend, the float minimum elsewhere."""
    total = attention_mask.shape[1]
    keys = torch.arange(total, device=attention_mask.device)
    queries = torch.arange(new, device=attention_mask.device) + (total - new)
    allowed = (keys[None, :] <= queries[:, None])[None, None] & attention_mask[:, None, None, :].bool()
    # a padding row attends to itself, so no row is all masked (softmax would give NaN)
    allowed = allowed | (keys[None, :] == queries[:, None])[None, None]
    return torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
