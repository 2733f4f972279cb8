"""The two checks every front end makes of a request's fields: a boolean, and an integer in a range.

`what` names the field as the error should show it ("'stream'", "request parameter 'priority'")."""

from typing import Any

from server.core.errors import InvalidArgument


def boolean(value: Any, what: str, default: bool | None = None) -> bool | None:
    """`value` where it is true or false; `default` where it is absent (None)."""
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidArgument(f"{what} must be true or false, got {value!r}")
    return value


def integer(value: Any, what: str, minimum: int = 0, maximum: int | None = None,
            default: int | None = None, expected: str | None = None) -> int | None:
    """`value` where it is an integer (not a boolean) from `minimum` to `maximum`; `default` where it is
    absent (None). `expected` words the range where the default wording would not say it."""
    if value is None and default is not None:
        return default
    if type(value) is not int or value < minimum or (maximum is not None and value > maximum):
        if expected is None:
            expected = f"an integer >= {minimum}" if maximum is None else \
                f"an integer from {minimum} to {maximum}"
        raise InvalidArgument(f"{what} must be {expected}, got {value!r}")
    return value
