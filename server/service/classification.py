"""Triton's classification extension: an output's top entries as b"value:index[:label]"."""

import numpy as np

from server.core.errors import InvalidArgument

MAX_CLASSIFIED = 1 << 20  # elements per row: sorting more per request would stall the server


def classify(array: np.ndarray, count: int, labels: list[str], batched: bool) -> np.ndarray:
    """The top `count` entries of each row, as Triton writes them."""
    rows = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
    if rows.shape[1] > MAX_CLASSIFIED:
        raise InvalidArgument(
            f"classification output tensor too large: {rows.shape[1]} elements per item, "
            f"ortserve classifies at most {MAX_CLASSIFIED}"
        )
    count = min(count, rows.shape[1])
    top = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :count]
    result = np.empty(top.shape, dtype=object)
    for row, indices in enumerate(top):
        for column, index in enumerate(indices):
            label = f":{labels[index]}" if index < len(labels) else ""
            result[row, column] = f"{float(rows[row, index]):f}:{index}{label}".encode()
    return result if batched else result[0]
