"""Output shapes known before a run: where a graph names each dynamic dimension of an output after a
dimension of an input (ONNX's shared `dim_param` names, as exporters write them), the inputs' shapes
give the output's, so the output can be written straight into memory chosen for it."""

from dataclasses import dataclass

import numpy as np

Dim = int | tuple[str, int]  # a fixed size, or (input, axis) whose size it takes


@dataclass(frozen=True)
class OutputShapes:
    rules: dict[str, tuple[Dim, ...]]  # only the outputs whose every dimension is known

    @classmethod
    def from_graph(cls, inputs: dict[str, list | None], outputs: dict[str, list | None]) -> "OutputShapes":
        """`inputs`, `outputs`: each tensor's dimensions as ONNX Runtime lists them (an int, a dim_param's
        name, or None for an unnamed dynamic one; None for an unknown rank)."""
        named = {}
        for name, dims in inputs.items():
            for axis, dim in enumerate(dims or ()):
                if isinstance(dim, str):
                    named.setdefault(dim, (name, axis))
        rules = {}
        for name, dims in outputs.items():
            rule = [_rule(dim, named) for dim in dims or ()]
            if dims is not None and None not in rule:
                rules[name] = tuple(rule)
        return cls(rules)

    def of(self, name: str, feeds: dict[str, np.ndarray]) -> tuple[int, ...] | None:
        """The shape output `name` will have for `feeds`, or None where the graph does not tell."""
        rule = self.rules.get(name)
        if rule is None:
            return None
        try:
            return tuple(dim if isinstance(dim, int) else feeds[dim[0]].shape[dim[1]] for dim in rule)
        except (KeyError, IndexError):
            return None


def _rule(dim, named: dict[str, tuple[str, int]]) -> Dim | None:
    if isinstance(dim, int):
        return dim if dim >= 0 else None
    return named.get(dim) if isinstance(dim, str) else None
