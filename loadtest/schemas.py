"""JSON schemas of every shape a structured-output request sends, generated from a seed."""

import random


def varied_schemas(count: int, seed: int = 0) -> list[dict]:
    """Nested objects, arrays, enums, booleans, bounded integers and strings, required fields: every leaf
    bounded, so that a valid document is always finite."""
    rng = random.Random(seed)

    def leaf():
        kind = rng.choice(["integer", "string", "enum", "boolean", "const"])
        if kind == "integer":
            low = rng.randint(-50, 50)
            return {"type": "integer", "minimum": low, "maximum": low + rng.randint(0, 500)}
        if kind == "string":
            return {"type": "string", "maxLength": rng.randint(1, 8)}
        if kind == "enum":
            return {"enum": rng.sample(["red", "green", "blue", "cyan", 3, True, None], rng.randint(1, 4))}
        if kind == "const":
            return {"const": rng.choice(["v1", 7, False])}
        return {"type": "boolean"}

    def value(depth):
        roll = rng.random()
        if depth < 3 and roll < 0.25:
            return node(depth + 1)
        if depth < 3 and roll < 0.4:
            return {"type": "array", "items": value(depth + 1), "minItems": rng.randint(0, 1),
                    "maxItems": rng.randint(1, 3)}
        return leaf()

    def node(depth):
        fields = ["id", "name", "size", "kind", "tags", "owner", "meta", "ok", "mode"]
        names = rng.sample(fields, rng.randint(1, 4))
        properties = {name: value(depth) for name in names}
        required = [name for name in names if rng.random() < 0.7]
        return {"type": "object", "properties": properties, "required": required,
                "additionalProperties": False}

    return [node(0) for _ in range(count)]
