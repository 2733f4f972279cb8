"""What every decoder graph layout shares: the names of its past inputs, its float types, and the error
of a graph the server cannot run as a decoder."""

import re

import numpy as np

from server.core.errors import ServerError

PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)$")
ORT_FLOAT = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class DecoderGraphError(ServerError):
    pass


def layer_order(name: str) -> tuple[int, int]:
    """A past input's place: by layer, the key before the value."""
    layer, kind = PAST.match(name).groups()
    return int(layer), kind == "value"


def past_names(inputs) -> list[str]:
    """The graph's past inputs, in layer order."""
    return sorted((name for name in inputs if PAST.match(name)), key=layer_order)


def is_gqa_graph(session) -> bool:
    """A decoder without position ids whose attention is GroupQueryAttention (onnxruntime-genai's)."""
    names = {node.name for node in session.get_inputs()}
    return "position_ids" not in names and "attention_mask" in names and any(PAST.match(n) for n in names)
