"""Text that may still become a marker (a stop string, `</think>`, `<tool_call>`) as an answer streams."""


def held_back(text: str, markers: tuple[str, ...]) -> int:
    """The length of the longest end of `text` that begins one of `markers`: what waits for the next
    piece to decide it."""
    return max((n for marker in markers for n in range(min(len(marker) - 1, len(text)), 0, -1)
                if text.endswith(marker[:n])), default=0)
